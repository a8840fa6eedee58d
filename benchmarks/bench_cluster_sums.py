"""cluster_sums on the CPU, side by side: the ``cpu`` backend vs the ``torch`` reference —
per-cluster sums and counts of N=100 000 rows of D=256 into K=1 000 clusters (50 empty)."""

from __future__ import annotations

import pytest

from benchmarks.op_inputs import EMPTY, D, K, N, assignments, features, need
from benchmarks.report import record
from benchmarks.timing import measure
from fastdc.ops import cluster_sums


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_cluster_sums(backend):
    need("cluster_sums", backend)
    x, _ = features()
    idx = assignments()
    seconds = measure(lambda: cluster_sums(x, idx, K, backend=backend)).best
    record("op_cluster_sums_cpu_100k_256_1k",
           {"name": f"fastdc {backend}", "time_s": seconds, "GB/s": x.nbytes / seconds / 1e9},
           reference="fastdc torch",
           note=f"N={N} D={D} K={K} ({EMPTY} empty); GB/s = rows read; best of 3")
