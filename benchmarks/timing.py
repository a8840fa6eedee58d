"""The one timer of the benchmark suite: wall-clock seconds of repeated calls.

Every benchmark (the op files, k-means, training, distributed, the GPU script and the memory
probe) times its code with :func:`measure`: untimed warm-up calls first (thread pools, first
touch, kernel compilation and autotuning stay out of the figures), then ``rounds`` timed calls,
each between two reads of :func:`time.perf_counter`. When CUDA is in use the device is
synchronised before every clock read, so queued GPU work is counted where it was launched.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed call, and what the last call returned."""

    seconds: tuple[float, ...]
    result: Any

    @property
    def best(self) -> float:
        """The fastest call: the least disturbed by other work on the machine."""
        return min(self.seconds)

    @property
    def median(self) -> float:
        """The middle call (the GPU script's figure)."""
        return statistics.median(self.seconds)

    @property
    def mean(self) -> float:
        """The average call (for many repetitions of a short operation)."""
        return statistics.fmean(self.seconds)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure(fn: Callable[[], Any], *, rounds: int = 3, warmup: int = 1) -> Timing:
    """Time ``rounds`` calls of ``fn`` after ``warmup`` untimed ones.

    rounds >= 1, warmup >= 0. Returns a :class:`Timing` with one wall-clock duration in
    seconds per timed call and the last call's return value. Raises ValueError for rounds < 1.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds} and {warmup}")
    result = None
    for _ in range(warmup):
        result = fn()
    seconds = []
    for _ in range(rounds):
        _sync()
        start = time.perf_counter()
        result = fn()
        _sync()
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds), result)


class Deadline:
    """A wall-clock budget of ``seconds`` from now (``None``: unlimited), for scripts that must
    finish inside a lease: :meth:`left` says how many seconds remain (negative once spent)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.start = time.perf_counter()

    def left(self) -> float:
        """Seconds still available (infinite without a budget)."""
        if self.seconds is None:
            return float("inf")
        return self.seconds - (time.perf_counter() - self.start)
