"""Checkpoints: atomic files, pruning, and skipping a checkpoint that cannot be read."""

from __future__ import annotations

import random

import torch

from emoe_lab import checkpoint as ckpt


def _state(step: int) -> dict:
    return {"step": step, "model": {"weight": torch.full((2,), float(step))}}


def test_pruning_keeps_newest(tmp_path):
    for step in (5, 10, 15, 20):
        ckpt.save_checkpoint(tmp_path, _state(step), keep=2)
    names = [path.name for path in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step-0000015.pt", "step-0000020.pt"]
    assert not list((tmp_path / ckpt.CHECKPOINT_DIR).glob(".*.tmp"))


def test_unreadable_newest_falls_back(tmp_path):
    ckpt.save_checkpoint(tmp_path, _state(5), keep=3)
    ckpt.save_checkpoint(tmp_path, _state(10), keep=3)
    newest = ckpt.list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[:100])

    loaded = ckpt.load_latest_checkpoint(tmp_path)

    assert loaded is not None
    assert loaded["step"] == 5
    assert torch.equal(loaded["model"]["weight"], torch.full((2,), 5.0))


def test_random_states_round_trip(tmp_path):
    random.seed(3)
    torch.manual_seed(3)
    ckpt.save_checkpoint(tmp_path, _state(1), keep=1)
    expected = (random.random(), torch.rand(3))

    random.seed(99)
    torch.manual_seed(99)
    ckpt.restore_rng_states(ckpt.load_latest_checkpoint(tmp_path)["rng"])

    assert random.random() == expected[0]
    assert torch.equal(torch.rand(3), expected[1])


def test_no_checkpoint_returns_none(tmp_path):
    assert ckpt.load_latest_checkpoint(tmp_path) is None
    ckpt.remove_checkpoints(tmp_path)
    assert ckpt.list_checkpoints(tmp_path) == []
