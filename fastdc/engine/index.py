"""A flat (brute-force) index with faiss's ``IndexFlatL2`` / ``IndexFlatIP`` interface, and the
conversion of user input (NumPy, torch, lists) to float32 tensors and back."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fastdc.ops import assign

_CHUNK_ELEMS = 1 << 22  # scores alive at once in a top-n search (16 MB of fp32)


def to_tensor(
    x, name: str, d: int | None, device: torch.device
) -> tuple[torch.Tensor, Callable[[torch.Tensor], object]]:
    """Convert x to a contiguous float32 tensor on ``device``; also return ``like``, which turns
    a result tensor back into x's kind (NumPy array for NumPy/list input, tensor otherwise).

    ``d``: required number of columns (x must then be 2-D), or None for a 1-D array.
    Raises TypeError when x cannot be converted to float32, ValueError on a wrong shape.
    """
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name} has complex dtype {x.dtype}; it must be real")
        t = x.detach().to(device=device, dtype=torch.float32)
        home = x.device

        def like(r: torch.Tensor):
            return r.to(home)

    else:
        try:
            arr = np.ascontiguousarray(x, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            kind = getattr(x, "dtype", type(x).__name__)
            raise TypeError(f"{name} ({kind}) cannot be converted to float32: {exc}") from exc
        t = torch.from_numpy(arr).to(device)

        def like(r: torch.Tensor):
            return r.cpu().numpy()

    if d is None:
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    else:
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (n, d={d}), got shape {tuple(t.shape)}")
        if t.shape[1] != d:
            raise ValueError(f"{name} has {t.shape[1]} columns but d={d} was declared")
        if t.shape[0] == 0:
            raise ValueError(f"{name} is empty: it needs at least one row")
    return t.contiguous(), like


class FlatIndex:
    """Exact nearest-neighbour search over added vectors, like ``faiss.IndexFlatL2``/``IP``.

    ``metric``: "l2" (squared distances, smallest first) or "ip" (inner products, largest
    first). ``search(x, n)`` returns (D, I) of shape (len(x), n) — NumPy for NumPy input,
    tensors (on x's device) for tensor input; missing neighbours are (inf or -inf, -1).
    """

    def __init__(self, d: int, metric: str = "l2", backend: str | None = None):
        if metric not in ("l2", "ip"):
            raise ValueError(f"metric must be 'l2' or 'ip', got {metric!r}")
        self.d, self.metric, self.backend = int(d), metric, backend
        self.xb: torch.Tensor | None = None

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return 0 if self.xb is None else int(self.xb.shape[0])

    @property
    def is_trained(self) -> bool:
        """Always True: a flat index needs no training."""
        return True

    def reset(self) -> None:
        """Remove all vectors."""
        self.xb = None

    def add(self, x) -> None:
        """Append vectors x (n, d)."""
        home = self.xb.device if self.xb is not None else _device_of(x)
        t, _ = to_tensor(x, "x", self.d, home)
        self.xb = t.clone() if self.xb is None else torch.cat([self.xb, t])

    def search(self, x, n: int):
        """The n nearest (L2) or most similar (IP) stored vectors of each row of x (m, d)."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        device = self.xb.device if self.xb is not None else _device_of(x)
        q, like = to_tensor(x, "x", self.d, device)
        m = q.shape[0]
        worst = float("inf") if self.metric == "l2" else float("-inf")
        D = torch.full((m, n), worst, dtype=torch.float32, device=device)
        I = torch.full((m, n), -1, dtype=torch.int64, device=device)
        if self.ntotal:
            if n == 1:
                dist, idx = assign(q, self.xb, metric=self.metric, backend=self.backend)
                D[:, 0], I[:, 0] = dist, idx
            else:
                self._search_topn(q, min(n, self.ntotal), D, I)
        return like(D), like(I)

    def _search_topn(self, q: torch.Tensor, n: int, D: torch.Tensor, I: torch.Tensor) -> None:
        xb = self.xb
        rows = max(1, _CHUNK_ELEMS // xb.shape[0])
        xb_sq = (xb * xb).sum(dim=1)
        for s in range(0, q.shape[0], rows):
            qc = q[s : s + rows]
            if self.metric == "l2":
                scores = torch.addmm(xb_sq, qc, xb.T, alpha=-2.0)
                val, arg = scores.topk(n, dim=1, largest=False, sorted=True)
                val = (val + (qc * qc).sum(dim=1, keepdim=True)).clamp_min_(0)
            else:
                val, arg = (qc @ xb.T).topk(n, dim=1, largest=True, sorted=True)
            D[s : s + rows, :n], I[s : s + rows, :n] = val, arg


def _device_of(x) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
