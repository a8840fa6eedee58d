"""Validation of what users hand the engine, with errors that say what is wrong and how to fix it.

Every entry point of the engine detaches its tensors here: k-means and PCA are not
differentiable, and a tensor that requires grad would send every op to the slow ``torch``
backend (the fast backends refuse autograd inputs).

:func:`check_rows` is the one scan of the data itself. It runs once per clustering, on the first
pass over the rows, and refuses rows that hold NaN or inf, and rows whose norm is so large that
squared distances overflow the compute dtype: ``assign`` computes ``|x|² + |c|² - 2·x·c`` where
every centroid is a mean of rows (so ``|c| <= max |x|``, times ``1 + 1/1024`` after a re-split),
so all terms stay below ``4.01·R²`` for rows of norm at most R. Rows must therefore satisfy
``R² <= finfo.max / 8`` (R <= 6.5e18 in float32).
"""

from __future__ import annotations

import torch

from fastdc.engine import collectives as fdist
from fastdc.ops import first_nonfinite_row, row_norms

_NORM_MARGIN = 8.0  # R² may use 1/8 of the dtype's range: the distance terms need 4.01·R²


def as_batched_float(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """x [N, D] or [B, N, D] real tensor -> (detached contiguous [B, N, D] float, whether a
    batch dim was added). Integer dtypes become float32. Raises TypeError or ValueError."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"x must be a torch.Tensor, got {type(x).__name__} (use fastdc.kmeans.Kmeans for "
            "NumPy arrays, or torch.from_numpy)"
        )
    if x.is_complex():
        raise TypeError(f"x has complex dtype {x.dtype}; k-means needs real data")
    x = x.detach()
    if not x.dtype.is_floating_point:
        x = x.float()
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be [N, D] or [B, N, D], got shape {tuple(x.shape)}")
    squeezed = x.dim() == 2
    x = x.unsqueeze(0) if squeezed else x
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(
            f"x is empty (shape {tuple(x.shape)}); it needs at least one row and one column"
        )
    return x.contiguous(), squeezed


def check_k(k: int, n: int) -> None:
    """Raise TypeError/ValueError unless k is an int in [1, n] (n: the fewest real rows of any
    problem, over all ranks)."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < k:
        raise ValueError(
            f"n={n} training points is fewer than k={k} clusters: lower k or provide more points"
        )


def check_chunk_rows(chunk_rows: int) -> int:
    """Return chunk_rows (rows per block) if it is an int >= 1, else raise ValueError."""
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1 (an int), got {chunk_rows!r}")
    return chunk_rows


def check_mask(mask, B: int, N: int, device: torch.device) -> torch.Tensor | None:
    """mask [N] / [B, N] bool (True = real row) -> contiguous [B, N] bool on ``device``, or None.
    Raises TypeError (not bool) or ValueError (shape)."""
    if mask is None:
        return None
    m = torch.as_tensor(mask, device=device)
    if m.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = real row), got {m.dtype}")
    if m.dim() == 1:
        m = m.unsqueeze(0)
    if m.shape != (B, N):
        raise ValueError(f"mask must have shape [N] or [B, N] = [{B}, {N}], got {tuple(m.shape)}")
    return m.contiguous()


def check_weights(weights, B: int, N: int, device: torch.device, *, mask=None,
                  group=None) -> torch.Tensor | None:
    """Validated [B, N] float32 weights on ``device`` with padding rows (mask False) at weight
    0; None when neither weights nor mask are given. Raises ValueError for a wrong shape,
    negative or non-finite weights, or a problem whose weights sum to 0 over all ranks."""
    if weights is None and mask is None:
        return None
    if weights is None:
        w = mask.float()
    else:
        w = torch.as_tensor(weights, device=device).detach().float()
        if w.dim() == 1:
            w = w.unsqueeze(0)
        if w.shape != (B, N):
            raise ValueError(
                f"weights must have shape [N] or [B, N] = [{B}, {N}], got {tuple(w.shape)}"
            )
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("weights must be finite and non-negative")
        if mask is not None:
            w = w * mask
    totals = fdist.all_reduce_sum(w.sum(dim=1, dtype=torch.float64), group)
    if bool((totals == 0).any()):
        raise ValueError("weights are all zero (in at least one problem); nothing to cluster")
    return w.contiguous()


def check_rows(x: torch.Tensor, start: int = 0) -> None:
    """Raise ValueError if a row of x [B, m, D] (rows start.. of each problem) holds NaN or inf,
    or has a norm too large for squared distances in x's compute dtype (module docstring).

    One pass over x (row norms of :data:`CHECK_ROWS` rows of one problem at a time: no
    temporary of m rows) and one host synchronisation per such chunk; the error names the
    first bad row and says how to fix it.
    """
    many = x.shape[0] > 1
    for b in range(x.shape[0]):
        for first in range(0, x.shape[1], CHECK_ROWS):
            _check_chunk(x[b : b + 1, first : first + CHECK_ROWS], b, start + first, many)


CHECK_ROWS = 1 << 18
"""Rows :func:`check_rows` checks at once: their norms take 1 MB (the norms of 10^6 rows at
once, 4 MB, would stay in the process's heap after the check, beside the loop's buffers)."""


def _check_chunk(x: torch.Tensor, b: int, start: int, many: bool) -> None:
    """:func:`check_rows` of x [1, m, D], rows start.. of problem b (of several: ``many``)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    limit = (torch.finfo(dtype).max / _NORM_MARGIN) ** 0.5
    norms = row_norms(x)[0]  # NaN/inf rows give NaN/inf
    suspect = ~(norms <= limit)
    if not bool(suspect.any()):
        return
    row = first_nonfinite_row(x[0])
    if row is not None:
        where = _where(b, start + row, many)
        raise ValueError(f"x contains NaN or inf at {where}; remove or impute it first")
    exact = torch.linalg.vector_norm(x[0, suspect].double(), dim=-1)  # float64: no overflow
    over = (exact > limit).nonzero().flatten()
    if over.numel():
        row = int(suspect.nonzero()[over[0], 0])
        raise ValueError(
            f"x has rows too large for {dtype} distances: {_where(b, start + row, many)} has "
            f"norm {float(exact[over[0]]):.3g}, and squared distances overflow for norms above "
            f"{limit:.3g}; scale the data down (e.g. divide it by its largest row norm) "
            "before clustering"
        )


def _where(b: int, row: int, many: bool) -> str:
    return f"problem {b}, row {row}" if many else f"row {row}"
