"""PCA whitening on torch tensors, as DeepCluster preprocesses features before k-means.

Like faiss's ``PCAMatrix(d_in, d_out, eigen_power=-0.5)``: centre the data, project it onto the
``d_out`` leading eigenvectors of its covariance, and scale component i by
``eigenvalue_i ** eigen_power``. DeepCluster then L2-normalises every row. One difference: faiss
does not divide the covariance by n, so its whitened output is ours / sqrt(n) (ours has unit
variance per component); after the row normalisation the two are identical. Everything stays on
the input's device: the covariance is accumulated chunk by chunk (fp32 products, float64 sums)
and decomposed with ``torch.linalg.eigh`` in float64.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

from fastdc.ops.checks import first_nonfinite_row

_CHUNK_ROWS = 65536  # rows per covariance product: 64 MB of fp32 at D = 256
_RANK_TOL = 1e-10  # eigenvalues below this fraction of the largest count as zero


class PCA:
    """A fitted PCA(-whitening) transform.

    After :meth:`fit`: ``mean`` [D] float32, ``components`` [D, d_out] float32 (eigenvectors
    already scaled by eigenvalue ** eigen_power), ``eigenvalues`` [d_out] float64, descending.
    """

    def __init__(self, d_out: int = 256, eigen_power: float = -0.5):
        if d_out < 1:
            raise ValueError(f"d_out must be >= 1, got {d_out}")
        self.d_out = int(d_out)
        self.eigen_power = float(eigen_power)
        self.mean: torch.Tensor | None = None
        self.components: torch.Tensor | None = None
        self.eigenvalues: torch.Tensor | None = None

    def fit(self, x: torch.Tensor, *, group=None) -> PCA:
        """Fit on x [N, D] float (N >= 2). Keeps min(d_out, D) components.

        Components whose eigenvalue is (numerically) zero are given scale 0 instead of
        infinity, with a warning: that happens when N <= d_out or the features are degenerate.
        group: a ``torch.distributed`` process group, or None. With a group, x is this rank's
        shard of the rows (any length, possibly 0); the row count, the float64 column sums and
        the centred float64 covariance are all-reduced, so every rank fits the PCA of the
        concatenated rows (equal to one process's fit up to summation order).
        """
        x = _check_features(x)
        n, d = x.shape
        if group is not None:
            n = int(_all_reduce(torch.tensor([n], dtype=torch.int64, device=x.device), group))
        if n < 2:
            raise ValueError(f"PCA needs at least 2 rows, got {n}")
        col_sums = x.sum(dim=0, dtype=torch.float64)
        if group is not None:
            col_sums = _all_reduce(col_sums, group)
        mean = col_sums / n
        cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        mean32 = mean.float()
        for start in range(0, x.shape[0], _CHUNK_ROWS):
            xc = x[start : start + _CHUNK_ROWS].float() - mean32
            cov += (xc.T @ xc).double()
        if group is not None:
            cov = _all_reduce(cov, group)
        cov /= n
        return self.fit_covariance(mean, cov, n)

    def fit_covariance(self, mean: torch.Tensor, cov: torch.Tensor, n: int) -> PCA:
        """The eigen step of :meth:`fit`, from already accumulated (and reduced) statistics.

        mean: [D] float64 column means; cov: [D, D] float64 centred covariance (divided by n);
        n: the total row count (for the warning). Sets ``mean``, ``components`` and
        ``eigenvalues`` as :meth:`fit` does. Used by
        :func:`fastdc.engine.streaming.pca_whiten_streaming`.
        """
        d = cov.shape[0]
        mean32 = mean.float()
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        keep = min(self.d_out, d)
        eigenvalues = eigenvalues.flip(0)[:keep]
        eigenvectors = eigenvectors.flip(1)[:, :keep]
        scale = torch.ones_like(eigenvalues)
        if self.eigen_power != 0:
            tiny = eigenvalues <= _RANK_TOL * eigenvalues[0].clamp_min(0)
            if bool(tiny.any()):
                warnings.warn(
                    f"PCA: {int(tiny.sum())} of {keep} components have ~zero variance "
                    f"(N={n}, D={d}); they are zeroed instead of whitened",
                    stacklevel=3,
                )
            powered = eigenvalues.clamp_min(1e-300) ** self.eigen_power
            scale = torch.where(tiny, torch.zeros_like(eigenvalues), powered)
        self.mean = mean32
        self.components = (eigenvectors * scale).float()
        self.eigenvalues = eigenvalues
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Project x [N, D] -> [N, d_out] float32 on x's device."""
        if self.components is None:
            raise RuntimeError("PCA.transform called before fit")
        x = _check_features(x)
        if x.shape[1] != self.components.shape[0]:
            raise ValueError(
                f"x has {x.shape[1]} columns but the PCA was fitted on {self.components.shape[0]}"
            )
        return (x.float() - self.mean) @ self.components


def l2_normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| row-wise ([N, D] float); an all-zero row stays zero."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pca_whiten(
    x: torch.Tensor, dim: int = 256, eigen_power: float = -0.5, *, group=None
) -> torch.Tensor:
    """DeepCluster's feature preprocessing: PCA-whiten to ``dim`` dims, then L2-normalise rows.

    x: [N, D] float tensor (any device). Returns [N, min(dim, D)] float32 on x's device.
    group: a ``torch.distributed`` process group (x is then this rank's shard; the PCA is fitted
    on all shards, see :meth:`PCA.fit`), or None.
    """
    return l2_normalize_rows(PCA(dim, eigen_power).fit(x, group=group).transform(x))


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def _check_features(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"features must be 2-D [N, D], got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        x = x.float()
    row = first_nonfinite_row(x)
    if row is not None:
        raise ValueError(f"features contain NaN or inf (first bad row: {row}); fix them first")
    return x
