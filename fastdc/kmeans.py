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
import warnings

import numpy as np
import torch

from fastdc.engine import FlatIndex, KMeansResult, initial_centroids, kmeans, to_tensor
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


@dataclasses.dataclass
class ClusteringParameters:
    """faiss's ClusteringParameters, with faiss's defaults.

    Honoured: niter, nredo, verbose, spherical, int_centroids, update_index (no effect on a
    flat index), frozen_centroids, min_points_per_centroid, max_points_per_centroid, seed,
    check_input_data_for_NaNs, init_method (0/"random", 1/"kmeans++").
    Accepted for compatibility with no effect on raw float vectors: decode_block_size,
    use_faster_subsampling, afkmc2_chain_length. Not implemented (a non-default value raises):
    init_method=2 (AFK-MC²), early_stop_threshold > 0, use_super_kmeans=True.
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

    def validate(self) -> None:
        """Raise ValueError/NotImplementedError for values fastdc cannot honour."""
        if self.init_method not in _INIT_CODES:
            raise NotImplementedError(
                f"init_method={self.init_method!r} is not supported; use 0/'random' or "
                "1/'kmeans++'"
            )
        if self.early_stop_threshold:
            raise NotImplementedError("early_stop_threshold is not supported; leave it at 0")
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
    for several GPUs run one process each with ``fastdc.kmeans.kmeans(..., group=...)``) and
    ``backend`` (force a fastdc backend).
    An unknown keyword raises TypeError. After :meth:`train`: ``centroids`` (k, d) float32,
    ``obj`` (niter·nredo,) float64, ``iteration_stats`` (list of dicts with obj, time,
    time_search, imbalance_factor, nsplit), ``index`` holding the centroids.
    """

    def __init__(self, d: int, k: int, **kwargs):
        if isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 1:
            raise ValueError(f"d must be a positive int, got {d!r}")
        self.d = int(d)
        self.gpu: bool | int = kwargs.pop("gpu", False)
        self.backend: str | None = kwargs.pop("backend", None)
        known = {f.name for f in dataclasses.fields(ClusteringParameters)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"unknown Kmeans parameter(s) {unknown}; valid ones: {sorted(known)} "
                "plus gpu and backend"
            )
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

    def train(self, x, weights=None, init_centroids=None) -> float:
        """Cluster x (n, d) and return the final objective (that of the last iteration).

        x: NumPy array or torch tensor convertible to float32; weights: (n,) non-negative;
        init_centroids: (k0, d) with k0 <= k, used for the first redo (and kept fixed when
        frozen_centroids is set); tensors are detached. Raises ValueError on wrong shapes,
        n < k, NaN/inf rows or rows of norm > 6.5e18 (float32 distances overflow).
        """
        cp = self.cp
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
        xt, wt = self._subsample(xt, wt)
        init = None
        if init_centroids is not None:
            init, _ = to_tensor(init_centroids, "init_centroids", self.d, xt.device)
            if init.shape[0] > self.k:
                raise ValueError(f"init_centroids has {init.shape[0]} rows, more than k={self.k}")
        n_frozen = init.shape[0] if (init is not None and cp.frozen_centroids) else 0

        best: KMeansResult | None = None
        objs, stats = [], []
        for redo in range(cp.nredo):
            seed = cp.seed + redo * _REDO_SEED_STRIDE
            start = init if (init is not None and redo == 0) else _INIT_CODES[cp.init_method]
            res = kmeans(
                xt,
                self.k,
                niter=cp.niter,
                seed=seed,
                init=start,
                spherical=cp.spherical,
                weights=wt,
                n_frozen=n_frozen if redo == 0 else 0,
                int_centroids=cp.int_centroids,
                backend=self.backend,
                verbose=cp.verbose,
                record_times=True,
                check_finite=cp.check_input_data_for_NaNs,
            )
            obj = res.obj.cpu().numpy()
            objs.append(obj)
            stats += _stats(res, obj)
            if best is None or (
                obj.size and _better(obj[-1], best.obj[-1].item(), cp.spherical)
            ):
                best = res
        self.obj = np.concatenate(objs) if objs else np.zeros(0)
        self.iteration_stats = stats
        self.centroids = like(best.centroids)
        self.index.reset()
        self.index.add(best.centroids)
        return float(self.obj[-1]) if self.obj.size else 0.0

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
    return [
        {
            "obj": float(obj[i]),
            "time": res.times[i],
            "time_search": res.search_times[i],
            "imbalance_factor": float(imbalance[i]),
            "nsplit": int(nsplit[i]),
        }
        for i in range(len(obj))
    ]
