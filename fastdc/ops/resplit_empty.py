"""resplit_empty: give every empty cluster half of a randomly chosen donor cluster (faiss's rule).

For each empty cluster ci (count 0, index >= n_frozen), in increasing order of ci:

1. weights w_j = max(count_j - 1, 0) over non-frozen clusters (all counts, if those sum to 0);
2. donor cj = the first j with cumsum(w)[j] > u[ci] * sum(w), where u[ci] in [0, 1) is the
   uniform drawn for slot ci (one per cluster slot, drawn up front: no host sync per split);
3. c[ci] = c[cj] * (1 + eps on even dims, 1 - eps on odd), c[cj] *= (1 - eps even, 1 + eps odd),
   eps = 1/1024; count[ci] = count[cj] / 2, count[cj] -= count[ci].

Counts change after each split, so later empties see the updated weights. The cumulative sums
run in float64 in every backend.
"""

from __future__ import annotations

import torch

from fastdc.ops.checks import as_batched, check_same_device
from fastdc.ops.registry import register, select

EPS = 1.0 / 1024.0  # faiss's perturbation: copies differ by a relative 2/1024 on each dim


def perturbation(d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) float32 scale vectors [d]: up = 1+eps on even dims, 1-eps on odd; down mirrors."""
    even = torch.arange(d, device=device) % 2 == 0
    up = torch.where(even, 1.0 + EPS, 1.0 - EPS).float()
    down = torch.where(even, 1.0 - EPS, 1.0 + EPS).float()
    return up, down


@register("resplit_empty", "torch")
def resplit_empty_ref(
    centroids: torch.Tensor, counts: torch.Tensor, uniforms: torch.Tensor, n_frozen: int
) -> torch.Tensor:
    """Reference re-split, in place, on any device.

    centroids: [B, K, D] float32, counts: [B, K] float32, uniforms: [B, K] float64 in [0, 1).
    Returns nsplit [B] int64 (the number of clusters re-split in each problem).
    """
    B, K, D = centroids.shape
    up, down = perturbation(D, centroids.device)
    nsplit = torch.zeros(B, dtype=torch.int64)
    for b in range(B):
        cnt = counts[b]
        empties = (cnt[n_frozen:] == 0).nonzero().flatten() + n_frozen
        for ci in empties.tolist():
            w = (cnt.double() - 1).clamp_min(0)
            w[:n_frozen] = 0
            if float(w.sum()) == 0:
                w = cnt.double().clone()
                w[:n_frozen] = 0
            cs = w.cumsum(0)
            total = float(cs[-1])
            if total <= 0:
                break
            cj = int(torch.searchsorted(cs, uniforms[b, ci] * total, right=True))
            cj = min(cj, K - 1)
            centroids[b, ci] = centroids[b, cj] * up
            centroids[b, cj] = centroids[b, cj] * down
            cnt[ci] = cnt[cj] / 2
            cnt[cj] -= cnt[ci]
            nsplit[b] += 1
    return nsplit.to(centroids.device)


def resplit_empty(
    centroids: torch.Tensor,
    counts: torch.Tensor,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    n_frozen: int = 0,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-split empty clusters so that none stays empty while some cluster can donate.

    centroids: [K, D] or [B, K, D] float32; counts: [K] or [B, K] float (sizes or weight sums).
    seed or generator (on the centroids' device) drives the donor choice; same seed, same
    result. The first ``n_frozen`` clusters are neither re-split nor donors.
    Returns new (centroids, counts, nsplit) with nsplit int64 [] or [B]; inputs are not modified.
    Not differentiable: inputs that require grad are detached, so the fast backends run on them.
    """
    cb, squeezed = as_batched(centroids, "centroids", 2)
    nb, _ = as_batched(counts, "counts", 1)
    if nb.shape != cb.shape[:2]:
        raise ValueError(
            f"counts {tuple(counts.shape)} must match centroids {tuple(centroids.shape)} without D"
        )
    check_same_device(centroids=cb, counts=nb)
    if not 0 <= n_frozen <= cb.shape[1]:
        raise ValueError(f"n_frozen must be in [0, K={cb.shape[1]}], got {n_frozen}")
    if generator is None:
        generator = torch.Generator(device=cb.device)
        generator.manual_seed(0 if seed is None else int(seed))
    cb = cb.detach().float().contiguous().clone()
    nb = nb.detach().float().contiguous().clone()
    nsplit = resplit_in_place(cb, nb, generator=generator, n_frozen=n_frozen, backend=backend)
    if squeezed:
        return cb[0], nb[0], nsplit[0]
    return cb, nb, nsplit


def resplit_in_place(
    centroids: torch.Tensor,
    counts: torch.Tensor,
    *,
    generator: torch.Generator,
    n_frozen: int = 0,
    backend: str | None = None,
) -> torch.Tensor:
    """:func:`resplit_empty` in place, for callers that own their batched, contiguous float32
    centroids [B, K, D] and counts [B, K] (the Lloyd loop's fresh means): no validation, no
    copies. Draws the same uniforms from ``generator``; returns nsplit [B] int64."""
    uniforms = torch.rand(counts.shape, generator=generator, dtype=torch.float64,
                          device=counts.device)
    if counts.device.type == "cpu" and bool(counts[:, n_frozen:].all()):
        # nothing to re-split (most iterations): no kernel call. Tested on the CPU only, where
        # it costs no device synchronisation; the uniforms were drawn all the same, so the
        # generator advances alike on every device and backend
        return torch.zeros(counts.shape[0], dtype=torch.int64)
    impl = select("resplit_empty", backend, centroids=centroids, counts=counts,
                  uniforms=uniforms, n_frozen=n_frozen)
    return impl.fn(centroids=centroids, counts=counts, uniforms=uniforms, n_frozen=n_frozen)
