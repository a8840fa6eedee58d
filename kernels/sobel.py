"""Triton sobel: DeepCluster's input filter in one pass over the image batch.

Per output tile: read the 3×3 neighbourhood of every pixel from the three input channels
(uint8 or float), scale uint8 to [0, 1], normalise (x - mean) / std, grey = the 1×1 conv with
weights 1/3, then Gx and Gy with zero padding (0 in grey space, as conv2d pads) and one store
per output channel in float32/float16/bfloat16. Matches
:func:`fastdc.ops.sobel.sobel_ref` to fp32 rounding (same operations, summation order of the
3×3 taps aside).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdc.ops.checks import grad_reasons
from fastdc.ops.registry import register
from fastdc.ops.sobel import sobel_ref  # noqa: F401  (the ground truth)

from ._common import device_reasons

# ---------------------------------------------------------------------------------------------
# kernel
# ---------------------------------------------------------------------------------------------


@triton.jit
def _grey(img, off, ok, m0, m1, m2, s0, s1, s2, HW, IS_U8: tl.constexpr, NORM: tl.constexpr):
    """Normalised grey value at flat pixel offsets ``off`` of one image; 0 where ~ok."""
    v0 = tl.load(img + off, mask=ok, other=0).to(tl.float32)
    v1 = tl.load(img + HW + off, mask=ok, other=0).to(tl.float32)
    v2 = tl.load(img + 2 * HW + off, mask=ok, other=0).to(tl.float32)
    if IS_U8:  # x / 255, correctly rounded like torch's division
        v0 = tl.div_rn(v0, 255.0)
        v1 = tl.div_rn(v1, 255.0)
        v2 = tl.div_rn(v2, 255.0)
    if NORM:
        v0 = tl.div_rn(v0 - m0, s0)
        v1 = tl.div_rn(v1 - m1, s1)
        v2 = tl.div_rn(v2 - m2, s2)
    third = 0.3333333432674408  # float32(1/3): the 1×1 conv's weight
    g = v0 * third + v1 * third + v2 * third
    return tl.where(ok, g, 0.0)


@triton.jit
def _sobel_kernel(
    img_ptr,  # [B, 3, H, W] uint8 or float, contiguous: the images
    out_ptr,  # [B, 2, H, W] float32/float16/bfloat16 out: Gx then Gy
    H,  # image height
    W,  # image width
    m0, m1, m2,  # float32 per-channel mean (read when NORM)
    s0, s1, s2,  # float32 per-channel std (read when NORM)
    IS_U8: tl.constexpr,  # input is uint8 in 0..255 (scaled by 1/255 first)
    NORM: tl.constexpr,  # apply (x - mean) / std
    BLOCK_H: tl.constexpr,  # output rows per program
    BLOCK_W: tl.constexpr,  # output columns per program
):
    pid_t = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    tiles_w = tl.cdiv(W, BLOCK_W)
    ty = pid_t // tiles_w
    tx = pid_t % tiles_w
    ys = ty * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]  # [BLOCK_H, 1]
    xs = tx * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]  # [1, BLOCK_W]
    HW = tl.cast(H, tl.int64) * W  # int64: B·3·H·W may pass 2^31
    img = img_ptr + b * 3 * HW
    gx = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    gy = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    # conv2d is a correlation: out[y, x] = sum_{a,b} G[a][b] * grey[y + a - 1, x + b - 1]
    # Gx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]], Gy = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]
    for a in tl.static_range(3):
        yy = ys + (a - 1)
        y_ok = (yy >= 0) & (yy < H)
        for c in tl.static_range(3):
            # Gx[a][c] = (1 - c)·(2 on the middle row, else 1); Gy[a][c] likewise transposed
            wx = (1 - c) * (2 - (a - 1) * (a - 1))
            wy = (1 - a) * (2 - (c - 1) * (c - 1))
            if wx * wx + wy * wy != 0:  # skip the centre tap (0 in both filters)
                xx = xs + (c - 1)
                ok = y_ok & (xx >= 0) & (xx < W)
                g = _grey(img, yy * W + xx, ok, m0, m1, m2, s0, s1, s2, HW, IS_U8, NORM)
                if wx != 0:
                    gx += g * wx
                if wy != 0:
                    gy += g * wy
    out_ok = (ys < H) & (xs < W)
    out = out_ptr + b * 2 * HW + ys * W + xs
    tl.store(out, gx.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=out_ok)
    tl.store(out + HW, gy.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=out_ok)


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------


def sobel_config(H: int, W: int) -> dict:
    """Tile keyed on the image size: 16 rows × 64 columns (64 contiguous pixels per row read
    and written: full 128-byte lines for fp16 out, 256 for fp32; the 8 neighbour re-reads hit
    L1). 4 warps. Not yet measured on a GPU."""
    return {"BLOCK_H": 16, "BLOCK_W": 64 if W > 32 else 32, "num_warps": 4}


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------


def sobel_triton(images: torch.Tensor, mean, std, out_dtype: torch.dtype) -> torch.Tensor:
    """Fused Sobel on the current torch stream.

    images: [B, 3, H, W] uint8 or float, contiguous; mean/std: 3 floats each or None;
    out_dtype: float32/float16/bfloat16 (as :func:`fastdc.ops.sobel` validated them).
    Returns [B, 2, H, W] in out_dtype.
    """
    if images.dtype == torch.float64:  # the reference rounds to float32 first: so do we
        images = images.float()
    B, _, H, W = images.shape
    out = torch.empty(B, 2, H, W, dtype=out_dtype, device=images.device)
    if out.numel() == 0:
        return out
    norm = mean is not None
    m = [float(v) for v in mean] if norm else [0.0, 0.0, 0.0]
    s = [float(v) for v in std] if norm else [1.0, 1.0, 1.0]
    cfg = sobel_config(H, W)
    grid = (triton.cdiv(H, cfg["BLOCK_H"]) * triton.cdiv(W, cfg["BLOCK_W"]), B)
    _sobel_kernel[grid](
        images, out, H, W, *m, *s,
        IS_U8=images.dtype == torch.uint8, NORM=norm,
        BLOCK_H=cfg["BLOCK_H"], BLOCK_W=cfg["BLOCK_W"], num_warps=cfg["num_warps"],
    )
    return out


def _reasons(images, mean=None, std=None, out_dtype=torch.float32, **_):
    return device_reasons(images=images) + grad_reasons(images=images)


register("sobel", "triton", _reasons)(sobel_triton)
