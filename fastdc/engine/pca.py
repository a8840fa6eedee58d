"""PCA whitening on torch tensors, as DeepCluster preprocesses features before k-means.

Like faiss's ``PCAMatrix(d_in, d_out, eigen_power=-0.5)``: centre the data, project it onto the
``d_out`` leading eigenvectors of its covariance, and scale component i by
``eigenvalue_i ** eigen_power``. DeepCluster then L2-normalises every row. One difference: faiss
does not divide the covariance by n, so its whitened output is ours / sqrt(n) (ours has unit
variance per component); after the row normalisation the two are identical. Everything stays on
the input's device, in one of two ways that give the same components up to sign:

- N >= D (or a process group, or d_out >= N): the D×D covariance, accumulated chunk by chunk
  (fp32 products, float64 sums), and its d_out leading eigenvectors;
- N < D in one process (DeepCluster's 4096-d features of a small data set): the N×N Gram matrix
  Xc·Xcᵀ of the centred rows has the covariance's non-zero eigenvalues (times N), and its
  eigenvectors u give the covariance's as Xcᵀu / sqrt(N·λ): O(N²·D) work instead of O(N·D² + D³).
  When a kept eigenvalue is (numerically) zero those vectors are undefined, and the fit falls
  back to the covariance.

Only the d_out leading eigenpairs are computed where that is cheaper: on the CPU, for matrices
larger than 1024, LAPACK's ``dsyevr`` for a subset of the spectrum (through SciPy; measured on a
2-core AMD EPYC, shared: the top 256 of a 4096×4096 covariance in 25 s against 66 s for
``torch.linalg.eigh``'s full decomposition); smaller ones with ``torch.linalg.eigh`` on one
thread; on a GPU, or without SciPy, ``torch.linalg.eigh``. Always in float64.

The fit reads its rows as a sequence of blocks, so one code fits both a tensor in memory
(:meth:`PCA.fit`, :func:`pca_whiten`: blocks are views of x) and a
:class:`fastdc.engine.store.FeatureStore` streamed through a device
(:func:`pca_whiten_streaming`: two passes for the statistics, a third writing the whitened rows
into a new store). With a process group each rank reads its own shard and the row count, column
sums and covariance are all-reduced with :mod:`fastdc.engine.collectives` (a world of one
without a group), so every rank fits the PCA of the concatenated rows.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import torch

from fastdc.engine import collectives as fdist
from fastdc.engine.store import DEFAULT_CHUNK_ROWS, FeatureStore, device_chunks
from fastdc.ops import first_nonfinite_row
from fastdc.ops.threads import kernels_own_the_cores

Blocks = Callable[[], Iterator[tuple[int, torch.Tensor]]]
"""A pass over rows: yields (first row, block [m, D] float) in row order; callable repeatedly."""
_RANK_TOL = 1e-10  # eigenvalues below this fraction of the largest count as zero
# Symmetric matrices up to this size are decomposed on one thread: the tridiagonal reduction
# synchronises its threads at every column, which costs more than it saves on small matrices
# and a great deal on a busy machine (2-core AMD EPYC, shared: a 600×600 torch.linalg.eigh took
# 0.11 s on one thread, 0.4 to 8.6 s on two).
_ONE_THREAD_EIGH = 1024


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

    def fit(self, x: torch.Tensor, *, group: fdist.Group | None = None) -> PCA:
        """Fit on x [N, D] float (N >= 2 over all ranks). Keeps min(d_out, D) components.

        Components whose eigenvalue is (numerically) zero are given scale 0 instead of
        infinity, with a warning: that happens when N <= d_out or the features are degenerate.
        group: a ``torch.distributed`` process group, or None. With a group, x is this rank's
        shard of the rows (any length, possibly 0); the row count, the float64 column sums and
        the centred float64 covariance are all-reduced, so every rank fits the PCA of the
        concatenated rows (equal to one process's fit up to summation order).
        Raises ValueError for NaN/inf rows (with the row index) or fewer than 2 rows.
        """
        x = _as_features(x)
        n, d = x.shape
        return self.fit_blocks(lambda: _tensor_blocks(x), (n, d), x.device, group=group)

    def fit_blocks(self, blocks: Blocks, shape: tuple[int, int], device: torch.device, *,
                   group: fdist.Group | None = None) -> PCA:
        """Fit on the rows ``blocks()`` yields (read two or three times): shape (N, D) on this
        rank, blocks on ``device``. Pass 1: float64 column sums (refusing NaN/inf rows), all
        -reduced over ``group``; then the Gram matrix or the covariance (module docstring)."""
        n, d = shape
        n = int(fdist.all_reduce_sum(torch.tensor([n], dtype=torch.int64, device=device), group))
        if n < 2:
            raise ValueError(f"PCA needs at least 2 rows, got {n}")
        col_sums = torch.zeros(d, dtype=torch.float64, device=device)
        for start, x in blocks():
            row = first_nonfinite_row(x)
            if row is not None:
                raise ValueError(f"features contain NaN or inf (first bad row: {start + row}); "
                                 "fix them first")
            col_sums += x.sum(dim=0, dtype=torch.float64)
        mean = fdist.all_reduce_sum(col_sums, group) / n
        if fdist.world_size(group) == 1 and min(self.d_out, d) < n < d and self._fit_gram(
            blocks, mean, n
        ):
            return self
        mean32 = mean.float()
        cov = torch.zeros(d, d, dtype=torch.float64, device=device)
        for _, x in blocks():
            xc = x.float() - mean32
            cov += (xc.T @ xc).double()
        cov = fdist.all_reduce_sum(cov, group) / n
        return self.fit_covariance(mean, cov, n)

    def fit_covariance(self, mean: torch.Tensor, cov: torch.Tensor, n: int) -> PCA:
        """The eigen step of :meth:`fit`, from already accumulated (and reduced) statistics.

        mean: [D] float64 column means; cov: [D, D] float64 centred covariance (divided by n);
        n: the total row count (for the warning). Sets ``mean``, ``components`` and
        ``eigenvalues`` as :meth:`fit` does (the last step of :meth:`fit_blocks`).
        """
        d = cov.shape[0]
        eigenvalues, eigenvectors = _leading_eigh(cov, min(self.d_out, d))
        return self._set(mean, eigenvalues, eigenvectors, n)

    def _fit_gram(self, blocks: Blocks, mean: torch.Tensor, n: int) -> bool:
        """The fit from the N×N Gram matrix of the centred rows (one process, d_out < N < D;
        module docstring). Returns False, setting nothing, when a kept eigenvalue is ~0."""
        mean32 = mean.float()
        xc = torch.cat([x.float() - mean32 for _, x in blocks()])  # [N, D]
        gram = (xc @ xc.T).double() / n  # eigenvalues: the covariance's
        eigenvalues, u = _leading_eigh(gram, self.d_out)
        if bool((eigenvalues <= _RANK_TOL * eigenvalues[0].clamp_min(0)).any()):
            return False
        eigenvectors = (xc.T.double() @ u) / (n * eigenvalues).sqrt()  # unit: |Xcᵀu|² = N·λ
        self._set(mean, eigenvalues, eigenvectors, n)
        return True

    def _set(self, mean: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor,
             n: int) -> PCA:
        """Keep mean [D] float64, eigenvalues [d_out] float64 (descending) and eigenvectors
        [D, d_out] float64 scaled by eigenvalue ** eigen_power (0 for ~zero eigenvalues, with a
        warning)."""
        d, keep = eigenvectors.shape
        scale = torch.ones_like(eigenvalues)
        if self.eigen_power != 0:
            tiny = eigenvalues <= _RANK_TOL * eigenvalues[0].clamp_min(0)
            if bool(tiny.any()):
                warnings.warn(
                    f"PCA: {int(tiny.sum())} of {keep} components have ~zero variance "
                    f"(N={n}, D={d}); they are zeroed instead of whitened",
                    stacklevel=4,
                )
            powered = eigenvalues.clamp_min(1e-300) ** self.eigen_power
            scale = torch.where(tiny, torch.zeros_like(eigenvalues), powered)
        self.mean = mean.float()
        self.components = (eigenvectors * scale).float()
        self.eigenvalues = eigenvalues
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Project x [N, D] -> [N, d_out] float32 on x's device."""
        if self.components is None:
            raise RuntimeError("PCA.transform called before fit")
        x = _as_features(x)
        row = first_nonfinite_row(x)
        if row is not None:
            raise ValueError(f"features contain NaN or inf (first bad row: {row}); fix them first")
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


def pca_whiten_streaming(
    store: FeatureStore,
    dim: int = 256,
    *,
    device: torch.device | str = "cpu",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    group: fdist.Group | None = None,
    eigen_power: float = -0.5,
    out_dtype: torch.dtype | None = None,
    out_dir: str | os.PathLike | None = None,
    out_name: str = "whitened",
) -> FeatureStore:
    """:func:`pca_whiten` of a store, streamed through ``device`` ``chunk_rows`` rows at a time.

    store: [N, D] fp16/fp32 (with ``group``: this rank's shard, any N >= 0; all ranks fit the
    PCA of the concatenated rows). Two passes fit the PCA (:meth:`PCA.fit_blocks`); a third
    writes the whitened, normalised rows [N, min(dim, D)] into a new store of ``out_dtype``
    (default: the input's), on disk under ``out_dir`` as ``out_name`` when given, else in RAM.
    Raises ValueError for NaN/inf rows (with the row index) or fewer than 2 rows in total.
    """
    device = torch.device(device)
    n_local = len(store)
    pca = PCA(dim, eigen_power).fit_blocks(
        lambda: device_chunks(store, chunk_rows, device), store.shape, device, group=group
    )
    out_dtype = out_dtype or store.dtype
    d_out = pca.components.shape[1]
    if out_dir is None or n_local == 0:  # (an empty shard needs no file)
        out = FeatureStore.in_memory(n_local, d_out, out_dtype)
    else:
        out = FeatureStore.create(out_dir, n_local, d_out, out_dtype, out_name)
    for start, x in device_chunks(store, chunk_rows, device):
        out.write(start, l2_normalize_rows(pca.transform(x)))
    return out.finalize()


def _leading_eigh(sym: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` largest eigenvalues [keep] float64 (descending) of a symmetric sym [M, M]
    float64 and their eigenvectors [M, keep] float64 (module docstring: on the CPU one thread
    up to M = 1024, above it LAPACK's subset solver when keep < M and SciPy is there; else
    ``torch.linalg.eigh``)."""
    m = sym.shape[0]
    keep = min(keep, m)
    small = sym.device.type == "cpu" and m <= _ONE_THREAD_EIGH
    solver = _subset_eigh() if sym.device.type == "cpu" and keep < m and not small else None
    if solver is not None:
        values, vectors = solver(sym.numpy(), subset_by_index=[m - keep, m - 1], driver="evr")
        return torch.from_numpy(values).flip(0), torch.from_numpy(vectors).flip(1)
    # small: torch's ops on one thread inside the block (restored after)
    with kernels_own_the_cores() if small else nullcontext():
        values, vectors = torch.linalg.eigh(sym)  # ascending
    return values[m - keep :].flip(0), vectors[:, m - keep :].flip(1)


def _subset_eigh() -> Callable | None:
    """``scipy.linalg.eigh`` (it reaches LAPACK's subset solvers), or None without SciPy."""
    try:
        from scipy.linalg import eigh
    except ImportError:
        return None
    return eigh


def _tensor_blocks(x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """x [N, D] in views of DEFAULT_CHUNK_ROWS rows (what a store streams by default)."""
    for start in range(0, x.shape[0], DEFAULT_CHUNK_ROWS):
        yield start, x[start : start + DEFAULT_CHUNK_ROWS]


def _as_features(x: torch.Tensor) -> torch.Tensor:
    """x [N, D] as a detached float tensor; raises TypeError/ValueError otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"features must be 2-D [N, D], got shape {tuple(x.shape)}")
    x = x.detach()
    return x if x.dtype.is_floating_point else x.float()
