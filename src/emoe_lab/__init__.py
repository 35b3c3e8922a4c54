"""emoe_lab: ablation studies of EMoE, which splits the FFN layers of a dense pre-trained
transformer into experts by clustering their neurons, then fine-tunes."""

__version__ = "0.1.0"
