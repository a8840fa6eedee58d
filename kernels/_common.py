"""Helpers shared by the Triton kernel files: interpreter detection, device reasons, and the
row block that starts the kernels over rows with cluster ids."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def device_reasons(**tensors: torch.Tensor | None) -> list[str]:
    """Why Triton cannot run on these tensors' devices (empty list: it can).

    CUDA tensors always qualify; CPU tensors only under the interpreter. The reason mentions
    "device", so the registry does not log an automatic fallback for it.
    """
    if interpreting():
        return []
    off = [name for name, t in tensors.items() if t is not None and t.device.type != "cuda"]
    if off:
        return [
            f"triton needs tensors on a CUDA device ({', '.join(off)} on "
            f"{tensors[off[0]].device}); set TRITON_INTERPRET=1 to run it on the CPU interpreter"
        ]
    return []


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())


@triton.jit
def rows_with_ids(idx_ptr, N, BLOCK_N: tl.constexpr):
    """For a grid (row blocks, B): this program's problem b (int64), its BLOCK_N row indices
    (int64), their in-range mask and their ids from idx_ptr ([B, N] int64; 0 where masked)."""
    pid_n = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    ids = tl.load(idx_ptr + b * N + rows, mask=row_ok, other=0)
    return b, rows, row_ok, ids
