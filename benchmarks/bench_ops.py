"""The k-means ops and the Sobel front end on the CPU, one at a time, side by side with their
references (and faiss's exhaustive search for assign): the ``cpu`` backend vs ``torch``.

Each op is timed with :func:`best_of` (best of a few calls after a warm-up) and reported in the
side-by-side tables; pytest-benchmark's own fixture is not used here. GPU timings of the same
ops (Triton, CUDA C) come from ``python benchmarks/bench_gpu.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from benchmarks.report import record
from fastdc.ops import assign, cluster_sums, resplit_empty, sobel
from fastdc.ops import registry as backends

N, D, K = 100_000, 256, 1_000


def best_of(fn, rounds: int = 3) -> float:
    """Minimum wall time of ``rounds`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _need(op: str, backend: str) -> None:
    if backend not in backends.available(op):
        pytest.skip(f"backend {backend} not available for {op}")


@pytest.fixture(scope="module")
def features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    c = x[torch.randperm(N, generator=g)[:K]].clone()
    return x, c


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_assign(features, backend):
    _need("assign", backend)
    x, c = features
    seconds = best_of(lambda: assign(x, c, backend=backend), rounds=2)
    record("op_assign_cpu_100k_256_1k", {"name": f"fastdc {backend}", "time_s": seconds,
           "GFLOP/s": 2 * N * K * D / seconds / 1e9}, reference="faiss IndexFlatL2.search",
           note="nearest centroid of every row, best of 2 after a warm-up")


def test_assign_faiss(features):
    faiss = pytest.importorskip("faiss")
    x, c = features
    index = faiss.IndexFlatL2(D)
    index.add(c.numpy())
    xn = x.numpy()
    seconds = best_of(lambda: index.search(xn, 1), rounds=2)
    record("op_assign_cpu_100k_256_1k", {"name": "faiss IndexFlatL2.search", "time_s": seconds,
           "GFLOP/s": 2 * N * K * D / seconds / 1e9})


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_update_and_resplit(features, backend):
    _need("cluster_sums", backend)
    x, c = features
    _, idx = assign(x, c)
    idx = idx % (K - 50)  # leave 50 clusters empty so that the re-split has work to do

    def step():
        sums, counts = cluster_sums(x, idx, K, backend=backend)
        resplit_empty(sums, counts, seed=0, backend=backend)

    seconds = best_of(step)
    record("op_update_resplit_cpu_100k_256_1k", {"name": f"fastdc {backend}", "time_s": seconds},
           reference="fastdc torch", note="cluster_sums + resplit_empty of 50 empty clusters")


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_sobel(backend, dtype):
    _need("sobel", backend)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (64, 3, 224, 224), generator=g, dtype=torch.uint8)
    if dtype == "float32":
        images = images.float() / 255
    seconds = best_of(lambda: sobel(images, backend=backend))
    moved = images.numel() * images.element_size() + 64 * 2 * 224 * 224 * 4
    record(f"op_sobel_cpu_64x3x224x224_{dtype}",
           {"name": f"fastdc {backend}", "time_s": seconds, "GB/s": moved / seconds / 1e9},
           reference="fastdc torch", note="normalise + grey + Gx/Gy to fp32; GB/s = read+write")


def test_numpy_copy_bandwidth():
    """Context for the Sobel rows: a plain memory copy of a 64×2×224×224 fp32 batch."""
    a = np.ones(64 * 2 * 224 * 224, dtype=np.float32)
    b = np.empty_like(a)
    seconds = best_of(lambda: np.copyto(b, a))
    record("op_copy_bandwidth_cpu", {"name": "numpy copy 25.7 MB", "time_s": seconds,
           "GB/s": 2 * a.nbytes / seconds / 1e9})
