"""Shared test helpers: which backends to test on which device, poisoned allocations, data."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from fastdc.ops import registry as backends

GPU_ONLY = ("cuda",)


def backend_params(op: str) -> list:
    """pytest params (backend, device) for every registered backend of ``op``.

    triton runs on CUDA when there is a GPU, else on CPU tensors under TRITON_INTERPRET=1;
    cuda runs only on a GPU (skipped otherwise)."""
    params = []
    has_cuda = torch.cuda.is_available()
    for name in backends.available(op):
        if name in GPU_ONLY or (name == "triton" and has_cuda):
            marks = [pytest.mark.gpu] + ([] if has_cuda else [pytest.mark.skip("needs CUDA")])
            params.append(pytest.param(name, "cuda", id=f"{name}-cuda", marks=marks))
        elif name == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
            continue
        else:
            params.append(pytest.param(name, "cpu", id=f"{name}-cpu"))
    return params


def is_interpreted(backend: str, device: str) -> bool:
    """True when the backend runs through the (slow) Triton interpreter."""
    return backend == "triton" and device == "cpu"


@contextlib.contextmanager
def poisoned_allocations():
    """Make torch.empty / empty_like return NaN-filled (float) or -7-filled (int) tensors, so a
    kernel that leaves an output element unwritten is caught."""
    real_empty, real_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.dtype.is_floating_point else t.fill_(-7)

    def empty(*args, **kwargs):
        return poison(real_empty(*args, **kwargs))

    def empty_like(*args, **kwargs):
        return poison(real_like(*args, **kwargs))

    torch.empty, torch.empty_like = empty, empty_like
    try:
        yield
    finally:
        torch.empty, torch.empty_like = real_empty, real_like


def blobs(n: int, d: int, centers: int, seed: int = 0, spread: float = 0.3) -> torch.Tensor:
    """[n, d] float32 Gaussian blobs around ``centers`` random centres."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(centers, d, generator=g) * 3
    which = torch.randint(centers, (n,), generator=g)
    return (mu[which] + spread * torch.randn(n, d, generator=g)).float()
