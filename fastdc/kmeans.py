"""``fastdc.kmeans``: a drop-in replacement for ``faiss.Kmeans``, plus the functional API.

    from fastdc.kmeans import Kmeans          # instead of: from faiss import Kmeans
    km = Kmeans(d, k, niter=20, seed=1234)
    obj = km.train(x)                         # x: (n, d) NumPy array or torch tensor
    D, I = km.index.search(x, 1)

NumPy input is clustered on the CPU (the C++ ``cpu`` backend); a CUDA tensor is clustered on its
GPU with no host round trip; results come back as the input's kind (NumPy stays NumPy, tensors
stay tensors on their device). The functional API works on torch tensors:
:func:`kmeans`, :func:`assign`, :func:`update_centroids`, :func:`cluster_sums`,
:func:`resplit_empty`.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings

import numpy as np
import torch

from fastdc.engine import (
    PCA,
    FlatIndex,
    KMeansResult,
    check_early_stop_threshold,
    check_prune,
    initial_centroids,
    kmeans,
    to_tensor,
)
from fastdc.ops import assign, cluster_sums, resplit_empty, update_centroids

__all__ = [
    "Kmeans",
    "ClusteringParameters",
    "FlatIndex",
    "KMeansResult",
    "kmeans",
    "initial_centroids",
    "assign",
    "cluster_sums",
    "update_centroids",
    "resplit_empty",
]

_INIT_CODES = {0: "random", 1: "kmeans++", "random": "random", "kmeans++": "kmeans++"}
_REDO_SEED_STRIDE = 15486557  # a large prime: the seeds of successive redos stay far apart
_PROGRESSIVE_NITER = 10  # faiss's ProgressiveDimClusteringParameters default (fewer per step)


@dataclasses.dataclass
class ClusteringParameters:
    """faiss's ClusteringParameters, with faiss's defaults.

    Honoured: niter, nredo, verbose, spherical, int_centroids, update_index (no effect on a
    flat index), frozen_centroids, min_points_per_centroid, max_points_per_centroid, seed,
    check_input_data_for_NaNs, init_method (0/"random", 1/"kmeans++"), early_stop_threshold
    (< 0: run all niter iterations; 0, the default: stop at the first iteration that changes no
    assignment, which gives the full run's result; > 0: also stop when the relative objective
    change is <= it, as faiss does; see :mod:`fastdc.engine.convergence`),
    progressive_dim_steps and apply_pca (faiss's ProgressiveDimClusteringParameters: None, the
    default, is plain clustering; an int >= 1 clusters the PCA-rotated data in that many steps
    of growing dimension, see :class:`Kmeans`).
    Accepted for compatibility with no effect on raw float vectors: decode_block_size,
    use_faster_subsampling, afkmc2_chain_length. Not implemented (a non-default value raises):
    init_method=2 (AFK-MC²), use_super_kmeans=True.
    """

    niter: int = 25
    nredo: int = 1
    verbose: bool = False
    spherical: bool = False
    int_centroids: bool = False
    update_index: bool = False
    frozen_centroids: bool = False
    min_points_per_centroid: int = 39
    max_points_per_centroid: int = 256
    seed: int = 1234
    decode_block_size: int = 32768
    check_input_data_for_NaNs: bool = True
    use_faster_subsampling: bool = False
    init_method: int | str = 0
    afkmc2_chain_length: int = 50
    early_stop_threshold: float = 0.0
    use_super_kmeans: bool = False
    progressive_dim_steps: int | None = None
    apply_pca: bool = True

    def validate(self) -> None:
        """Raise ValueError/NotImplementedError for values fastdc cannot honour."""
        if self.init_method not in _INIT_CODES:
            raise NotImplementedError(
                f"init_method={self.init_method!r} is not supported; use 0/'random' or "
                "1/'kmeans++'"
            )
        check_early_stop_threshold(self.early_stop_threshold)
        steps = self.progressive_dim_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or steps < 1):
            raise ValueError(f"progressive_dim_steps must be an int >= 1, got {steps!r}")
        if self.use_super_kmeans:
            raise NotImplementedError("use_super_kmeans is not supported")
        for name in ("niter", "nredo", "min_points_per_centroid", "max_points_per_centroid"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if self.nredo < 1:
            raise ValueError(f"nredo must be >= 1, got {self.nredo}")


class Kmeans:
    """k-means with the interface of ``faiss.Kmeans``.

    ``Kmeans(d, k, **params)``: params are :class:`ClusteringParameters` fields, plus ``gpu``
    (True or a GPU count: cluster NumPy input on the current CUDA device — one GPU per process;
    for several GPUs run one process each with ``fastdc.kmeans.kmeans(..., group=...)``),
    ``backend`` (force a fastdc backend) and ``prune`` (exact bound-based pruning of the
    assignment step: None = automatic (default, with the cpu backend and niter >= 2: "elkan" for
    d >= 64, k <= d, N * k <= 2^24 and niter >= 8, else "second" for N * k >= 2^23 and
    N >= 32 k; off on GPUs), False = off, True, "centres", "second" or "elkan"; see
    :func:`fastdc.kmeans.kmeans`).
    As in faiss, giving ``progressive_dim_steps`` makes niter default to 10, and ``apply_pca`` is
    only accepted with it.
    An unknown keyword raises TypeError. After :meth:`train`: ``centroids`` (k, d) float32,
    ``obj`` (iterations run, over all redos and steps,) float64, ``iteration_stats`` (one dict
    per iteration run, with obj, time, time_search, imbalance_factor, nsplit, pruned: the
    fraction of rows whose distances the bounds skipped ("elkan": of the distances), None
    without pruning), ``converged_at``
    (one entry per k-means run, i.e. per redo and per progressive step: the iteration where
    early_stop_threshold stopped it, None when it ran all niter), ``index`` holding the
    centroids.

    Progressive-dimension clustering (faiss's ProgressiveDimClustering): the rows are rotated
    onto their principal axes (a PCA without whitening, skipped when apply_pca is False), then
    clustered in ``progressive_dim_steps`` steps on their first d_i = int(d^((i+1)/steps))
    coordinates, each step starting from the previous step's centroids padded with zeros (the
    first from the usual seeding); the last step's centroids are rotated back.
    """

    def __init__(self, d: int, k: int, **kwargs):
        if isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 1:
            raise ValueError(f"d must be a positive int, got {d!r}")
        self.d = int(d)
        self.gpu: bool | int = kwargs.pop("gpu", False)
        self.backend: str | None = kwargs.pop("backend", None)
        self.prune: bool | str | None = kwargs.pop("prune", None)
        check_prune(self.prune)
        known = {f.name for f in dataclasses.fields(ClusteringParameters)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"unknown Kmeans parameter(s) {unknown}; valid ones: {sorted(known)} "
                "plus gpu, backend and prune"
            )
        if "progressive_dim_steps" in kwargs:
            kwargs.setdefault("niter", _PROGRESSIVE_NITER)
        elif "apply_pca" in kwargs:
            raise TypeError("apply_pca is a parameter of progressive_dim_steps clustering")
        self.cp = ClusteringParameters(**kwargs)
        self.cp.validate()
        self.reset(k)
        self.index = FlatIndex(self.d, metric="ip" if self.cp.spherical else "l2")

    def reset(self, k: int | None = None) -> None:
        """Forget a previous training (optionally with a new k)."""
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
                raise ValueError(f"k must be a positive int, got {k!r}")
            self.k = int(k)
        self.centroids = None
        self.obj = None
        self.iteration_stats = None
        self.converged_at = None

    def train(self, x, weights=None, init_centroids=None) -> float:
        """Cluster x (n, d) and return the final objective (that of the last iteration).

        x: NumPy array or torch tensor convertible to float32; weights: (n,) non-negative;
        init_centroids: (k0, d) with k0 <= k, used for the first redo (and kept fixed when
        frozen_centroids is set); tensors are detached. Raises ValueError on wrong shapes,
        n < k, NaN/inf rows or rows of norm > 6.5e18 (float32 distances overflow);
        NotImplementedError for init_centroids or spherical with progressive_dim_steps (as
        faiss).
        """
        xt, like = to_tensor(x, "x", self.d, device=self._device_for(x))
        n = xt.shape[0]
        if n < self.k:
            raise ValueError(
                f"n={n} training points is fewer than k={self.k} clusters: lower k or "
                "provide more points"
            )
        wt = None if weights is None else to_tensor(weights, "weights", None, xt.device)[0]
        if wt is not None and wt.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {tuple(wt.shape)}")
        self.obj, self.iteration_stats, self.converged_at = np.zeros(0), [], []
        if self.cp.progressive_dim_steps is None:
            init = None
            if init_centroids is not None:
                init, _ = to_tensor(init_centroids, "init_centroids", self.d, xt.device)
                if init.shape[0] > self.k:
                    raise ValueError(
                        f"init_centroids has {init.shape[0]} rows, more than k={self.k}"
                    )
            best = self._fit(*self._subsample(xt, wt), init, self.cp.frozen_centroids)
        else:
            best = self._fit_progressive(xt, wt, init_centroids)
        self.centroids = like(best)
        self.index.reset()
        self.index.add(best)
        return float(self.obj[-1]) if self.obj.size else 0.0

    def _fit(self, x: torch.Tensor, w: torch.Tensor | None, init: torch.Tensor | None,
             frozen: bool) -> torch.Tensor:
        """The nredo runs on x [n, dx] float32 (weights w [n] or None; init [k0, dx] or None for
        the first run, kept fixed when ``frozen``). Appends to obj, iteration_stats and
        converged_at; returns the best run's centroids [k, dx] float32."""
        cp = self.cp
        n_frozen = init.shape[0] if (init is not None and frozen) else 0
        best: KMeansResult | None = None
        for redo in range(cp.nredo):
            seed = cp.seed + redo * _REDO_SEED_STRIDE
            start = init if (init is not None and redo == 0) else _INIT_CODES[cp.init_method]
            res = kmeans(
                x,
                self.k,
                niter=cp.niter,
                seed=seed,
                init=start,
                spherical=cp.spherical,
                weights=w,
                n_frozen=n_frozen if redo == 0 else 0,
                int_centroids=cp.int_centroids,
                backend=self.backend,
                verbose=cp.verbose,
                record_times=True,
                check_finite=cp.check_input_data_for_NaNs,
                early_stop_threshold=cp.early_stop_threshold,
                prune=self.prune,
                labels=False,
            )
            obj = res.obj.cpu().numpy()
            self.obj = np.concatenate([self.obj, obj])
            self.iteration_stats += _stats(res, obj)
            self.converged_at.append(None if res.stop_reason is None else res.n_iter - 1)
            if best is None or (
                obj.size and _better(obj[-1], best.obj[-1].item(), cp.spherical)
            ):
                best = res
        return best.centroids

    def _fit_progressive(self, x: torch.Tensor, w: torch.Tensor | None,
                         init_centroids) -> torch.Tensor:
        """Progressive-dimension clustering of x [n, d] (class docstring); returns the
        centroids [k, d] float32 in x's coordinates."""
        cp = self.cp
        if init_centroids is not None or cp.spherical:
            raise NotImplementedError(
                "progressive_dim_steps supports neither init_centroids nor spherical (as faiss)"
            )
        pca = PCA(self.d, eigen_power=0.0).fit(x) if cp.apply_pca else None
        rotated, w = self._subsample(x if pca is None else pca.transform(x), w)
        centroids = None
        for step in range(cp.progressive_dim_steps):
            dim = int(self.d ** ((1 + step) / cp.progressive_dim_steps))
            if cp.verbose:
                print(f"Progressive dim step {step}: cluster in dimension {dim}", file=sys.stderr)
            init = None
            if centroids is not None:
                init = torch.nn.functional.pad(centroids, (0, dim - centroids.shape[1]))
            centroids = self._fit(rotated[:, :dim].contiguous(), w, init, frozen=False)
        if pca is None:
            return centroids
        return centroids @ pca.components.T + pca.mean  # the rotation back

    def assign(self, x):
        """Nearest centroid of each row: returns 1-D (D, I) like faiss (same kind as x)."""
        if self.centroids is None:
            raise RuntimeError("Kmeans.assign called before train (no centroids yet)")
        D, I = self.index.search(x, 1)
        return D.reshape(-1), I.reshape(-1)

    def _device_for(self, x) -> torch.device:
        if isinstance(x, torch.Tensor):
            return x.device
        if self.gpu is not False and self.gpu != 0:
            if not torch.cuda.is_available():
                raise RuntimeError("Kmeans(gpu=...) was requested but no CUDA device is available")
            return torch.device("cuda")
        return torch.device("cpu")

    def _subsample(self, x: torch.Tensor, w: torch.Tensor | None):
        """faiss's rule: more than k·max_points_per_centroid rows → a seeded random subset;
        fewer than k·min_points_per_centroid → a warning."""
        cp, n = self.cp, x.shape[0]
        if n > self.k * cp.max_points_per_centroid:
            keep = self.k * cp.max_points_per_centroid
            warnings.warn(
                f"Sampling a subset of {keep} / {n} for training "
                f"(max_points_per_centroid={cp.max_points_per_centroid}; raise it to use all)",
                stacklevel=3,
            )
            gen = torch.Generator()
            gen.manual_seed(cp.seed)
            rows = torch.randperm(n, generator=gen)[:keep].to(x.device)
            return x[rows], (None if w is None else w[rows])
        if n < self.k * cp.min_points_per_centroid:
            warnings.warn(
                f"clustering {n} points to {self.k} centroids: please provide at least "
                f"{self.k * cp.min_points_per_centroid} training points",
                stacklevel=3,
            )
        return x, w


def _better(a: float, b: float, spherical: bool) -> bool:
    return a > b if spherical else a < b


def _stats(res: KMeansResult, obj: np.ndarray) -> list[dict]:
    imbalance = res.imbalance.cpu().numpy()
    nsplit = res.nsplit.cpu().numpy()
    pruned = None if res.pruned is None else res.pruned.cpu().numpy()
    return [
        {
            "obj": float(obj[i]),
            "time": res.times[i],
            "time_search": res.search_times[i],
            "imbalance_factor": float(imbalance[i]),
            "nsplit": int(nsplit[i]),
            "pruned": None if pruned is None else float(pruned[i]),
        }
        for i in range(len(obj))
    ]
