"""assign on the CPU, side by side: the ``cpu`` backend vs the ``torch`` reference vs faiss's
exhaustive search (IndexFlatL2), N=100 000 rows, D=256, K=1 000 centroids.

GPU timings of the same op (Triton, CUDA C) come from ``python benchmarks/bench_gpu.py``.
"""

from __future__ import annotations

import pytest

from benchmarks.op_inputs import D, K, N, features, need
from benchmarks.report import record
from benchmarks.timing import measure
from fastdc.ops import assign

TABLE = "op_assign_cpu_100k_256_1k"
FLOP = 2.0 * N * K * D


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_assign(backend):
    need("assign", backend)
    x, c = features()
    seconds = measure(lambda: assign(x, c, backend=backend), rounds=2).best
    record(TABLE, {"name": f"fastdc {backend}", "time_s": seconds,
                   "GFLOP/s": FLOP / seconds / 1e9}, reference="faiss IndexFlatL2.search",
           note="nearest centroid of every row, best of 2 after a warm-up")


def test_assign_faiss():
    faiss = pytest.importorskip("faiss")
    x, c = features()
    index = faiss.IndexFlatL2(D)
    index.add(c.numpy())
    xn = x.numpy()
    seconds = measure(lambda: index.search(xn, 1), rounds=2).best
    record(TABLE, {"name": "faiss IndexFlatL2.search", "time_s": seconds,
                   "GFLOP/s": FLOP / seconds / 1e9})
