"""Shared test helpers: which backends to test on which device, the one float64 brute force of
assign, the one tolerance table, poisoned allocations, data."""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass

import pytest
import torch

from fastdc.ops import registry as backends

GPU_ONLY = ("cuda",)
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
"""Where the backend-specific Triton tests run: compiled on a GPU, else the CPU interpreter."""


ODD_SHAPES = [
    # (B, N, K, D) of the k-means ops: N = 1, K = 1, K > N, D = 1, 3, 257 (not a power of two),
    # B = 3, N >= 1000; K not a multiple of the cpu assign kernel's 16-centroid panel, N not
    # one of its 6-row tile; K spanning several 32-wide Triton tiles; D = 257 chunked by the
    # Triton assign kernel; clusters left empty (K > N)
    (1, 1, 1, 1),
    (1, 1, 3, 3),
    (1, 1, 5, 3),
    (1, 7, 3, 5),
    (1, 7, 3, 64),
    (1, 7, 20, 3),
    (3, 7, 3, 257),
    (3, 7, 40, 3),
    (2, 40, 70, 257),
    (2, 45, 70, 257),
    (3, 50, 70, 3),
    (3, 300, 20, 64),
    (1, 600, 50, 32),
    (1, 1000, 1, 3),
    (1, 1000, 37, 257),
    (2, 1003, 37, 257),
    (1, 1030, 13, 64),
    (2, 1030, 129, 64),
    (2, 1100, 70, 45),
    (3, 1201, 50, 1),
    (2, 1500, 10, 64),
    (1, 1500, 1000, 64),
]
ODD_SHAPE_IDS = ["x".join(map(str, shape)) for shape in ODD_SHAPES]


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


ISAS = ["generic", "avx2", "avx512"]
"""The cpu backend's SIMD paths, narrowest first."""


def isa_params() -> list:
    """pytest params of the cpu backend's SIMD paths (:data:`ISAS`); a path this CPU lacks is
    skipped with the features it needs. Call only where fastdc._C is built."""
    from fastdc.ops import cpu

    def param(isa: str):
        missing = cpu.isa_missing(isa)
        marks = [pytest.mark.skip(reason=f"this CPU lacks {missing}")] if missing else []
        return pytest.param(isa, id=isa, marks=marks)

    return [param(isa) for isa in ISAS]


def is_interpreted(backend: str, device: str) -> bool:
    """True when the backend runs through the (slow) Triton interpreter."""
    return backend == "triton" and device == "cpu"


def run_backend(op: str, backend: str, **inputs):
    """Call ``backend``'s implementation of ``op`` directly on batched, contiguous ``inputs``
    (the keywords of the op's reference), as the public op would after its checks."""
    return backends.select(op, backend, **inputs).fn(**inputs)


def triton_kernels(op: str):
    """The Triton module kernels/<op>.py (as ``fastdc.kernels.<op>``); skips without Triton."""
    pytest.importorskip("triton")
    backends.import_kernels()
    return importlib.import_module(f"fastdc.kernels.{op}")


# --------------------------------------------------------------------------- tolerances


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= atol + rtol·|expected|`` element-wise; for assign also the least
    fraction of rows whose index must equal the float64 argmin's (near ties excluded)."""

    rtol: float
    atol: float
    agree: float = 1.0


TOLERANCES: dict[torch.dtype | str, Tolerance] = {
    # how the result was computed          its tolerance against the float64 truth (or the
    #                                      reference, itself within the float64 row of it)
    torch.float64: Tolerance(1e-6, 1e-6),  # accumulated in float64, rounded once to float32
    torch.float32: Tolerance(1e-5, 1e-5),  # float32 arithmetic (distances, Sobel, sums)
    torch.float16: Tolerance(2.0**-10, 1e-6),  # a float32 result rounded once to float16
    torch.bfloat16: Tolerance(2.0**-7, 1e-6),  # a float32 result rounded once to bfloat16
    "float32 atomics": Tolerance(1e-5, 1e-4),  # GPU sums of ~100 rows in any order
    "tf32": Tolerance(2e-2, 0.2, agree=0.97),  # 10-bit mantissa products (GPU tensor cores)
    "bf16": Tolerance(3e-2, 0.5, agree=0.9),  # products of operands rounded to bfloat16
}
"""The one dtype × tolerance table of the op tests."""

NEAR_TIE = 1e-6
"""Rows whose two best float64 scores differ by less than NEAR_TIE·max(|best|, 1) are near ties:
float32 rounding may pick either centroid, so their index is not compared."""


def assert_close(actual: torch.Tensor, expected: torch.Tensor, precision) -> None:
    """Compare on the CPU in float64 with the tolerance of ``precision`` (a TOLERANCES key)."""
    tol = TOLERANCES[precision]
    torch.testing.assert_close(
        actual.detach().cpu().double(), expected.detach().cpu().double(),
        rtol=tol.rtol, atol=tol.atol,
    )


@dataclass(frozen=True)
class Truth:
    """float64 brute-force assignment: best value, its index, and which rows are no near tie."""

    best: torch.Tensor  # [B, N] float64: squared L2 distance, or the largest inner product
    idx: torch.Tensor  # [B, N] int64: the argmin (ties: the smallest index)
    clear: torch.Tensor  # [B, N] bool: the runner-up is more than NEAR_TIE away


def brute_force(x: torch.Tensor, c: torch.Tensor, metric: str, rows: int = 20_000) -> Truth:
    """The float64 truth of assign for x [B, N, D] and c [B, K, D] on their device, ``rows``
    rows at a time (the [rows, K] score block is the only large temporary)."""
    x64, c64 = x.double(), c.double()
    c_sq = (c64 * c64).sum(-1)
    parts = []
    for start in range(0, x.shape[1], rows):
        xb = x64[:, start : start + rows]
        if metric == "l2":
            s = (xb * xb).sum(-1, keepdim=True) + c_sq.unsqueeze(1) - 2 * xb @ c64.transpose(1, 2)
        else:
            s = -(xb @ c64.transpose(1, 2))
        top = s.topk(min(2, s.shape[-1]), dim=-1, largest=False)
        best = top.values[..., 0]
        if s.shape[-1] > 1:
            clear = top.values[..., 1] - best > NEAR_TIE * best.abs().clamp_min(1)
        else:
            clear = torch.ones_like(best, dtype=torch.bool)
        parts.append((best if metric == "l2" else -best, top.indices[..., 0], clear))
    best, idx, clear = (torch.cat(p, dim=1) for p in zip(*parts, strict=True))
    return Truth(best, idx, clear)


def assert_assign_matches(dist, idx, x, c, metric: str, precision=torch.float32) -> Truth:
    """dist/idx [B, N] of assign agree with the float64 truth: the index on every row without a
    near tie (or the table's fraction of them), every distance within the tolerance."""
    truth = brute_force(x, c, metric)
    tol = TOLERANCES[precision]
    same = (idx.to(truth.idx.device) == truth.idx)[truth.clear]
    assert same.float().mean() >= tol.agree, f"{int((~same).sum())} rows pick another centroid"
    assert_close(dist, truth.best, precision)
    return truth


# ------------------------------------------------------------------------ outputs, data


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
