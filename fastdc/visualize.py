"""``python -m fastdc.visualize {filters,top-images} --checkpoint CKPT --conv N``: what the conv
filters of a trained net respond to, as PNG grids (the reference's ``visu/``).

- ``filters``: for each chosen filter of conv layer N, an image that maximises it, found by
  gradient ascent from noise with the reference's regularisation (unit-norm gradient steps of
  ``--lr``, weight decay ``--wd`` on the image, a Gaussian blur of ``--sigma`` pixels every
  ``--blur-every`` steps, ``--iterations`` steps). One tile per filter, in rows of 8.
- ``top-images``: for each chosen filter, the ``--count`` images of ``--data DIR`` (or the
  built-in data set) that activate it most (maximum over positions). One row per filter, best
  image first.

The checkpoint is a fastdc.train checkpoint, a fastdc weight file or a reference DeepCluster
checkpoint. Filters are numbered from 0; default: the first 16 of the layer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import torch

from fastdc.deepcluster import (
    CheckpointError,
    DataError,
    check_filters,
    filter_images,
    load_net,
    load_source,
    progress_bar,
    read_weights,
    save_grid,
    top_images,
)

ROW = 8


def _filters(text: str | None, available: int) -> list[int]:
    """``--filters`` "0,3,7" or "0-15" -> [ints]; default: the first 16 (or all)."""
    if not text:
        return list(range(min(16, available)))
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise ValueError(f"--filters expects numbers or ranges like 0,3,8-11; got "
                             f"{text!r}") from None
    return out


def _device(name: str) -> torch.device:
    return torch.device(name if name != "auto" else
                        ("cuda" if torch.cuda.is_available() else "cpu"))


def run_filters(args: argparse.Namespace) -> str:
    """Gradient ascent for the chosen filters; returns the PNG's path."""
    model = load_net(args.checkpoint).to(_device(args.device))
    n = check_filters(model, args.conv, [])
    filters = _filters(args.filters, n)
    cfg = read_weights(args.checkpoint).config
    # A folder run's images are --image-size pixels; the built-in MNIST digits are 28.
    side = args.size or (cfg.get("image_size", 224) if cfg.get("data") else 28)
    bar = progress_bar("ascent", args.iterations, enabled=not args.quiet)
    try:
        imgs = filter_images(model, args.conv, filters, side, iterations=args.iterations,
                             lr=args.lr, wd=args.wd, sigma=args.sigma,
                             blur_every=args.blur_every, seed=args.seed, on_step=bar.update)
    finally:
        bar.close()
    rows = -(-len(filters) // ROW)
    cols = min(ROW, len(filters))
    tiles = np.full((rows * cols, *imgs.shape[1:]), 255, dtype=np.uint8)
    tiles[:len(imgs)] = imgs
    out = args.out or f"filters_conv{args.conv}.png"
    save_grid(tiles.reshape(rows, cols, *imgs.shape[1:]), out)
    return str(out)


def run_top_images(args: argparse.Namespace) -> str:
    """Top images of the chosen filters; returns the PNG's path."""
    device = _device(args.device)
    weights = read_weights(args.checkpoint)
    model = load_net(args.checkpoint).to(device)
    filters = _filters(args.filters, check_filters(model, args.conv, []))
    cfg = weights.config
    source = load_source(args.data, None if args.data else cfg.get("dataset"),
                         subset=args.subset, seed=cfg.get("seed", 0),
                         image_size=cfg.get("image_size", 224), grey=cfg.get("grey", False))
    if source.in_channels != weights.in_channels:
        raise CheckpointError(f"the checkpoint expects {weights.in_channels}-channel images, "
                              f"the data has {source.in_channels}")
    bar = progress_bar("images", -(-len(source) // args.batch_size), enabled=not args.quiet)
    try:
        index, _ = top_images(model, source, args.conv, filters, args.count, device,
                              args.batch_size, args.workers, on_batch=bar.update)
    finally:
        bar.close()
    thumbs = source.thumbnails(index.reshape(-1))
    out = args.out or f"top_images_conv{args.conv}.png"
    save_grid(thumbs.reshape(len(filters), args.count, *thumbs.shape[1:]), out)
    return str(out)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m fastdc.visualize`` argument parser (sub-commands filters, top-images)."""
    p = argparse.ArgumentParser(prog="python -m fastdc.visualize",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--checkpoint", required=True, help="checkpoint or weight file")
    common.add_argument("--conv", type=int, default=1, metavar="N",
                        help="conv layer (1-based, default 1)")
    common.add_argument("--filters", help="filters, e.g. 0,3,8-11 (default: the first 16)")
    common.add_argument("--out", help="the PNG to write (default: <command>_convN.png)")
    common.add_argument("--device", default="auto")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    f = sub.add_parser("filters", parents=[common],
                       help="images that maximise each filter (gradient ascent)")
    f.add_argument("--iterations", type=int, default=1000, help="ascent steps (default 1000)")
    f.add_argument("--lr", type=float, default=3.0, help="step length (default 3)")
    f.add_argument("--wd", type=float, default=1e-5, help="image weight decay (default 1e-5)")
    f.add_argument("--sigma", type=float, default=0.3, help="blur sigma, pixels (default 0.3)")
    f.add_argument("--blur-every", type=int, default=5, help="steps between blurs (default 5)")
    f.add_argument("--size", type=int, help="image side (default: the run's image size)")
    f.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("top-images", parents=[common],
                       help="the images of a folder that activate each filter most")
    t.add_argument("--data", help="ImageFolder (default: the run's built-in data set)")
    t.add_argument("--subset", type=int, metavar="N",
                   help="only N images, drawn across the classes")
    t.add_argument("--count", type=int, default=9, help="images per filter (default 9)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--workers", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    limit = ("--iterations", args.iterations) if args.command == "filters" else (
        "--count", args.count)
    try:
        if limit[1] < 1:
            raise ValueError(f"{limit[0]} must be >= 1, got {limit[1]}")
        path = run_filters(args) if args.command == "filters" else run_top_images(args)
    except (DataError, CheckpointError, ValueError) as err:
        return _fail(err)
    print(f"wrote {path}")
    return 0


def _fail(err: Exception) -> int:
    """Print ``err`` as one line on stderr; returns the exit status for bad input (2)."""
    print(f"error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
