"""Power iteration clustering (PIC) on a k-nearest-neighbour graph, as DeepCluster's
``--clustering pic`` runs it (Lin & Cohen, ICML 2010; Caron et al., ECCV 2018, section 5).

1. the graph: every row's ``nnn`` nearest other rows (squared L2, the fused :func:`fastdc.ops.
   knn`, never an N×N matrix) weighted by the Gaussian kernel ``exp(-d / sigma^2)``; the
   adjacency is symmetrised, ``W = A + A^T`` (an edge present both ways weighs the sum);
2. ``niter`` power iterations ``v <- alpha · W v + (1 - alpha) / N``, L1-normalised, from the
   uniform vector;
3. every node points to the neighbour j that maximises ``W_ij (v_j - v_i)`` when that is
   positive (itself otherwise; ties to the smallest j); the clusters are the basins of the
   local maxima of v, numbered in node order;
4. optionally, each singleton joins the cluster of its nearest neighbour that is not a
   singleton, and the clusters are renumbered 0..m-1.

The graph is the reference's ``nnn + 1`` nearest rows minus the row itself; where an equal row
with a smaller index ranks first, the row itself is dropped all the same (the reference drops
the first column, which would keep a zero-distance self-loop there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastdc.engine.checks import check_rows
from fastdc.ops import knn


@dataclass
class PICResult:
    """labels: int64 [N] cluster of every row in [0, n_clusters); n_clusters: int;
    neighbours: int64 [N, nnn] the graph's neighbours of every row, nearest first;
    dist: float32 [N, nnn] their squared L2 distances."""

    labels: torch.Tensor
    n_clusters: int
    neighbours: torch.Tensor
    dist: torch.Tensor


def knn_graph(x: torch.Tensor, nnn: int, *, backend: str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``nnn`` nearest other rows of every row of x [N, D] float32 (N > nnn >= 1).

    Returns (dist float32 [N, nnn] squared L2, idx int64 [N, nnn]), nearest first, the row
    itself left out (and ties to the smaller index, as :func:`fastdc.ops.knn`).
    """
    dist, idx = knn(x, x, nnn + 1, backend=backend)
    keep = idx != torch.arange(len(x), device=x.device).unsqueeze(1)
    keep[keep.all(dim=1), -1] = False  # the row itself was not among them: drop the farthest
    return dist[keep].view(-1, nnn), idx[keep].view(-1, nnn)


def _check(x: torch.Tensor, nnn: int, sigma: float, alpha: float, niter: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError("x must be a floating tensor [N, D]")
    if isinstance(nnn, bool) or not isinstance(nnn, int) or not 1 <= nnn < len(x):
        raise ValueError(f"nnn must be an int in [1, N - 1] = [1, {len(x) - 1}], got {nnn!r}; "
                         "PIC needs more rows than neighbours per row")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma (the Gaussian kernel's bandwidth) must be > 0, got {sigma!r}")
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if isinstance(niter, bool) or not isinstance(niter, int) or niter < 1:
        raise ValueError(f"niter must be an int >= 1, got {niter!r}")


def _symmetric_edges(dist: torch.Tensor, idx: torch.Tensor, sigma: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W = A + A^T as edges (rows, cols, weights float64) sorted by (row, col), each pair once."""
    N, nnn = idx.shape
    rows = torch.arange(N, device=idx.device).repeat_interleave(nnn)
    cols = idx.reshape(-1)
    w = torch.exp(-dist.double().reshape(-1) / sigma**2)
    keys = torch.cat([rows * N + cols, cols * N + rows])
    pairs, where = torch.unique(keys, return_inverse=True)
    weights = torch.zeros(len(pairs), dtype=torch.float64, device=w.device)
    weights.index_add_(0, where, torch.cat([w, w]))
    return pairs // N, pairs % N, weights


def _power_iteration(r, c, w, N: int, alpha: float, niter: int) -> torch.Tensor:
    """v float64 [N] after ``niter`` damped, L1-normalised products with the symmetric W."""
    v = torch.full((N,), 1.0 / N, dtype=torch.float64, device=w.device)
    for _ in range(niter):
        wv = torch.zeros_like(v).index_add_(0, r, w * v[c])
        v = alpha * wv + (1 - alpha) / N
        v = v / v.sum()
    return v


def _basins(r, c, w, v: torch.Tensor) -> torch.Tensor:
    """Cluster id int64 [N] of every node: the local maximum of v its pointers climb to."""
    N = len(v)
    gain = w * (v[c] - v[r])
    gain = torch.where(gain > 0, gain, torch.full_like(gain, -math.inf))
    best = torch.full_like(v, -math.inf).scatter_reduce(0, r, gain, "amax")
    wins = (gain == best[r]) & (gain > -math.inf)
    nodes = torch.arange(N, device=v.device)
    pointer = torch.full_like(nodes, N).scatter_reduce(0, r[wins], c[wins], "amin")
    pointer = torch.where(pointer == N, nodes, pointer)
    while True:  # pointer jumping: v grows strictly along pointers, so this ends at the roots
        jumped = pointer[pointer]
        if torch.equal(jumped, pointer):
            break
        pointer = jumped
    roots = pointer == nodes
    return (torch.cumsum(roots.long(), 0) - 1)[pointer]


def _distribute_singletons(labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Each singleton joins its nearest non-singleton neighbour's cluster (if any); then the
    clusters are renumbered 0..m-1 in increasing old id."""
    sizes = torch.bincount(labels)
    single = (sizes[labels] == 1).nonzero().flatten()
    if len(single):
        ok = sizes[labels[idx[single]]] > 1  # [S, nnn]: neighbours in a larger cluster
        first = ok.long().argmax(dim=1)
        has = ok.any(dim=1)
        target = labels[idx[single, first]]
        labels = labels.clone()
        labels[single[has]] = target[has]
    return torch.unique(labels, return_inverse=True)[1]


def pic(x: torch.Tensor, *, nnn: int = 5, sigma: float = 0.2, alpha: float = 0.001,
        niter: int = 200, distribute_singletons: bool = True,
        backend: str | None = None) -> PICResult:
    """Power iteration clustering of x [N, D] float (any device; float32 compute).

    nnn: neighbours per row in the graph; sigma: the Gaussian kernel's bandwidth on squared L2
    distances; alpha: the damping of the power iteration; niter: its iterations;
    distribute_singletons: move singletons into their nearest neighbour's cluster;
    backend: forces the knn backend. The number of clusters follows from the graph (no k).
    Raises ValueError on bad parameters or rows holding NaN/inf.
    """
    _check(x, nnn, sigma, alpha, niter)
    x = x.detach().float().contiguous()
    check_rows(x.unsqueeze(0))
    dist, idx = knn_graph(x, nnn, backend=backend)
    r, c, w = _symmetric_edges(dist, idx, sigma)
    v = _power_iteration(r, c, w, len(x), alpha, niter)
    labels = _basins(r, c, w, v)
    if distribute_singletons:
        labels = _distribute_singletons(labels, idx)
    return PICResult(labels, int(labels.max()) + 1, idx, dist)
