"""Inputs shared by the op benchmarks (bench_assign, bench_cluster_sums, bench_resplit_empty):
DeepCluster-like sizes on the CPU, 100 000 rows of 256 features and 1 000 centroids."""

from __future__ import annotations

import functools

import pytest
import torch

from fastdc.ops import registry as backends

N, D, K = 100_000, 256, 1_000
EMPTY = 50  # clusters left empty for the re-split


def need(op: str, backend: str) -> None:
    """Skip the benchmark when ``backend`` has no implementation of ``op`` here."""
    if backend not in backends.available(op):
        pytest.skip(f"backend {backend} not available for {op}")


@functools.cache
def features() -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, D] float32 Gaussian rows and K of them as centroids [K, D] (fixed seed)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    c = x[torch.randperm(N, generator=g)[:K]].clone()
    return x, c


@functools.cache
def assignments() -> torch.Tensor:
    """idx [N] int64: each row's nearest centroid, folded so that the last EMPTY stay empty."""
    from fastdc.ops import assign

    x, c = features()
    return assign(x, c)[1] % (K - EMPTY)
