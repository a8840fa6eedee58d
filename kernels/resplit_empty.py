"""Triton resplit_empty: faiss's empty-cluster re-split on the device, in one launch.

One program per problem walks its clusters in increasing index order; for every empty one it
computes the donor weights' float64 cumulative sums block by block (``tl.cumsum`` plus a running
carry), counts the prefix sums <= u·total to find the donor (= ``searchsorted(..., right=True)``),
and splits the donor's centroid and count. No host synchronisation, any number of empties.

Bit-identical to :func:`fastdc.ops.resplit_empty.resplit_empty_ref` given the same uniforms whenever
the float64 prefix sums are exact — always the case for k-means counts (integers < 2^53). With
fractional weights the blocked prefix sums may round differently from a sequential cumsum (as
torch's own CPU and CUDA cumsums do).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdc.ops.registry import register
from fastdc.ops.resplit_empty import EPS, resplit_empty_ref  # noqa: F401  (the ground truth)

from ._common import device_reasons, next_pow2

# ---------------------------------------------------------------------------------------------
# kernel
# ---------------------------------------------------------------------------------------------


@triton.jit
def _donor_weights(cnt, js, K, n_frozen, USE_RAW):
    """float64 donor weights of the clusters js: max(count - 1, 0), or the raw counts when
    every such weight is 0 (USE_RAW); 0 for frozen clusters and for js >= K."""
    c = cnt.to(tl.float64)
    w = tl.where(USE_RAW, c, tl.maximum(c - 1.0, 0.0))
    return tl.where((js >= n_frozen) & (js < K), w, 0.0)


@triton.jit
def _donor_total(cnt_b, K, n_frozen, kk, USE_RAW, BLOCK_K: tl.constexpr):
    """Sum of the float64 donor weights of one problem's K clusters, block by block (the order
    in which _find_donor accumulates its prefix sums)."""
    total = tl.zeros([], dtype=tl.float64)
    for j0 in range(0, K, BLOCK_K):
        js = j0 + kk
        cj_blk = tl.load(cnt_b + js, mask=js < K, other=0.0)
        total += tl.sum(_donor_weights(cj_blk, js, K, n_frozen, USE_RAW), axis=0)
    return total


@triton.jit
def _find_donor(cnt_b, K, n_frozen, kk, USE_RAW, target, j_end, BLOCK_K: tl.constexpr):
    """The donor: the number of float64 prefix sums of the donor weights <= target
    (searchsorted right), capped at K - 1; the scan stops at j_end (0: no scan)."""
    donor = tl.zeros([], dtype=tl.int64)
    carry = tl.zeros([], dtype=tl.float64)
    for j0 in range(0, j_end, BLOCK_K):
        js = j0 + kk
        cj_blk = tl.load(cnt_b + js, mask=js < K, other=0.0)
        w = _donor_weights(cj_blk, js, K, n_frozen, USE_RAW)
        prefix = carry + tl.cumsum(w, axis=0)
        donor += tl.sum(((prefix <= target) & (js < K)).to(tl.int64), axis=0)
        carry += tl.sum(w, axis=0)
    return tl.minimum(donor, K - 1)


@triton.jit
def _split_centroids(c_b, ci, cj, D, dd, d_end, EPS: tl.constexpr, BLOCK_D: tl.constexpr):
    """c[ci] = c[cj]·up, c[cj] = c[cj]·down (c[ci]·down when ci == cj), features [0, d_end)."""
    for d0 in range(0, d_end, BLOCK_D):
        ds = d0 + dd
        d_ok = ds < D
        row = tl.load(c_b + cj * D + ds, mask=d_ok, other=0.0)
        even = (ds % 2) == 0
        up = tl.where(even, 1.0 + EPS, 1.0 - EPS)
        down = tl.where(even, 1.0 - EPS, 1.0 + EPS)
        new_ci = row * up
        new_cj = tl.where(cj == ci, new_ci * down, row * down)
        tl.store(c_b + ci * D + ds, new_ci, mask=d_ok)
        tl.store(c_b + cj * D + ds, new_cj, mask=d_ok)


@triton.jit
def _resplit_empty_kernel(
    c_ptr,  # [B, K, D] float32, contiguous, updated in place: the centroids
    cnt_ptr,  # [B, K] float32, updated in place: cluster sizes (or weight sums)
    u_ptr,  # [B, K] float64 in [0, 1): the uniform drawn for each cluster slot
    nsplit_ptr,  # [B] int64 out: number of clusters re-split per problem
    K,  # clusters per problem
    D,  # feature dim
    n_frozen,  # the first n_frozen clusters are neither split nor donors
    EPS: tl.constexpr,  # relative perturbation of the two copies (faiss: 1/1024)
    BLOCK_K: tl.constexpr,  # clusters per step of the scans
    BLOCK_D: tl.constexpr,  # features per step of the copy
):
    b = tl.program_id(0).to(tl.int64)
    cnt_b = cnt_ptr + b * K
    c_b = c_ptr + b * K * D
    kk = tl.arange(0, BLOCK_K)
    dd = tl.arange(0, BLOCK_D)
    nsplit = tl.zeros([], dtype=tl.int64)
    done = tl.zeros([], dtype=tl.int32)  # 1 once no cluster can donate: the rest stay empty
    for s0 in range(0, K, BLOCK_K):
        ks = s0 + kk
        blk = tl.load(cnt_b + ks, mask=ks < K, other=1.0)
        empty = (blk == 0) & (ks >= n_frozen) & (ks < K)
        n_empty = tl.where(done == 0, tl.sum(empty.to(tl.int32), axis=0), 0)
        for _ in range(0, n_empty):
            ci = tl.min(tl.where(empty, ks, K), axis=0).to(tl.int64)  # next empty, in order
            empty = empty & (ks != ci)
            # pass 1: do the (count - 1) weights sum to zero? then weigh by raw counts
            use_raw = _donor_total(cnt_b, K, n_frozen, kk, False, BLOCK_K) == 0
            # pass 2: total = last prefix sum, accumulated exactly as pass 3 accumulates it
            total = _donor_total(cnt_b, K, n_frozen, kk, use_raw, BLOCK_K)
            active = total > 0
            done = tl.where(active, done, 1)
            target = tl.load(u_ptr + b * K + ci) * total
            # pass 3: the donor, then c[ci] = c[cj]·up, c[cj] = c[cj]·down
            cj = _find_donor(cnt_b, K, n_frozen, kk, use_raw, target, tl.where(active, K, 0),
                             BLOCK_K)
            _split_centroids(c_b, ci, cj, D, dd, tl.where(active, D, 0), EPS, BLOCK_D)
            if active:
                donor_cnt = tl.load(cnt_b + cj)
                half = donor_cnt * 0.5  # = count / 2, exact
                tl.store(cnt_b + ci, half)
                tl.store(cnt_b + cj, donor_cnt - half)
                nsplit += 1
            tl.debug_barrier()  # the next split's scans must see these stores (one CTA)
    tl.store(nsplit_ptr + b, nsplit)


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------


def resplit_empty_config(K: int, D: int) -> dict:
    """Block sizes keyed on K, D: scans of up to 1024 clusters (10 steps for K = 10 000) and
    copies of up to 256 features (one step at D = 256); 4 warps. The kernel is latency bound
    (one CTA per problem, a few scans per empty cluster); not yet measured on a GPU."""
    return {
        "BLOCK_K": min(1024, max(16, next_pow2(K))),
        "BLOCK_D": min(256, max(16, next_pow2(D))),
        "num_warps": 4,
    }


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------


def resplit_empty_triton(
    centroids: torch.Tensor, counts: torch.Tensor, uniforms: torch.Tensor, n_frozen: int
) -> torch.Tensor:
    """Re-split empty clusters in place on the current torch stream.

    centroids: [B, K, D] float32, counts: [B, K] float32 (both contiguous, updated in place),
    uniforms: [B, K] float64 in [0, 1), as :func:`fastdc.ops.resplit_empty` prepared them.
    Returns nsplit [B] int64 on the same device.
    """
    B, K, D = centroids.shape
    nsplit = torch.empty(B, dtype=torch.int64, device=centroids.device)
    cfg = resplit_empty_config(K, D)
    _resplit_empty_kernel[(B,)](
        centroids, counts, uniforms, nsplit, K, D, int(n_frozen),
        EPS=EPS, BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
    )
    return nsplit


def _reasons(centroids, counts, uniforms, n_frozen=0, **_):
    return device_reasons(centroids=centroids, counts=counts, uniforms=uniforms)


register("resplit_empty", "triton", _reasons)(resplit_empty_triton)
