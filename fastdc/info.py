"""``python -m fastdc.info``: versions, devices, and which backends loaded (and why not)."""

from __future__ import annotations

import os
import platform

import numpy as np
import torch

from fastdc import __version__
from fastdc.ops import registry

OPS = ("assign", "assign_bounded", "knn", "cluster_sums", "resplit_empty", "sobel")


def report() -> str:
    """The information printed by ``python -m fastdc.info``, as text."""
    lines = [
        f"fastdc {__version__}",
        f"python {platform.python_version()} on {platform.machine()} ({platform.system()})",
        f"torch {torch.__version__}, numpy {np.__version__}",
        f"torch threads: {torch.get_num_threads()}",
    ]
    for name in ("triton", "cupy", "faiss"):
        try:
            module = __import__(name)
            lines.append(f"{name} {getattr(module, '__version__', '?')}")
        except Exception as exc:
            lines.append(f"{name}: not available ({type(exc).__name__})")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"cuda:{i} {torch.cuda.get_device_name(i)}")
    else:
        lines.append("CUDA: no device")
    if os.environ.get("FASTDC_BACKEND"):
        lines.append(f"FASTDC_BACKEND={os.environ['FASTDC_BACKEND']} (forced)")
    lines.append("backends per op (automatic order: GPU tensors triton > cuda > torch, "
                 "CPU tensors cpu > torch):")
    for op in OPS:
        lines.append(f"  {op:14s} {', '.join(registry.available(op)) or '-'}")
    if "cpu" in registry.available("assign"):  # loaded; otherwise load_errors says why
        lines.extend(_simd_lines())
    errors = registry.load_errors()
    for name, why in sorted(errors.items()):
        lines.append(f"backend {name} not loaded: {why}")
    return "\n".join(lines)


def _simd_lines() -> list[str]:
    """The cpu backend's SIMD path and the ones this CPU runs (FASTDC_CPU_ISA picks another)."""
    from fastdc.ops.cpu import BF16_MIN_K, bf16_missing, isa_available, simd

    try:
        chosen = simd()
    except ValueError as exc:  # FASTDC_CPU_ISA names a path this CPU lacks, or no path
        chosen = f"none ({exc})"
    forced = os.environ.get("FASTDC_CPU_ISA")
    lines = [f"cpu backend SIMD path: {chosen}" + (f" (FASTDC_CPU_ISA={forced})" if forced else "")]
    lines.append(f"cpu backend SIMD paths on this CPU: {', '.join(isa_available())} "
                 "(FASTDC_CPU_ISA=generic|avx2|avx512 forces one)")
    missing = bf16_missing()
    lines.append("cpu assign bf16 pass: " + (
        f"off (this CPU lacks {missing})" if missing else
        f"on the avx512 path from K = {BF16_MIN_K} (exact float32 answers; precision='fp32' "
        "turns it off)"))
    return lines


if __name__ == "__main__":
    print(report())
