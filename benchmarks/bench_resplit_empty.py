"""resplit_empty on the CPU, side by side: the ``cpu`` backend vs the ``torch`` reference —
re-splitting 50 empty clusters of K=1 000 (D=256) alone, and the whole centroid update that
feeds it (cluster_sums of N=100 000 rows, then resplit_empty)."""

from __future__ import annotations

import pytest

from benchmarks.op_inputs import EMPTY, D, K, N, assignments, features, need
from benchmarks.report import record
from benchmarks.timing import measure
from fastdc.ops import cluster_sums, resplit_empty


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_resplit_empty(backend):
    need("resplit_empty", backend)
    x, _ = features()
    sums, counts = cluster_sums(x, assignments(), K)
    seconds = measure(lambda: resplit_empty(sums, counts, seed=0, backend=backend)).best
    record("op_resplit_empty_cpu_1k_256_50empty", {"name": f"fastdc {backend}",
           "time_s": seconds}, reference="fastdc torch",
           note=f"K={K} D={D}, {EMPTY} empty clusters re-split; best of 3")


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_cluster_sums_then_resplit_empty(backend):
    need("cluster_sums", backend)
    x, _ = features()
    idx = assignments()

    def step():
        sums, counts = cluster_sums(x, idx, K, backend=backend)
        resplit_empty(sums, counts, seed=0, backend=backend)

    seconds = measure(step).best
    record("op_cluster_sums_resplit_empty_cpu_100k_256_1k",
           {"name": f"fastdc {backend}", "time_s": seconds}, reference="fastdc torch",
           note=f"cluster_sums of N={N} rows + resplit_empty of {EMPTY} empty clusters")
