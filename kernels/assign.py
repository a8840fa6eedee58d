"""Triton assign: fused distance + argmin, batched over B problems, never building N×K.

Each program owns BLOCK_N rows of one problem; centroid tiles of BLOCK_K rows stream past
while the running (min, argmin) of every row stays in registers. Only ``dist`` and ``idx``
(and, in the default precision, an 8-byte packed candidate count) are written.

Precision modes (``precision=``):

- ``"default"``: a bf16 tensor-core pass (centroids rounded once per call, x once per tile,
  fp32 accumulation) that counts, per row, the centroids within the proven rounding bound of
  the best (:func:`candidate_width`); rows with more than two candidates go through a TF32
  pass that counts again within its own, about 4× narrower bound, and rows it leaves so
  through a tf32x3 pass, about 4× narrower again; every row is then re-scored in fp32 on its
  one or two candidates, and rows with more still go through the full fp32 pass (each pass's
  rows compacted on the device, no host sync). The candidates always hold the fp32 and the
  exact arg-min, so indices equal fp32 brute force's (up to fp32 near ties); distances are
  fp32.
- ``"fp32"``: one pass, fp32 products on CUDA cores (``input_precision="ieee"``): exact but
  about 8× slower than TF32 on an H100.
- ``"tf32x3"``: one pass, three TF32 products per fp32 product (error ≈ fp32).
- ``"tf32"``: one pass of TF32 (10-bit mantissa products): fastest fp32-input mode; picks a
  different centroid than fp32 on rows whose two best scores are within ≈1e-3·|x|·|c|, and its
  distances carry a ≈1e-3 relative error.
- ``"bf16"``: one pass with both operands rounded to bfloat16 (8-bit mantissa): the cheapest,
  error ≈ 4e-3 relative; only for seeding / very rough passes.

float16/bfloat16 inputs always use their native tensor-core product (exact in fp32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdc.ops.assign import assign_ref  # noqa: F401  (the ground truth these kernels match)
from fastdc.ops.registry import register

from ._common import device_reasons, interpreting, next_pow2, rows_with_ids

PRECISIONS = ("default", "fp32", "tf32x3", "tf32", "bf16")
"""Accepted ``precision`` values (``default`` = bf16 pass + fp32 re-check of its candidates)."""

BF16_UNIT = 2.0**-8
"""Unit roundoff of bfloat16 (8 significand bits, round to nearest): |v − bf16(v)| <= 2^-8·|v|."""

TF32_UNIT = 2.0**-10
"""Relative error bound of fp32 → TF32 (10 stored mantissa bits): 2^-10 covers truncation, the
worst a converter may do (round-to-nearest would give 2^-11)."""

ACC_UNIT = 2.0**-22
"""Error allowed per accumulated term to the tensor cores' fp32 accumulation, relative to the
sum of the terms' magnitudes: γ = n·2^-22 / (1 − n·2^-22) for n terms, 4× IEEE fp32's γ_n.
Tensor cores are not IEEE adders: measured on V100, T4 and A100, they add a block of b exact
products and the accumulator by aligning significands to the largest one, dropping the bits
past fp32's 24 without rounding, and truncate the normalised sum (Fasi, Higham, Mikaitis and
Pranesh, "Numerical behavior of NVIDIA tensor cores", PeerJ CS 7:e330, 2021; Khattak and
Mikaitis, arXiv:2512.07004, model H100's). A step then errs by at most (b + 1)·2^-23 times
the sum of the magnitudes accumulated so far (b terms cut at the largest one's last bit, one
final cut), so d products in d/b steps by at most d(1 + 1/b)·2^-23 <= d·2^-22 times it, for
any b >= 1. The fp32 evaluations the bound also covers (the CUDA-core re-check, torch's
reference) round to nearest: γ_d with 2^-24."""

BOUND_SLACK = 1.0 + 2.0**-10
"""Factor on the whole bound covering the fp32 roundings of computing the bound itself (|x|,
|x_l| from fp32 sums of squares, a handful of multiplies: each ≤ 2^-16 relative at D <= 2^8,
≤ D·2^-24 beyond; the factor leaves a margin of 64 such errors at D = 256)."""

COUNTING_MODES = ("bf16", "tf32", "tf32x3")
"""The default mode's counting passes, coarsest first; each takes the rows the one before
leaves with more than two candidates."""


def _gamma(n: int, unit: float) -> float:
    """γ_n = n·unit / (1 − n·unit): the relative error bound of a sum of n terms."""
    return n * unit / (1.0 - n * unit)


def candidate_width(cmax: torch.Tensor, cl_max: torch.Tensor, d: int, mode: str
                    ) -> torch.Tensor:
    """Coefficients [B, 3] float32 (A, Bx, C) of each row's candidate width W = A·|x_l| + Bx·|x|
    + C for a counting pass (proof in docs/DESIGN.md, "Precision").

    cmax: [B] max_j |c_j|; cl_max: [B] max_j |c_j − c_h,j| (c_h as :func:`round_operand`);
    d the feature dim; mode one of :data:`COUNTING_MODES`. |x_l| is the row's truncation
    residual in the TF32 modes (it bounds every TF32 rounding's residual element by element).

    Bound. Split x = x_h + x_l, c = c_h + c_l (x_h, c_h the rounded operands; x_l, c_l exact in
    fp32). One-product modes ("bf16", "tf32", unit u): x·c − x_h·c_h = x_l·c + x_h·c_l, so by
    Cauchy–Schwarz |x·c − x_h·c_h| <= |x_l||c| + |x_h||c_l|, and the d products x_h,i·c_h,i are
    exact in fp32 (8 or 11 significand bits each), their sum <= |x_h||c_h| <= (1+u)²|x||c|.
    "tf32x3" (Triton's split: x_h the TF32 rounding to nearest, x_l read by the tensor core
    truncated to x_l', |x_l − x_l'| <= 2^-10|x_l|, the same for c): the pass sums x_l'·c_h +
    x_h·c_l' + x_h·c_h, which is off x·c by x_h(c_l − c_l') + (x_l − x_l')c_h + x_l·c_l, so by
    <= 2^-10(|x_h||c_l| + |x_l||c_h|) + |x_l||c_l|, over 3d exact products. The tensor cores add
    the n products within γ_n(:data:`ACC_UNIT`) of their magnitudes' sum. The pass scores
    s̃_j = fl(|c_j|² − 2·acc_j) against the exact s_j = |c_j|² − 2·x·c_j: the fp32 |c_j|² is off
    by <= γ_d|c_j|² and the subtraction rounds by <= 2^-24·(|c_j|² + 2|acc|). With
    |c_j| <= cmax every j shares one bound E_r >= |s̃_j − s_j|; an fp32 evaluation s'_j of the
    same score (any summation order, round to nearest) has |s'_j − s_j| <= E'_r = 2γ_d|x||c| +
    the same |c|² terms. The arg-min j' of s' (or of s, the case E' = 0) then satisfies
    s̃_j' <= s'_j' + E_r + E'_r <= s'_i + E_r + E'_r <= s̃_i + W_r for the pass's arg-min i,
    with W_r = 2·(E_r + E'_r) = A·|x_l| + Bx·|x| + C: every j with s̃_j <= min s̃ + W_r is a
    candidate, and both the exact and the fp32 arg-min are among them. The inner-product score
    −x·c has a smaller error (no |c|² term, no factor 2), so the same W covers it.
    """
    if mode not in COUNTING_MODES:
        raise ValueError(f"no candidate width for mode {mode!r} (one of {COUNTING_MODES})")
    g = _gamma(d, 2.0**-24)  # IEEE fp32 sums: |c|², and the fp32 evaluation E'
    r = 2.0**-24 * (1.0 + g)  # one fp32 rounding of a term bounded through γ_d
    cmax, cl_max = cmax.double(), cl_max.double()
    if mode == "tf32x3":
        h = 1.0 + 2.0**-11  # |x_h| <= h·|x| for rounding to nearest
        u1 = (1.0 + TF32_UNIT) ** 2  # |acc| <= u1·|x||c|, generously
        gt = _gamma(3 * d, ACC_UNIT)
        # the pass's dot error: pa·|x_l| + pb·|x|, accumulation included
        pa = TF32_UNIT * h * cmax + cl_max + gt * h * cmax
        pb = TF32_UNIT * h * cl_max + gt * (h * h * cmax + h * cl_max)
    else:
        unit = BF16_UNIT if mode == "bf16" else TF32_UNIT
        u1 = (1.0 + unit) ** 2
        gt = _gamma(d, ACC_UNIT)
        pa = cmax
        pb = (1.0 + unit) * cl_max + gt * u1 * cmax
    a = 2.0 * (2.0 * pa)  # 2·E: twice the dot error in the score
    bx = 2.0 * (2.0 * pb + 2.0 * r * u1 * cmax  # E: dot error, the subtraction's rounding
                + 2.0 * g * cmax + 2.0 * r * cmax)  # E': the fp32 evaluation
    c = 2.0 * 2.0 * (g + r) * cmax * cmax  # 2·(E + E'): fp32 |c_j|² and its subtraction
    return (torch.stack([a, bx, c], dim=-1) * BOUND_SLACK).float()


def round_operand(t: torch.Tensor, mode: str) -> torch.Tensor:
    """The fp32 value of a counting pass's rounded operand t_h: bf16 round-to-nearest
    (``"bf16"``), TF32 truncation (``"tf32"``, the worst case of :data:`TF32_UNIT`) or TF32
    round-to-nearest, ties away (``"tf32x3"``, Triton's ``cvt.rna`` split). t float32."""
    if mode == "bf16":
        return t.bfloat16().float()
    bits = t.contiguous().view(torch.int32)
    if mode == "tf32x3":  # half a TF32 unit added to the magnitude, then truncated
        bits = bits + (1 << 12)
    return (bits & -(1 << 13)).view(torch.float32)


def candidates_ref(x: torch.Tensor, c: torch.Tensor, dot_mode: str = "bf16",
                   chunk: int = 4096, matmul=None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A CPU simulation of a counting pass's rounding and candidate rule, in torch.

    x: [N, D] and c: [K, D] float32; dot_mode one of :data:`COUNTING_MODES`. Operands rounded
    as by :func:`round_operand` (``"tf32x3"``: the three TF32 products of Triton's split, the
    low parts truncated), products accumulated by ``matmul(a [n, D], b [K, D]) -> [n, K]``
    (default ``a @ b.T`` in fp32), scores |c|² − 2·acc, width from :func:`candidate_width`.
    Returns count [N] int64 (candidates: centroids within the width of the best), first [N]
    int64 (the pass's arg-min, always a candidate) and second [N] int64 (the other candidate
    where count == 2, else first). The kernel counts against a running minimum, so its count
    is >= this one.
    """
    mm = matmul or (lambda a, b: a @ b.T)
    xh, ch = round_operand(x, dot_mode), round_operand(c, dot_mode)
    csq = (c * c).sum(dim=1)
    cmax = csq.max().sqrt().reshape(1)
    cl_max = (c - ch).norm(dim=1).max().reshape(1)
    a, bx, c0 = candidate_width(cmax, cl_max, x.shape[1], dot_mode)[0].tolist()
    # |x_l| as the kernel's _residual: the truncation residual for tf32x3 (x_h rounds there)
    x_res = x - (round_operand(x, "tf32") if dot_mode == "tf32x3" else xh)
    cl = round_operand(c - ch, "tf32") if dot_mode == "tf32x3" else None  # as the core reads it
    out = []
    for r0 in range(0, x.shape[0], chunk):
        xr, xhr = x[r0:r0 + chunk], xh[r0:r0 + chunk]
        width = a * x_res[r0:r0 + chunk].norm(dim=1) + bx * xr.norm(dim=1) + c0
        acc = mm(xhr, ch)
        if dot_mode == "tf32x3":
            acc = mm(round_operand(xr - xhr, "tf32"), ch) + mm(xhr, cl) + acc
        score = csq[None, :] - 2.0 * acc
        best, first = score.min(dim=1)
        near = score <= (best + width)[:, None]
        count = near.sum(dim=1)
        cols = torch.arange(c.shape[0]).expand_as(score)
        second = torch.where(count == 2, (near * cols).sum(dim=1) - first, first)
        out.append((count, first, second))
    return tuple(torch.cat(t) for t in zip(*out, strict=True))


# ---------------------------------------------------------------------------------------------
# kernel
# ---------------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, acc, DOT_MODE: tl.constexpr, UPCAST_BF16: tl.constexpr):
    """acc + a @ b in the requested product precision (fp32 accumulate).

    UPCAST_BF16: the interpreter cannot multiply bfloat16 tiles, so under it bf16 operands are
    rounded to bf16 and multiplied in fp32 (the same products: bf16×bf16 is exact in fp32).
    """
    if DOT_MODE == "bf16":
        if UPCAST_BF16:
            a16 = a.to(tl.bfloat16).to(tl.float32)
            return tl.dot(a16, b.to(tl.bfloat16).to(tl.float32), acc, input_precision="ieee")
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    elif UPCAST_BF16 and a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision=DOT_MODE)
    else:  # fp16 / bf16 operands: products are exact in fp32 whatever the mode
        return tl.dot(a, b, acc)


@triton.jit
def _program_rows(rows_ptr, nrows_ptr, N, K, N_LIST, GATHER: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """This program's problem b (int64), its BLOCK_N rows (int64), their mask, and the number
    of centroids to scan: K, or 0 for a program past the end of a gathered row list."""
    pid_n = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    slot = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if GATHER:
        nrows = tl.load(nrows_ptr + b)
        row_ok = slot < nrows
        rows = tl.load(rows_ptr + b * N_LIST + slot, mask=row_ok, other=0).to(tl.int64)
        k_end = tl.where(pid_n * BLOCK_N < nrows, K, 0)  # programs past the list do nothing
    else:
        row_ok = slot < N
        rows = slot
        k_end = K
    return b, rows, row_ok, k_end


@triton.jit
def _fold_tile(acc, pad_b, k0, kk, best, best_i, cand, width, IS_L2: tl.constexpr,
               COUNT_SHIFT: tl.constexpr):
    """Fold the products acc [BLOCK_N, BLOCK_K] of the centroid tile starting at k0 into the
    rows' running best score, its index (int32) and (COUNT_SHIFT > 0) their packed candidates.

    pad_b holds |c|² (L2) or 0 (inner product) per centroid and +inf past K, so one FMA makes
    every score and padded columns never win. Counting: each centroid within ``width`` of the
    running best adds 2^COUNT_SHIFT + its index to ``cand``, so one sum carries the count (the
    high bits) and, where it is at most two, the sum of the candidates' indices (the low
    bits, exact while 2^COUNT_SHIFT > 2·(K − 1); a larger sum only carries into the count,
    which then reads too high). The count restarts when the best drops by more than
    ``width``, and otherwise may keep a few that fell out of reach. An over-count only sends
    more rows to a re-check."""
    cols = k0 + kk
    pad = tl.load(pad_b + cols)
    if IS_L2:  # same form as the reference's addmm: |c|² + (-2)·x·c
        score = pad[None, :] - 2.0 * acc
    else:  # largest inner product = smallest negated one
        score = pad[None, :] - acc
    t_best, t_arg = tl.min(
        score, axis=1, return_indices=True, return_indices_tie_break_left=True
    )
    if COUNT_SHIFT > 0:
        limit = tl.minimum(best, t_best) + width
        # earlier candidates scored >= best: all out of reach when the new limit is below it
        restart = limit < best
        step = cols.to(cand.dtype) + (1 << COUNT_SHIFT)
        cand = tl.where(restart, 0, cand) + tl.sum(
            tl.where(score <= limit[:, None], step[None, :], 0), axis=1)
    take = t_best < best  # strict: an equal score in a later tile keeps the smaller index
    best_i = tl.where(take, k0 + t_arg, best_i)
    best = tl.where(take, t_best, best)
    return best, best_i, cand


@triton.jit
def _residual(xf, DOT_MODE: tl.constexpr):
    """x − (x as the counting pass's product sees it), exact in fp32: bf16 round-to-nearest, or
    TF32 truncation (an upper bound, element by element, of any TF32 rounding's residual)."""
    if DOT_MODE == "tf32" or DOT_MODE == "tf32x3":
        return xf - (xf.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    return xf - xf.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _row_norms(x_rows, row_ok, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               DOT_MODE: tl.constexpr):
    """|x|² and |x − x_h|² of the rows (fp32 [BLOCK_N] each; x_h as :func:`_residual`), D
    streamed in BLOCK_D."""
    dd = tl.arange(0, BLOCK_D)
    x_sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    xl_sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        m = row_ok[:, None] & ((d0 + dd) < D)[None, :]
        xf = tl.load(x_rows + d0 + dd[None, :], mask=m, other=0.0).to(tl.float32)
        xl = _residual(xf, DOT_MODE)
        x_sq += tl.sum(xf * xf, axis=1)
        xl_sq += tl.sum(xl * xl, axis=1)
    return x_sq, xl_sq


@triton.jit
def _assign_kernel(
    x_ptr,  # [B, N, D] float32/float16/bfloat16, contiguous: the rows to assign
    c_ptr,  # [B, KP, D] contiguous: the centroids, zero rows past K (bfloat16 for the bf16
    # counting pass, else x's dtype)
    pad_ptr,  # [B, KP] float32: |c|² (L2) or 0 (inner product), +inf for k >= K
    coef_ptr,  # [B, 3] float32: candidate width coefficients (read only when counting)
    rows_ptr,  # [B, N_LIST] int32: row list per problem (read only when GATHER)
    nrows_ptr,  # [B] int64: number of valid entries in each row list (read only when GATHER)
    dist_ptr,  # [B, N] float32 out: squared L2 distance (>= 0) or the best inner product
    idx_ptr,  # [B, N] int64 out: index of the best centroid (ties: the smallest)
    cand_ptr,  # [B, N] int64 out (counting): candidates·2^32 + the sum of their indices
    N,  # rows per problem
    K,  # centroids per problem
    KP,  # K rounded up to PAD_K: the rows of c_ptr and pad_ptr per problem
    N_LIST,  # row-list stride (GATHER)
    D: tl.constexpr,  # feature dim (specialised: one compile per D)
    IS_L2: tl.constexpr,  # True: smallest squared L2 distance; False: largest inner product
    DOT_MODE: tl.constexpr,  # "ieee" | "tf32" | "tf32x3" | "bf16"
    COUNT_SHIFT: tl.constexpr,  # 0, or count the candidates within the bound (the counting
    # passes: bf16, TF32, tf32x3) at this bit of the per-row packed sum (count_shift(K))
    GATHER: tl.constexpr,  # rows come from rows_ptr (the re-check passes on flagged rows)
    UPCAST_BF16: tl.constexpr,  # interpreter only: multiply bf16 tiles in fp32 (see _dot)
    BLOCK_N: tl.constexpr,  # rows per program
    BLOCK_K: tl.constexpr,  # centroids per streamed tile
    BLOCK_D: tl.constexpr,  # feature chunk; >= D means the x tile is loaded once and kept
):
    b, rows, row_ok, k_end = _program_rows(rows_ptr, nrows_ptr, N, K, N_LIST, GATHER, BLOCK_N)
    x_rows = x_ptr + b * N * D + rows[:, None] * D  # [BLOCK_N, 1] row starts (int64)
    c_base = c_ptr + b * KP * D
    dd = tl.arange(0, BLOCK_D)
    if BLOCK_D >= D:  # the resident x tile, rounded once when the pass is bf16
        x_tile = tl.load(x_rows + dd[None, :], mask=row_ok[:, None] & (dd[None, :] < D), other=0.0)
        xf = x_tile.to(tl.float32)
        xl = _residual(xf, DOT_MODE)
        x_sq = tl.sum(xf * xf, axis=1)
        xl_sq = tl.sum(xl * xl, axis=1)
        if DOT_MODE == "bf16" and not UPCAST_BF16:
            x_tile = x_tile.to(tl.bfloat16)
    else:
        x_sq, xl_sq = _row_norms(x_rows, row_ok, D, BLOCK_N, BLOCK_D, DOT_MODE)
    width = tl.zeros([BLOCK_N], dtype=tl.float32)
    if COUNT_SHIFT > 0:
        coef = coef_ptr + b * 3
        width = (tl.load(coef) * tl.sqrt(xl_sq) + tl.load(coef + 1) * tl.sqrt(x_sq)
                 + tl.load(coef + 2))

    best = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    best_i = tl.zeros([BLOCK_N], dtype=tl.int32)
    cand = tl.zeros([BLOCK_N], dtype=tl.int32 if COUNT_SHIFT < 32 else tl.int64)
    kk = tl.arange(0, BLOCK_K)
    for k0 in range(0, k_end, BLOCK_K):
        c_rows = c_base + (k0 + kk)[:, None].to(tl.int64) * D  # [BLOCK_K, 1]
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        if BLOCK_D >= D:
            c_tile = tl.load(c_rows + dd[None, :], mask=dd[None, :] < D, other=0.0)
            acc = _dot(x_tile, tl.trans(c_tile), acc, DOT_MODE, UPCAST_BF16)
        else:
            for d0 in range(0, D, BLOCK_D):
                d_ok = (d0 + dd) < D
                xt = tl.load(x_rows + d0 + dd[None, :], mask=row_ok[:, None] & d_ok[None, :],
                             other=0.0)
                ct = tl.load(c_rows + d0 + dd[None, :], mask=d_ok[None, :], other=0.0)
                acc = _dot(xt, tl.trans(ct), acc, DOT_MODE, UPCAST_BF16)
        best, best_i, cand = _fold_tile(acc, pad_ptr + b * KP, k0, kk, best, best_i, cand, width,
                                        IS_L2, COUNT_SHIFT)
    out = b * N + rows
    tl.store(dist_ptr + out, tl.maximum(x_sq + best, 0.0) if IS_L2 else -best, mask=row_ok)
    tl.store(idx_ptr + out, best_i.to(tl.int64), mask=row_ok)
    if COUNT_SHIFT > 0:  # stored as count·2^32 + index sum whatever the shift
        low = cand & ((1 << COUNT_SHIFT) - 1)
        tl.store(cand_ptr + out, ((cand >> COUNT_SHIFT).to(tl.int64) << 32) | low.to(tl.int64),
                 mask=row_ok)


@triton.jit
def _rescore_kernel(
    x_ptr,  # [B, N, D] float32: the rows
    c_ptr,  # [B, K, D] float32: the centroids
    pad_ptr,  # [B, KP] float32: |c|² (L2) or 0 (inner product)
    second_ptr,  # [B, N] int64: the other candidate per row (= idx where there is none)
    idx_ptr,  # [B, N] int64 in/out: the main pass's arg-min, then the fp32 choice
    dist_ptr,  # [B, N] float32 out: fp32 distance / inner product to the chosen centroid
    N,  # rows per problem
    K,  # centroids per problem
    KP,  # row stride of pad_ptr
    D: tl.constexpr,  # feature dim
    IS_L2: tl.constexpr,  # squared L2 (True) or inner product (False)
    BLOCK_N: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # feature chunk
):
    """Score every row in fp32 against its (at most) two candidates and keep the better one
    (ties: the smaller index); rows with more candidates are redone by the full fp32 pass."""
    b, rows, row_ok, ci = rows_with_ids(idx_ptr, N, BLOCK_N)
    cj = tl.load(second_ptr + b * N + rows, mask=row_ok, other=0)
    x_rows = x_ptr + b * N * D + rows[:, None] * D
    c_base = c_ptr + b * K * D
    dd = tl.arange(0, BLOCK_D)
    dot_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    dot_j = tl.zeros([BLOCK_N], dtype=tl.float32)
    x_sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        m = row_ok[:, None] & ((d0 + dd) < D)[None, :]
        xv = tl.load(x_rows + d0 + dd[None, :], mask=m, other=0.0)
        cv = tl.load(c_base + ci[:, None] * D + d0 + dd[None, :], mask=m, other=0.0)
        dot_i += tl.sum(xv * cv, axis=1)
        cv = tl.load(c_base + cj[:, None] * D + d0 + dd[None, :], mask=m, other=0.0)
        dot_j += tl.sum(xv * cv, axis=1)
        x_sq += tl.sum(xv * xv, axis=1)
    pad = pad_ptr + b * KP
    scale = 2.0 if IS_L2 else 1.0
    s_i = tl.load(pad + ci, mask=row_ok, other=0.0) - scale * dot_i
    s_j = tl.load(pad + cj, mask=row_ok, other=0.0) - scale * dot_j
    take = (s_j < s_i) | ((s_j == s_i) & (cj < ci))
    best = tl.where(take, s_j, s_i)
    tl.store(idx_ptr + b * N + rows, tl.where(take, cj, ci), mask=row_ok)
    tl.store(dist_ptr + b * N + rows, tl.maximum(x_sq + best, 0.0) if IS_L2 else -best,
             mask=row_ok)


# ---------------------------------------------------------------------------------------------
# autotune configs
# ---------------------------------------------------------------------------------------------


def assign_block_d(D: int) -> int:
    """The "all of D" feature chunk: D padded to a power of two (>= 16, tl.dot's minimum), or
    0 when that exceeds 256 (the x tile would not fit in shared memory beside a centroid tile)."""
    p = max(16, next_pow2(D))
    return p if p <= 256 else 0


def assign_configs() -> list[triton.Config]:
    """Candidate tiles for the assign kernel; pruned per (N, D, K) by _prune_assign_configs.

    BLOCK_D = 0 means "all of D": the x tile is loaded once per program and kept in shared
    memory while centroid tiles stream past. Otherwise D is streamed in BLOCK_D chunks. The
    list keeps only tiles that compiled for sm_90 (Triton 3.8 and 3.6, D = 256, fp32 inputs,
    the default mode's passes and the one-pass TF32 mode) with no stack frame (no spills) and
    <= 227 KB of shared memory (tests/test_triton_backend.py checks this); tiles that spilled
    there (128×32 and 128×128×64 with 8 warps, 256-row tiles with 8 or 16 warps, 128×64 with
    4, 64×32 with 4 in the fp32 pass on gathered rows) are left out. Which one
    wins is the autotuner's measurement on the GPU, cached on disk per (N, D, K, metric, mode,
    candidate counting, gather); ``python benchmarks/bench_gpu.py --estimate`` models each.
    Interpreter: one 32×32 tile (the CPU runs one program at a time).
    """
    if interpreting():
        return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_D": 0}, num_warps=4,
                              num_stages=1)]
    tiles = [  # (BLOCK_N, BLOCK_K, BLOCK_D, warps, stages)
        (128, 64, 0, 8, 1), (128, 64, 0, 8, 2), (64, 64, 0, 4, 2), (64, 32, 0, 8, 3),
        (128, 64, 64, 8, 3), (128, 128, 32, 8, 4), (64, 128, 0, 4, 1), (128, 128, 0, 8, 1),
        (128, 128, 0, 8, 2),
    ]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd}, num_warps=w, num_stages=s)
        for bn, bk, bd, w, s in tiles
    ]


HALF_ONLY_TILES = {(128, 64, 0, 2), (64, 128, 0, 1), (128, 128, 0, 1), (128, 128, 0, 2)}
"""(BLOCK_N, BLOCK_K, BLOCK_D, stages) of the resident tiles kept for 16-bit operands only: at
D = 256 in fp32 they need 192-384 KB of shared memory or spill (sm_90, Triton 3.8). With bf16
operands 128×128 with two stages (235 registers, 192 KB) prefetches the next centroid tile."""


def _prune_assign_configs(configs, named_args, **kwargs):
    """Drop chunked candidates when one chunk covers D, tiles far larger than N or K, the
    :data:`HALF_ONLY_TILES` unless the operands are 16-bit (the bf16 passes or
    half inputs), for the fp32 CUDA-core product every tile but 64×32 (the others spill
    0.4-15 KB per thread on sm_90 at D = 256), and for tf32x3 the resident tiles beyond
    D = 64 (its high and low parts double the tiles: 256-384 KB of shared memory at D = 256;
    its chunked tiles take 144-160 KB)."""
    n, k, d = named_args["N"], named_args["K"], kwargs.get("D", named_args.get("D"))
    full = assign_block_d(d)
    x = named_args.get("x_ptr")
    half = kwargs.get("DOT_MODE") == "bf16" or (x is not None and x.element_size() == 2)
    kept = []
    for c in configs:
        bn, bk, bd = c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.kwargs["BLOCK_D"]
        if kwargs.get("DOT_MODE") == "ieee" and (bn, bk) != (64, 32):
            continue
        if kwargs.get("DOT_MODE") == "tf32x3" and bd == 0 and full > 64:
            continue  # x and c tiles held twice (high and low parts): 256-384 KB at D = 256
        if not half and (bn, bk, bd, c.num_stages) in HALF_ONLY_TILES:
            continue
        if full and bd >= full:
            continue  # a chunk covering D is the resident variant (BLOCK_D = 0) again
        if bk > max(32, next_pow2(k)) or bn > max(32, next_pow2(n)):
            continue
        kept.append(c)
    if not kept:  # tiny problems: a 32×32 tile
        kept = [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_D": 0}, num_warps=4,
                              num_stages=2)]
    return kept


def _resolve_block_d(args) -> int:
    """BLOCK_D = 0 ("all of D") becomes D padded to a power of two, or 64 when D > 256."""
    return args["BLOCK_D"] or assign_block_d(args["D"]) or 64


_assign_tuned = triton.autotune(
    configs=assign_configs(),
    key=["N", "D", "K", "IS_L2", "DOT_MODE", "COUNT_SHIFT", "GATHER"],
    prune_configs_by={"early_config_prune": _prune_assign_configs},
    cache_results=True,
)(triton.heuristics({"BLOCK_D": _resolve_block_d})(_assign_kernel))


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------

PAD_K = 128
"""The centroids (with zero rows) and their score offsets |c|² (with +inf) are padded to a
multiple of the largest BLOCK_K, so no centroid tile load needs a mask."""


def padded_k(k: int) -> int:
    """K rounded up to a multiple of :data:`PAD_K`: the centroid rows the kernel reads."""
    return triton.cdiv(k, PAD_K) * PAD_K


def count_shift(k: int) -> int:
    """The bit of the count in the kernel's packed per-row candidate sum for K centroids: 15
    (an int32 sum) while 2^15 > 2·(K − 1), so two indices fit below it, and the largest sum,
    K·(2^15 + K), stays below 2^31; 32 (an int64 sum) beyond K = 16 384."""
    return 15 if k <= 16384 else 32


def _launch(x, c, k, pad, dist, idx, *, is_l2, mode, coef=None, cand=None, rows=None,
            nrows=None):
    """Run the tuned assign kernel: x [B, N, D]; c [B, KP, D] the centroids padded by
    :func:`_pad_rows`, of which the first k are real; the other arguments as the kernel's."""
    B, N, D = x.shape
    if c.shape[1] != pad.shape[1]:
        raise ValueError(f"the assign kernel reads {pad.shape[1]} centroid rows per problem; "
                         f"c has {c.shape[1]}: pad it with _pad_rows")
    dummy = dist  # any tensor: pointer args the constexpr flags leave unread
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), B)  # noqa: E731
    _assign_tuned[grid](
        x, c, pad, coef if coef is not None else dummy, rows if rows is not None else dummy,
        nrows if nrows is not None else dummy, dist, idx, cand if cand is not None else dummy,
        N, k, pad.shape[1], 0 if rows is None else rows.shape[1],
        D=D, IS_L2=is_l2, DOT_MODE=mode, COUNT_SHIFT=0 if cand is None else count_shift(k),
        GATHER=rows is not None, UPCAST_BF16=interpreting(),
    )


def _pad_rows(c: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """c [B, K, D] as [B, KP, D] contiguous with zero rows past K (KP a multiple of
    :data:`PAD_K`), in ``dtype`` (default: c's); c itself when nothing changes."""
    B, K, D = c.shape
    kp = padded_k(K)
    dtype = dtype or c.dtype
    if kp == K and dtype == c.dtype:
        return c
    out = torch.zeros(B, kp, D, dtype=dtype, device=c.device)
    out[:, :K] = c
    return out


def _counting_pass(x, c_op, cf, cmax, pad, dist, idx, cand, *, is_l2, mode, rows=None,
                   nrows=None) -> None:
    """One pass that scores with ``mode``'s rounded operands ("bf16": c_op the padded bf16
    centroids; "tf32", "tf32x3": the padded fp32 ones) and writes, besides dist and idx, every
    row's packed candidates within that mode's proven width (:func:`candidate_width`) into
    ``cand``; only the rows of the list when ``rows`` is given. cf: [B, K, D] fp32 centroids,
    cmax: [B] their largest norm."""
    cl_max = (cf - round_operand(cf, mode)).norm(dim=2).amax(dim=1)
    coef = candidate_width(cmax, cl_max, cf.shape[2], mode)
    _launch(x, c_op, cf.shape[1], pad, dist, idx, is_l2=is_l2, mode=mode,
            coef=coef.contiguous(), cand=cand, rows=rows, nrows=nrows)


def _score_offsets(cf: torch.Tensor, is_l2: bool) -> torch.Tensor:
    """[B, KP] float32: |c|² (L2) or 0 (inner product) per centroid, +inf up to KP, a multiple
    of :data:`PAD_K`; cf [B, K, D] float32."""
    B, K, _ = cf.shape
    pad = torch.full((B, padded_k(K)), float("inf"), device=cf.device)
    pad[:, :K] = (cf * cf).sum(dim=2) if is_l2 else 0.0
    return pad


def _compact(flag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The flagged rows of each problem as a list, on the device without a host sync: flag
    [B, N] bool → rows [B, N + 1] int32 (flagged row n at slot cumsum(flag)[n] − 1, unflagged
    rows to the spare slot N) and nrows [B] int64."""
    B, N = flag.shape
    pos = torch.cumsum(flag, dim=1, dtype=torch.int32) - 1
    nrows = (pos[:, -1] + 1).to(torch.int64).contiguous()
    slot = torch.where(flag, pos, torch.full_like(pos, N)).to(torch.int64)
    rows = torch.zeros(B, N + 1, dtype=torch.int32, device=flag.device)
    rows.scatter_(1, slot, torch.arange(N, dtype=torch.int32, device=flag.device).expand(B, N))
    return rows, nrows


def counting_passes(x, c_pad, cf, pad, dist, idx, cand, *, is_l2, modes=COUNTING_MODES
                    ) -> list[torch.Tensor]:
    """The default mode's counting passes on float32 x [B, N, D]: the bf16 main pass over every
    row, then each later mode of ``modes`` (a prefix of :data:`COUNTING_MODES`) over the rows
    the pass before left with more than two candidates. c_pad: the centroids padded by
    :func:`_pad_rows`; cf: [B, K, D] the real ones in fp32; pad: from :func:`_score_offsets`.
    Writes dist, idx and the packed candidates ``cand`` of every row; returns, per later pass,
    [B] int64 the number of rows it took (on the device, no host sync)."""
    cmax = cf.norm(dim=2).amax(dim=1)
    _counting_pass(x, c_pad.to(torch.bfloat16), cf, cmax, pad, dist, idx, cand, is_l2=is_l2,
                   mode="bf16")
    # the TF32 pass's bound is about 4x narrower than bf16's, tf32x3's about 4x narrower again
    taken = []
    for mode in modes[1:]:
        rows, nrows = _compact((cand >> 32) > 2)
        _counting_pass(x, c_pad, cf, cmax, pad, dist, idx, cand, is_l2=is_l2, mode=mode,
                       rows=rows, nrows=nrows)
        taken.append(nrows)
    return taken


def assign_triton(
    x: torch.Tensor, centroids: torch.Tensor, metric: str, precision: str = "default"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused assign on the current torch stream.

    x: [B, N, D] and centroids: [B, K, D], contiguous, same dtype (float32/float16/bfloat16)
    and device, as :func:`fastdc.ops.assign` validated them; ``precision`` one of
    :data:`PRECISIONS` (``_reasons`` declines the others). Returns dist [B, N] float32 (squared
    L2 clamped at 0, or the best inner product) and idx [B, N] int64 (ties: the smallest index).
    Extra memory: |c|² padded, the centroids padded to a multiple of :data:`PAD_K` rows (no
    copy when K is one), a bf16 copy of them and, in the default mode, about 30 bytes per row
    (packed candidates, the second candidate, the re-checks' row lists).
    """
    B, N, D = x.shape
    K = centroids.shape[1]
    dist = torch.empty(B, N, dtype=torch.float32, device=x.device)
    idx = torch.empty(B, N, dtype=torch.int64, device=x.device)
    if N == 0:
        return dist, idx
    is_l2 = metric == "l2"
    cf = centroids.float()
    pad = _score_offsets(cf, is_l2)
    if precision != "default" or x.dtype != torch.float32:
        mode = {"default": "ieee", "fp32": "ieee"}.get(precision, precision)
        c_op = _pad_rows(centroids, torch.bfloat16 if mode == "bf16" else None)
        _launch(x, c_op, K, pad, dist, idx, is_l2=is_l2, mode=mode)
        return dist, idx

    # default: the counting passes leave every row's candidates in cand ...
    c_pad = _pad_rows(centroids)
    cand = torch.empty(B, N, dtype=torch.int64, device=x.device)
    counting_passes(x, c_pad, cf, pad, dist, idx, cand, is_l2=is_l2)
    # ... every row is re-scored in fp32 on its first and (if any) second candidate ...
    count = cand >> 32
    second = torch.where(count == 2, (cand & 0xFFFFFFFF) - idx, idx)
    _rescore_kernel[(triton.cdiv(N, 32), B)](
        x, centroids, pad, second, idx, dist, N, K, pad.shape[1],
        # 32 rows × up to 64 features: two gathered centroid rows per x row, memory bound
        D=D, IS_L2=is_l2, BLOCK_N=32, BLOCK_D=min(64, max(16, next_pow2(D))),
    )
    # ... and rows with more than two candidates go through the full fp32 pass
    rows, nrows = _compact(count > 2)
    _launch(x, c_pad, K, pad, dist, idx, is_l2=is_l2, mode="ieee", rows=rows, nrows=nrows)
    return dist, idx


def _reasons(x, centroids, metric, precision="default", **_):
    why = device_reasons(x=x, centroids=centroids)
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        why.append(f"triton assign takes float32/float16/bfloat16, not {x.dtype}")
    if precision not in PRECISIONS:
        why.append(f"triton assign has no precision {precision!r} (one of {PRECISIONS})")
    return why


register("assign", "triton", _reasons)(assign_triton)


# ---------------------------------------------------------------------------------------------
# accumulation probe: how the tensor cores add, against ACC_UNIT
# ---------------------------------------------------------------------------------------------


@triton.jit
def _dot_probe_kernel(a_ptr, b_ptr, out_ptr, M: tl.constexpr, D: tl.constexpr,
                      DOT_MODE: tl.constexpr, UPCAST_BF16: tl.constexpr):
    """out [M, M] float32 = a [M, D] @ b [M, D]ᵀ (float32, contiguous) in one ``tl.dot`` of
    DOT_MODE ("bf16" or "tf32"), as the counting passes multiply."""
    r = tl.arange(0, M)
    dd = tl.arange(0, D)
    a = tl.load(a_ptr + r[:, None] * D + dd[None, :])
    b = tl.load(b_ptr + r[:, None] * D + dd[None, :])
    acc = _dot(a, tl.trans(b), tl.zeros([M, M], dtype=tl.float32), DOT_MODE, UPCAST_BF16)
    tl.store(out_ptr + r[:, None] * M + r[None, :], acc)


def probe_operands(m: int = 64, d: int = 256, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """a, b [m, d] float32, exact in bf16 (so in TF32: every product is exact): random values
    spread over ±8 binades, and two rows against b's first (all ones) that a truncating adder
    gets wrong: a[0] is a unit term followed by d − 1 terms just below its last fp32 bit (an
    adder that cuts at the largest term's last bit drops them all), a[1] the same terms with
    the unit last (no adder drops them)."""
    g = torch.Generator().manual_seed(seed)

    def spread():
        return torch.randn(m, d, generator=g) * 2.0 ** torch.randint(-8, 9, (m, d), generator=g)

    a, b = spread(), spread()
    tiny = 2.0**-23 * (1 - 2.0**-7)  # 8 significand bits: bf16-exact
    a[0], a[1] = tiny, tiny
    a[0, 0], a[1, -1] = 1.0, 1.0
    b[0] = 1.0
    return a.bfloat16().float(), b.bfloat16().float()


def accumulation_error(mode: str, device: torch.device | str, m: int = 64, d: int = 256
                       ) -> torch.Tensor:
    """[m, m] float64: |one tl.dot − exact| / (d·2^-24·Σ_k |a_ik·b_jk|) on
    :func:`probe_operands`, i.e. each dot product's accumulation error in units of IEEE fp32's
    γ_d. :data:`ACC_UNIT` allows the tensor cores 4 (IEEE addition in any order stays <= 1)."""
    a, b = probe_operands(m, d)
    out = torch.empty(m, m, device=device)
    _dot_probe_kernel[(1,)](a.to(device), b.to(device), out, M=m, D=d, DOT_MODE=mode,
                            UPCAST_BF16=interpreting())
    exact = a.double() @ b.double().T
    magnitude = a.double().abs() @ b.double().abs().T
    return (out.cpu().double() - exact).abs() / (d * 2.0**-24 * magnitude)
