"""What conv filters respond to, as the reference's ``visu/`` shows it (DeepCluster, Caron et al.
2018, figures 4-6):

- :func:`filter_images` — for each chosen filter of a conv layer, an input that maximises it by
  gradient ascent with the reference's regularisation (``visu/gradient_ascent.py``): the loss is
  the cross-entropy of the layer's spatially averaged channels with the filter as the target,
  plus ``wd``·‖x‖²; each step moves the image by ``lr`` along the unit-norm gradient, and every
  ``blur_every`` steps the image is blurred with a Gaussian of ``sigma`` pixels. A filter that
  is dead after its ReLU is followed through its conv output instead.
- :func:`top_images` — for each chosen filter, the images of a data set whose activation
  (maximum over positions of the ReLU output) is largest (``visu/activ-retrieval.py``).
- :func:`save_grid` — tiles as one PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastdc.deepcluster.data import Source
from fastdc.deepcluster.models import DeepClusterNet, GreySobel, build_model, min_input_size
from fastdc.deepcluster.weights import load_into, read_weights


def load_net(path: str | os.PathLike) -> DeepClusterNet:
    """The net in a checkpoint or weight file (any layout :func:`read_weights` reads), in eval
    mode with frozen parameters. Raises CheckpointError for an unreadable or unknown file."""
    weights = read_weights(path)
    model = build_model(weights.arch, weights.head or 1, weights.in_channels, weights.sobel)
    load_into(model, weights, head=weights.head is not None, where=str(path))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def input_channels(model: DeepClusterNet) -> int:
    """The channels of the images ``model`` reads (before its Sobel front, if any)."""
    if model.sobel is not None:
        return 1 if isinstance(model.sobel, GreySobel) else 3
    return int(model.body[0].in_channels)


def check_filters(model: DeepClusterNet, conv: int, filters: Sequence[int]) -> int:
    """The number of filters of conv layer ``conv``; raises ValueError (with the valid ranges)
    for a layer or filter out of range."""
    side = min_input_size(model.arch)
    x = torch.zeros(1, input_channels(model), side, side,
                    device=next(model.parameters()).device)
    n = int(model.conv_output(x, conv).shape[1])
    bad = [f for f in filters if not 0 <= f < n]
    if bad:
        raise ValueError(f"filter(s) {bad} out of range: conv{conv} of {model.arch} has filters "
                         f"0 to {n - 1}")
    return n


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each channel of float [B, C, H, W] with a Gaussian of ``sigma`` pixels (kernel
    radius ceil(4σ), reflected borders, as scipy's gaussian_filter)."""
    radius = max(1, math.ceil(4 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


def _ascent_loss(model: DeepClusterNet, x: torch.Tensor, conv: int, targets: torch.Tensor,
                 wd: float) -> torch.Tensor:
    """The loss each image x[i] descends: CE(mean activation, filter i) + wd·‖x[i]‖², summed.
    A filter silent after its ReLU is scored on the conv output before the ReLU."""
    after = model.conv_output(x, conv)
    scores = after.mean((2, 3))
    dead = scores[torch.arange(len(targets)), targets] == 0
    if bool(dead.any()):
        body = model.body
        relus = [i for i, m in enumerate(body) if isinstance(m, torch.nn.ReLU)]
        conv_at = max(i for i in range(relus[conv - 1]) if isinstance(body[i],
                                                                      torch.nn.Conv2d))
        front = model.sobel(x) if model.sobel is not None else x
        before = body[:conv_at + 1](front).mean((2, 3))
        scores = torch.where(dead[:, None], before, scores)
    ce = F.cross_entropy(scores, targets, reduction="sum")
    return ce + wd * (x * x).sum()


def filter_images(model: DeepClusterNet, conv: int, filters: Sequence[int], side: int, *,
                  iterations: int = 1000, lr: float = 3.0, wd: float = 1e-5, sigma: float = 0.3,
                  blur_every: int = 5, seed: int = 0,
                  on_step: Callable[[], object] | None = None) -> np.ndarray:
    """Inputs that maximise ``filters`` of conv layer ``conv`` (all filters in one batch).

    Starts from N(0, (20/255)²) noise of side ``side`` pixels (normalised units as the net
    reads them). Returns uint8 [F, side, side, C] images, each centred and scaled to std 0.1
    around mid-grey as the reference shows them. ``on_step`` is called after each iteration.
    Raises ValueError for a layer or filter out of range.
    """
    check_filters(model, conv, filters)
    channels = input_channels(model)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(len(filters), channels, side, side, generator=gen) * 20 / 255).to(device)
    targets = torch.as_tensor(list(filters), device=device)
    for it in range(iterations):
        x.requires_grad_(True)
        with torch.enable_grad():
            grad, = torch.autograd.grad(_ascent_loss(model, x, conv, targets, wd), x)
        norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-8
        x = (x.detach() - lr * grad / norm)
        if it % blur_every == 0:
            x = gaussian_blur(x, sigma)
        if on_step is not None:
            on_step()
    return _deprocess(x.detach().cpu())


def _deprocess(x: torch.Tensor) -> np.ndarray:
    """float [B, C, H, W] -> uint8 [B, H, W, C]: each image centred, std 0.1, around 0.5."""
    x = x - x.mean((1, 2, 3), keepdim=True)
    x = x / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-5) * 0.1 + 0.5
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def top_images(model: DeepClusterNet, source: Source, conv: int, filters: Sequence[int],
               count: int, device: torch.device, batch_size: int = 128, workers: int = 0,
               on_batch: Callable[[], object] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each filter, the ``count`` images of ``source`` that activate it most.

    Activation: the maximum over positions of the filter's ReLU output (centre crops).
    Returns (index int64 [F, count] dataset positions, best first; activation float32
    [F, count]); unreadable images are never chosen. Raises ValueError for a layer or filter
    out of range, or a data set with fewer than ``count`` readable images.
    """
    check_filters(model, conv, filters)
    chosen = torch.as_tensor(list(filters))
    best_v = torch.full((len(filters), 0), -math.inf)
    best_i = torch.zeros((len(filters), 0), dtype=torch.int64)
    for batch in source.eval_batches(batch_size, device, workers):
        act = model.conv_output(batch.images, conv).amax((2, 3))[:, chosen.to(device)].cpu()
        act[~batch.ok] = -math.inf
        v = torch.cat([best_v, act.T], 1)
        i = torch.cat([best_i, batch.index[None].expand(len(filters), -1)], 1)
        top = v.topk(min(count, v.shape[1]), dim=1)
        best_v, best_i = top.values, i.gather(1, top.indices)
        if on_batch is not None:
            on_batch()
    if best_v.shape[1] < count or bool(torch.isinf(best_v).any()):
        raise ValueError(f"{source.name} has fewer than {count} readable images; ask for fewer "
                         "with --count")
    return best_i.numpy(), best_v.numpy()


def save_grid(tiles: np.ndarray, path: str | os.PathLike, min_side: int = 64, pad: int = 2
              ) -> Path:
    """Write uint8 [R, C, H, W, ch] tiles (ch 1 or 3) as one PNG grid of R rows and C columns,
    each tile enlarged by an integer factor to at least ``min_side`` pixels (nearest)."""
    from PIL import Image

    rows, cols, h, w, ch = tiles.shape
    zoom = max(1, math.ceil(min_side / max(h, w)))
    tiles = tiles.repeat(zoom, axis=2).repeat(zoom, axis=3)
    h, w = h * zoom, w * zoom
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, ch), 255, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y:y + h, x:x + w] = tiles[r, c]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if ch == 1 else grid).save(path)
    return path
