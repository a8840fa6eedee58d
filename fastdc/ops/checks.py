"""Shared input checks for the ops: readable errors that say what was wrong and how to fix it."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def as_batched(t: torch.Tensor, name: str, inner_ndim: int) -> tuple[torch.Tensor, bool]:
    """Return ``t`` with a leading batch dim (added when missing) and whether one was added.

    ``inner_ndim`` is the rank of one problem (2 for x:[N,D], 1 for idx:[N]).
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == inner_ndim:
        return t.unsqueeze(0), True
    if t.dim() == inner_ndim + 1:
        return t, False
    raise ValueError(
        f"{name} must have {inner_ndim} dims (one problem) or {inner_ndim + 1} dims "
        f"(a batch of problems), got shape {tuple(t.shape)}"
    )


def check_float(t: torch.Tensor, name: str) -> None:
    """Raise TypeError unless ``t`` has a floating dtype."""
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float32/float64/float16/bfloat16), got "
            f"{t.dtype}; convert it with .float()"
        )


def batched_pair(x: torch.Tensor, y: torch.Tensor, y_name: str, y_rows: str
                 ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Check rows x ([N, D] or [B, N, D] float) against a second set y ([R, D] or [B, R, D],
    named ``y_name``, its rows called ``y_rows`` in messages) on the same device; return both
    batched, y in x's dtype, detached and contiguous, and whether a batch dim was added."""
    xb, squeezed = as_batched(x, "x", 2)
    yb, y_squeezed = as_batched(y, y_name, 2)
    if squeezed != y_squeezed:
        raise ValueError(
            f"x {tuple(x.shape)} and {y_name} {tuple(y.shape)} must both be batched "
            f"([B, N, D] and [B, {y_rows}, D]) or both not"
        )
    check_float(xb, "x")
    check_float(yb, y_name)
    check_same_device(**{"x": xb, y_name: yb})
    if xb.shape[0] != yb.shape[0] or xb.shape[2] != yb.shape[2]:
        raise ValueError(
            f"x {tuple(x.shape)} and {y_name} {tuple(y.shape)} disagree: they need the "
            "same batch size and the same feature dimension D"
        )
    return xb.detach().contiguous(), yb.detach().to(xb.dtype).contiguous(), squeezed


def check_metric(metric: str) -> None:
    """Raise ValueError unless ``metric`` is "l2" or "ip"."""
    if metric not in ("l2", "ip"):
        raise ValueError(f"metric must be 'l2' or 'ip' (inner product), got {metric!r}")


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise ValueError when the given tensors live on different devices."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listing}; move them with .to()")


def grad_reasons(**tensors: torch.Tensor | None) -> list[str]:
    """A backend's reason not to run a differentiable op on inputs that require grad.

    Only ``sobel`` needs it (the other ops detach their inputs in the public function); under
    ``torch.no_grad()`` nothing is recorded, so any backend may run.
    """
    if not torch.is_grad_enabled():
        return []
    if any(t is not None and t.requires_grad for t in tensors.values()):
        return ["does not support autograd (inputs require grad)"]
    return []


def first_nonfinite_row(x: torch.Tensor) -> int | None:
    """Index of the first row of ``x`` ([N, D]) holding NaN or inf, or None if all are finite.

    Screens with row sums (one pass, an [N] temporary: NaN and inf always reach the sum) and
    checks element-wise only the suspect rows, whose sum may also have overflowed; a plain
    ``isfinite(x)`` would allocate several times x.
    """
    suspect = (~torch.isfinite(x.sum(dim=-1))).nonzero().flatten()
    if suspect.numel() == 0:
        return None
    bad = suspect[~torch.isfinite(x[suspect]).all(dim=-1)]
    return int(bad[0]) if bad.numel() else None
