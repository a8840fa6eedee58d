"""Triton knn: fused distance + top-k, batched over B problems, never building N×M.

Each program owns BLOCK_N query rows of one problem; database tiles of BLOCK_M rows stream
past, their scores come from one fp32 ``tl.dot`` (``input_precision="ieee"``: fp32 FMAs on
CUDA cores, no TF32 rounding, so the ranking is the reference's up to fp32 near ties), and
every row keeps its running k best in registers.

Order and ties. A score s of database row j becomes one int64 key: the 32 bits of s mapped to
a signed integer of the same order, shifted up, with j in the low 32 bits. Keys are unique per
row and compare as (score, index), so "the k smallest keys" are the k best rows with equal
scores going to the smallest index, and no step needs a second tie-break (-0.0 is folded into
+0.0 first, so the two zeros tie as they do in the reference's sort).

Merge of one tile into a row's list of k keys: the tile's keys below the list's worst are
counted; for as many rounds as the block's largest count (at most k), each row takes its
smallest remaining tile key and, where it beats the worst, overwrites the worst slot. The k
slots stay unsorted; they are sorted once at the end by k min-extractions. Once the lists are
full most tiles add nothing, and the merge costs one compare and one add per score.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdc.ops.knn import knn_outputs, knn_ref  # noqa: F401  (knn_ref: the ground truth)
from fastdc.ops.registry import register

from ._common import device_reasons, interpreting, next_pow2

MAX_K = 64
"""Largest k the kernel keeps in registers; larger k run on the torch reference."""

_KEY_MAX = tl.constexpr(0x7FFFFFFFFFFFFFFF)  # padded database columns: never enter a list
_LOW = tl.constexpr(0xFFFFFFFF)  # the index half of a key


@triton.jit
def _keys(score, cols, col_ok):
    """int64 keys [BLOCK_N, BLOCK_M] of the scores (fp32 [BLOCK_N, BLOCK_M]) of database rows
    cols (int [BLOCK_M], valid where col_ok): key order = (score, column) order."""
    score = tl.where(score == 0.0, 0.0, score)  # -0.0 and +0.0 are one score
    bits = score.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: reverse the magnitude order
    key = (ordered.to(tl.int64) << 32) | cols.to(tl.int64)[None, :]
    return tl.where(col_ok[None, :], key, _KEY_MAX)


@triton.jit
def _key_score(key):
    """The fp32 score encoded in the high half of int64 keys (inverse of :func:`_keys`)."""
    ordered = (key >> 32).to(tl.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _worst(top, slot_ok):
    """The largest key [BLOCK_N] of each row's list top [BLOCK_N, KP] over its k real slots."""
    return tl.max(tl.where(slot_ok[None, :], top, -_KEY_MAX - 1), axis=1)


@triton.jit
def _knn_kernel(
    x_ptr,  # [B, N, D] float32, contiguous: the queries
    y_ptr,  # [B, M, D] float32, contiguous: the database
    xsq_ptr,  # [B, N] float32: |x|² per query (read for L2)
    ysq_ptr,  # [B, M] float32: |y|² per database row (read for L2)
    dist_ptr,  # [B, N, K] float32 out: squared L2 distance (>= 0) or inner product, best first
    idx_ptr,  # [B, N, K] int64 out: database row of each neighbour (ties: smallest first)
    N,  # queries per problem
    M,  # database rows per problem
    K,  # neighbours per query, 1 <= K <= min(M, KP)
    D: tl.constexpr,  # feature dim (specialised: one compile per D)
    IS_L2: tl.constexpr,  # True: smallest squared L2 distance; False: largest inner product
    KP: tl.constexpr,  # K padded to a power of two: the slots of a row's list
    BLOCK_N: tl.constexpr,  # queries per program
    BLOCK_M: tl.constexpr,  # database rows per streamed tile
    BLOCK_D: tl.constexpr,  # feature chunk; >= D means the x tile is loaded once and kept
):
    pid_n = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    x_rows = x_ptr + b * N * D + rows[:, None] * D  # [BLOCK_N, 1] row starts (int64)
    y_base = y_ptr + b * M * D
    dd = tl.arange(0, BLOCK_D)
    if BLOCK_D >= D:
        x_tile = tl.load(x_rows + dd[None, :], mask=row_ok[:, None] & (dd[None, :] < D),
                         other=0.0)

    slots = tl.arange(0, KP)
    slot_ok = slots < K
    # empty lists: distinct keys above every real one, so the first k tile keys replace them
    top = tl.full([BLOCK_N, KP], _KEY_MAX - 1, tl.int64) - slots.to(tl.int64)[None, :]
    mm = tl.arange(0, BLOCK_M)
    for m0 in range(0, M, BLOCK_M):
        cols = m0 + mm
        col_ok = cols < M
        y_rows = y_base + cols[:, None].to(tl.int64) * D  # [BLOCK_M, 1]
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        if BLOCK_D >= D:
            y_tile = tl.load(y_rows + dd[None, :], mask=col_ok[:, None] & (dd[None, :] < D),
                             other=0.0)
            acc = tl.dot(x_tile, tl.trans(y_tile), acc, input_precision="ieee")
        else:
            for d0 in range(0, D, BLOCK_D):
                d_ok = (d0 + dd) < D
                xt = tl.load(x_rows + d0 + dd[None, :], mask=row_ok[:, None] & d_ok[None, :],
                             other=0.0)
                yt = tl.load(y_rows + d0 + dd[None, :], mask=col_ok[:, None] & d_ok[None, :],
                             other=0.0)
                acc = tl.dot(xt, tl.trans(yt), acc, input_precision="ieee")
        if IS_L2:  # same form as the reference's addmm: |y|² + (-2)·x·y
            ysq = tl.load(ysq_ptr + b * M + cols, mask=col_ok, other=0.0)
            score = ysq[None, :] - 2.0 * acc
        else:  # largest inner product = smallest negated one
            score = -acc
        keys = _keys(score, cols, col_ok)
        worst = _worst(top, slot_ok)
        # rounds: the most tile keys below its worst of any row, at most k (a row's k-th
        # insertion from a tile leaves no smaller tile key); counted in fp32 because LLVM
        # turns an integer count of compares into a popcount through a local-memory buffer
        below = tl.sum(tl.where(keys < worst[:, None], 1.0, 0.0), axis=1)
        for _ in range(tl.minimum(tl.max(below, axis=0).to(tl.int32), K)):
            best = tl.min(keys, axis=1)
            take = best < worst
            hit = (top == worst[:, None]) & take[:, None] & slot_ok[None, :]
            top = tl.where(hit, best[:, None], top)
            keys = tl.where(keys == best[:, None], _KEY_MAX, keys)
            worst = _worst(top, slot_ok)

    # sort each list: the p-th smallest key goes to column p
    ranked = tl.zeros([BLOCK_N, KP], dtype=tl.int64)
    top = tl.where(slot_ok[None, :], top, _KEY_MAX)
    for p in range(K):
        first = tl.min(top, axis=1)
        ranked = tl.where(slots[None, :] == p, first[:, None], ranked)
        top = tl.where(top == first[:, None], _KEY_MAX, top)
    score = _key_score(ranked)
    if IS_L2:
        x_sq = tl.load(xsq_ptr + b * N + rows, mask=row_ok, other=0.0)
        dist = tl.maximum(x_sq[:, None] + score, 0.0)
    else:
        dist = -score
    out = (b * N + rows)[:, None] * K + slots[None, :]
    ok = row_ok[:, None] & slot_ok[None, :]
    tl.store(dist_ptr + out, dist, mask=ok)
    tl.store(idx_ptr + out, ranked & _LOW, mask=ok)


# ---------------------------------------------------------------------------------------------
# autotune configs
# ---------------------------------------------------------------------------------------------


def knn_block_d(D: int) -> int:
    """The "all of D" feature chunk: D padded to a power of two (>= 16, tl.dot's minimum), or
    0 when that exceeds 128 (a resident x tile of 256 fp32 features spills on sm_90: D is then
    streamed in chunks)."""
    p = max(16, next_pow2(D))
    return p if p <= 128 else 0


def knn_configs() -> list[triton.Config]:
    """Candidate tiles for the knn kernel; pruned per (N, M, D) by _prune_knn_configs.

    BLOCK_D = 0 means "all of D" (the x tile loaded once per program and kept), the candidates
    for D <= 128; the others stream D in BLOCK_D chunks, the candidates for D > 128. The list
    keeps only tiles that compiled for sm_90 (Triton 3.8, fp32, k padded to 1 ... 64) with no
    stack frame and within the shared-memory limit (tests/test_triton_backend.py checks this);
    tiles that spilled there are left out: every resident tile at D = 256, resident 64×64 and
    (at k = 64) 64×32 with 4 warps, chunked 64×64×16 with 8 warps (at k = 4). Which one wins
    is the autotuner's measurement on the GPU, cached per (N, M, D, metric, padded k).
    The 32×32 tiles always survive the pruning. Interpreter: one 32×32 tile per kind.
    """
    if interpreting():
        return [triton.Config({"BLOCK_N": 32, "BLOCK_M": 32, "BLOCK_D": bd}, num_warps=4,
                              num_stages=1) for bd in (0, 32)]
    tiles = [  # (BLOCK_N, BLOCK_M, BLOCK_D, warps, stages)
        (32, 32, 0, 4, 2), (32, 64, 0, 4, 2), (64, 64, 0, 8, 2), (128, 32, 0, 8, 2),
        (32, 32, 32, 4, 3), (32, 64, 32, 4, 3),
    ]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_D": bd}, num_warps=w, num_stages=s)
        for bn, bm, bd, w, s in tiles
    ]


WIDE_K = 32
"""Padded k from which the resident tiles with BLOCK_M = 64 are dropped: at k = 64 they
spilled 1.7-2.1 KB per thread on sm_90 with Triton 3.6 (none with 3.8)."""


def _prune_knn_configs(configs, named_args, **kwargs):
    """Keep the resident tiles when D <= 128, else the chunked ones; drop the resident
    BLOCK_M = 64 tiles from k = :data:`WIDE_K` and tiles far larger than N or M."""
    n, m, d = named_args["N"], named_args["M"], kwargs.get("D", named_args.get("D"))
    resident = knn_block_d(d) > 0
    kept = []
    for c in configs:
        bn, bm, bd = c.kwargs["BLOCK_N"], c.kwargs["BLOCK_M"], c.kwargs["BLOCK_D"]
        if (bd == 0) != resident:
            continue
        if bd == 0 and bm >= 64 and kwargs.get("KP", 1) >= WIDE_K:
            continue
        if bm > max(32, next_pow2(m)) or bn > max(32, next_pow2(n)):
            continue
        kept.append(c)
    return kept


def _resolve_block_d(args) -> int:
    """BLOCK_D = 0 ("all of D") becomes D padded to a power of two."""
    return args["BLOCK_D"] or knn_block_d(args["D"])


_knn_tuned = triton.autotune(
    configs=knn_configs(),
    key=["N", "M", "D", "IS_L2", "KP"],
    prune_configs_by={"early_config_prune": _prune_knn_configs},
    cache_results=True,
)(triton.heuristics({"BLOCK_D": _resolve_block_d})(_knn_kernel))


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------


def knn_triton(
    x: torch.Tensor, y: torch.Tensor, k: int, metric: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused knn on the current torch stream.

    x: [B, N, D] and y: [B, M, D] float32, contiguous, on one device, 1 <= k <= min(M,
    :data:`MAX_K`), as :func:`fastdc.ops.knn` validated them (``_reasons`` declines the rest).
    Returns dist [B, N, k] float32 (squared L2 clamped at 0, or the inner product) and idx
    [B, N, k] int64, best first, equal scores to the smallest index. Extra memory: |x|² and
    |y|² (4 bytes per row).
    """
    B, N, D = x.shape
    M = y.shape[1]
    dist, idx, xsq, ysq = knn_outputs(x, y, k, metric)
    if dist.numel() == 0:
        return dist, idx
    is_l2 = metric == "l2"
    if not is_l2:  # the kernel reads no norms for the inner product: any tensor will do
        xsq = ysq = dist
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), B)  # noqa: E731
    _knn_tuned[grid](x, y, xsq, ysq, dist, idx, N, M, k, D=D, IS_L2=is_l2, KP=next_pow2(k))
    return dist, idx


def _reasons(x, y, k, metric, **_):
    why = device_reasons(x=x, y=y)
    if x.dtype != torch.float32:
        why.append(f"triton knn takes float32, not {x.dtype}")
    if k > MAX_K:
        why.append(f"triton knn keeps at most k = {MAX_K} neighbours in registers, got k = {k}")
    if y.shape[1] >= 2**31:
        why.append(f"triton knn indexes the database in 31 bits, M = {y.shape[1]} is larger")
    return why


register("knn", "triton", _reasons)(knn_triton)
