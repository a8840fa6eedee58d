"""Checkpoints: written atomically, loaded with a check that the architecture matches.

A checkpoint is a dict saved with :func:`torch.save`. The trainer's (format
``fastdc-deepcluster-1``, :meth:`fastdc.deepcluster.trainer.Trainer.state`) holds ``config``
(the run's settings, including the architecture), ``epoch`` (completed epochs), ``model``,
``optimizer`` (the body's SGD), ``rng`` (the global torch / CUDA / NumPy / Python RNG states),
``assignment`` (the last epoch's targets, int32 [N]), ``records`` (the epochs' records),
``partial`` (None, or the epoch stopped in its training phase with the head optimiser's state),
``skipped`` (unreadable images) and ``elapsed`` (seconds). :func:`save_checkpoint` writes to a
temporary file in the same folder, flushes it to disk and renames it over the target with
:func:`os.replace`, so a crash or a signal never leaves a half-written ``checkpoint.pt``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Settings that must match for a checkpoint's weights to fit a model.
ARCH_KEYS = ("arch", "sobel", "in_channels", "k")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or belongs to another architecture."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, *, expect: dict[str, Any] | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``expect``: settings (any of :data:`ARCH_KEYS`) the checkpoint must have been trained
    with; a difference raises CheckpointError naming both values. Also raises CheckpointError
    for a missing or unreadable file.
    """
    state = read_file(path, map_location)
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise CheckpointError(f"{str(path)!r} is not a fastdc checkpoint")
    if expect:
        check_architecture(state["config"], expect, str(path))
    return state


def read_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """The object :func:`torch.save` wrote to ``path``. Raises CheckpointError for a missing
    or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        # weights_only=False: the checkpoint holds NumPy RNG states and Python tuples.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {err}") from err


def check_architecture(saved: dict[str, Any], wanted: dict[str, Any], where: str = "") -> None:
    """Raise CheckpointError when ``saved`` and ``wanted`` differ on an :data:`ARCH_KEYS` key."""
    diffs = [f"{key}={saved.get(key)!r} (asked: {wanted[key]!r})"
             for key in ARCH_KEYS if key in wanted and saved.get(key) != wanted[key]]
    if diffs:
        raise CheckpointError(
            f"checkpoint {where} was trained with a different architecture: "
            + ", ".join(diffs)
            + ". Use the same --arch/--sobel/--k as the run that wrote it, or a new --out."
        )


def rng_states() -> dict[str, Any]:
    """The global RNG states: torch CPU, every CUDA device, NumPy, Python ``random``."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the global state is saved)
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA only where devices exist)."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])  # noqa: NPY002
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
