"""row_norms: the Euclidean norm of every row (the data scan of the k-means input check).

Reference: ``torch.linalg.vector_norm`` over the last dim in x's dtype. The cpu backend
accumulates the squares in float64 and rounds the norm to float32 (no overflow before the
rounding), on the kernels' thread pool.
"""

from __future__ import annotations

import torch

from fastdc.ops.checks import as_batched, check_float
from fastdc.ops.registry import register, select


@register("row_norms", "torch")
def row_norms_ref(x: torch.Tensor) -> torch.Tensor:
    """x: [B, N, D] float -> [B, N] norms in x's dtype (NaN/inf rows give NaN/inf)."""
    return torch.linalg.vector_norm(x, dim=-1)


def row_norms(x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Norm of every row: x [N, D] or [B, N, D] float -> [N] / [B, N] (float32 on the cpu
    backend, x's dtype on the reference); a row holding NaN gives NaN, one holding inf gives
    inf. Raises TypeError for non-float x."""
    xb, squeezed = as_batched(x, "x", 2)
    check_float(xb, "x")
    xb = xb.detach()
    norms = select("row_norms", backend, x=xb).fn(x=xb)
    return norms[0] if squeezed else norms
