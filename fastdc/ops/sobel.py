"""sobel: DeepCluster's fixed input filter — normalise, grey = mean of RGB, then the two 3×3
Sobel filters (zero padding 1) — from a [B, 3, H, W] batch to a [B, 2, H, W] batch.

Reference: exactly DeepCluster's two convolutions (a 1×1 conv with weights 1/3, then a 3×3
conv with Gx = [[1,0,-1],[2,0,-2],[1,0,-1]] and Gy = [[1,2,1],[0,0,0],[-1,-2,-1]]), in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastdc.ops.registry import register, select

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

GX = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
GY = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))


def sobel_weights(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """DeepCluster's two conv weights: grey [1, 3, 1, 1] (1/3 each) and sobel [2, 1, 3, 3]."""
    grey = torch.full((1, 3, 1, 1), 1.0 / 3.0, device=device)
    filt = torch.tensor([GX, GY], device=device).unsqueeze(1)
    return grey, filt


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """float32 [B, 3, H, W]: uint8 scaled to [0, 1], then (x - mean) / std when mean is given."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    if mean is not None:
        m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        x = (x - m) / s
    return x


@register("sobel", "torch")
def sobel_ref(images: torch.Tensor, mean, std, out_dtype: torch.dtype) -> torch.Tensor:
    """Reference: images [B, 3, H, W] uint8 or float -> [B, 2, H, W] in out_dtype."""
    grey_w, sobel_w = sobel_weights(images.device)
    x = normalise(images, mean, std)
    out = F.conv2d(F.conv2d(x, grey_w), sobel_w, padding=1)
    return out.to(out_dtype)


def sobel(
    images: torch.Tensor,
    *,
    mean: tuple[float, float, float] | None = IMAGENET_MEAN,
    std: tuple[float, float, float] | None = IMAGENET_STD,
    out_dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> torch.Tensor:
    """Fused Sobel front end: [B, 3, H, W] uint8 (0..255) or float -> [B, 2, H, W].

    uint8 input is scaled to [0, 1] first; then, if ``mean``/``std`` are given, each channel is
    normalised as (x - mean) / std (pass ``mean=None`` for input that is already normalised).
    out_dtype: float32, float16 or bfloat16. Differentiable: while grad mode is on, images that
    require grad run on the ``torch`` reference (the fast backends' reasons decline them).
    Raises ValueError/TypeError on a wrong shape or dtype.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W] (RGB, NCHW), got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise TypeError(f"images must be uint8 or floating, got {images.dtype}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if std is not None and any(float(s) == 0 for s in std):
        raise ValueError(f"std must be non-zero, got {std}")
    images = images.contiguous()
    impl = select("sobel", backend, images=images, mean=mean, std=std, out_dtype=out_dtype)
    return impl.fn(images=images, mean=mean, std=std, out_dtype=out_dtype)


class Sobel(nn.Module):
    """The Sobel filter as a model's first layer: [B, 3, H, W] -> [B, 2, H, W].

    By default it expects input that the data pipeline already normalised (as DeepCluster
    does); pass ``mean``/``std`` to normalise inside the fused kernel instead. Fixed weights:
    no parameters. Output dtype follows a floating input (float32 for uint8 input).
    """

    def __init__(self, mean=None, std=None, backend: str | None = None):
        super().__init__()
        self.mean, self.std, self.backend = mean, std, backend

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = images.dtype if images.dtype in OUT_DTYPES else torch.float32
        if torch.is_grad_enabled() and images.requires_grad:
            return sobel_ref(images, self.mean, self.std, dtype)
        return sobel(images, mean=self.mean, std=self.std, out_dtype=dtype, backend=self.backend)
