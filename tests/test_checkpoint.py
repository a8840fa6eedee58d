"""fastdc.deepcluster.checkpoint: atomic writes, the architecture check, RNG states."""

import random

import numpy as np
import pytest
import torch

from fastdc.deepcluster import checkpoint as ck


def _state(arch="small", k=10):
    return {"config": {"arch": arch, "sobel": False, "in_channels": 1, "k": k},
            "model": {"w": torch.arange(6.0)}, "epoch": 3}


def test_save_then_load_round_trip(tmp_path):
    path = ck.save_checkpoint(_state(), tmp_path / "sub" / "checkpoint.pt")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temp file left
    state = ck.load_checkpoint(path, expect={"arch": "small", "k": 10})
    assert state["epoch"] == 3 and torch.equal(state["model"]["w"], torch.arange(6.0))


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint(_state(k=10), path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(_state(k=99), path)
    monkeypatch.undo()
    assert ck.load_checkpoint(path)["config"]["k"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_architecture_mismatch_is_a_clear_error(tmp_path):
    path = ck.save_checkpoint(_state(arch="alexnet"), tmp_path / "c.pt")
    with pytest.raises(ck.CheckpointError, match=r"arch='alexnet' \(asked: 'vgg16'\)"):
        ck.load_checkpoint(path, expect={"arch": "vgg16"})


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ck.CheckpointError, match="cannot read"):
        ck.load_checkpoint(tmp_path / "junk.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(ck.CheckpointError, match="not a fastdc checkpoint"):
        ck.load_checkpoint(tmp_path / "other.pt")


def test_rng_states_round_trip():
    states = ck.rng_states()
    a = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    ck.set_rng_states(states)
    b = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
