"""Helpers shared by the Triton kernel files: interpreter detection and device reasons."""

from __future__ import annotations

import os

import torch


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
