"""How many threads the ``cpu`` backend's kernels run on, and a loop's way to keep torch's own
OpenMP threads off the cores those kernels need.

The kernels run on their own thread pool with :func:`kernel_threads` threads (by default
``torch.get_num_threads()``). torch's CPU ops run on OpenMP, whose idle threads keep spinning
for a while after each multithreaded op (libgomp's ``GOMP_SPINCOUNT``; unless
``OMP_WAIT_POLICY=PASSIVE``). In a loop that alternates torch ops with the kernels (the Lloyd
loop: means, re-split, bound tests between ``assign`` and ``cluster_sums``), those spinning
threads take a core from the next kernel: ``assign`` of 10 000 x 64 rows, K = 1 000, took 11.9 ms
instead of 7.9 ms when a 256 KB ``clone`` ran between calls (2-core AMD EPYC Zen 3, 2 threads;
7.9 ms with ``OMP_WAIT_POLICY=PASSIVE``). Inside :func:`kernels_own_the_cores` torch runs its
ops on one thread, so no OpenMP thread spins, and the kernels keep the threads torch had.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_lock = threading.Lock()
_depth = 0  # open kernels_own_the_cores contexts, all threads together
_saved = 0  # torch's thread count when the first one opened


def kernel_threads() -> int:
    """The number of threads the ``cpu`` kernels run on: ``torch.get_num_threads()``, or inside
    :func:`kernels_own_the_cores` the count torch had when the context opened."""
    with _lock:
        if _depth:
            return _saved
    return torch.get_num_threads()


@contextmanager
def kernels_own_the_cores() -> Iterator[None]:
    """Within the context torch's CPU ops run on one thread and the ``cpu`` kernels on the
    threads torch had (module docstring); the thread count is restored on exit. Nested or
    concurrent contexts share the first one's setting; the last to close restores it."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.set_num_threads(_saved)
