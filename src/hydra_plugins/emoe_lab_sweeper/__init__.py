"""Hydra plugin package of emoe_lab's study sweeper (`hydra/sweeper=emoe_lab`)."""
