"""The trainer's configuration: command-line flags, their data-dependent defaults, what a
resumed run may change, and the device choice (``python -m fastdc.train``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fastdc.deepcluster.data import Source, TensorSource
from fastdc.deepcluster.models import ARCHS

METHODS = ("deepcluster", "deepercluster")

# Defaults that depend on the data: the built-in MNIST subset vs an ImageFolder (DeepCluster's
# ImageNet settings). The MNIST values were chosen by runs on a 2-core CPU.
MNIST_DEFAULTS = {"arch": "small", "k": 100, "epochs": 12, "pca_dim": 32, "batch_size": 128,
                  "lr": 0.1}
FOLDER_DEFAULTS = {"arch": "alexnet", "k": 10_000, "epochs": 200, "pca_dim": 256,
                   "batch_size": 256, "lr": 0.05}
# DeeperCluster: --k is the number of sub-classes per super-class. MNIST: 4 × 25 = 100 targets
# (DeepCluster's k there); folders: 4 × 2 500 = DeepCluster's 10 000.
DEEPER_MNIST_DEFAULTS = {"super_classes": 4, "k": 25}
DEEPER_FOLDER_DEFAULTS = {"super_classes": 4, "k": 2_500}


class UsageError(ValueError):
    """Settings that cannot work together (k larger than the data, --resume without --out...)."""


@dataclass
class Config:
    """Every setting of a run (saved in the checkpoint and in summary.json)."""

    data: str | None = None
    dataset: str | None = None
    subset: int | None = None
    arch: str | None = None
    sobel: bool = False
    k: int | None = None
    pca_dim: int | None = None
    kmeans_iters: int = 20
    reassign: float = 1.0
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    wd: float = 1e-5
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    amp: bool = False
    out: str | None = None
    resume: bool = False
    image_size: int = 224
    crop_scale: float | None = None
    flip: bool | None = None
    grey: bool = False
    final_eval: bool = True
    plots: bool = True
    progress: bool | None = None
    in_channels: int = 0  # filled in from the data
    method: str = "deepcluster"
    super_classes: int | None = None  # deepercluster only
    rotations: bool = True  # deepercluster only
    reassign_every: int = 1
    sync_bn: bool = False
    feature_dtype: str = "float32"  # float16: features kept in fp16 on the host, streamed
    feature_cache: str | None = None  # a directory: features in an on-disk memmap, streamed
    kmeans_chunk: int = 65536  # rows per chunk of the streamed PCA / k-means
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def streamed_features(self) -> bool:
        """--feature-dtype float16 or --feature-cache: features on the host, streamed."""
        return self.feature_dtype != "float32" or self.feature_cache is not None

    @property
    def crop_range(self) -> tuple[float, float] | None:
        """The random-resized-crop area range (--crop-scale, 1), None for the data's default.
        Raises UsageError outside (0, 1]."""
        if self.crop_scale is None:
            return None
        if not 0 < self.crop_scale <= 1:
            raise UsageError(f"--crop-scale must be in (0, 1], got {self.crop_scale}")
        return self.crop_scale, 1.0


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m fastdc.train`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m fastdc.train",
        description="DeepCluster: alternate k-means on CNN features and training on the cluster "
                    "ids. No arguments: the built-in MNIST subset on the CPU (~2 minutes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for add_flags in (_data_flags, _clustering_flags, _training_flags, _output_flags):
        add_flags(p)
    return p


def _data_flags(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="DIR", help="ImageFolder root (class sub-folders, or "
                   "images directly inside: no labels then)")
    d.add_argument("--dataset", metavar="NAME", help="built-in data set: mnist (default when "
                   "--data is not given)")
    d.add_argument("--subset", type=int, metavar="N", help="use only N images")
    d.add_argument("--image-size", type=int, default=224, help="crop size for --data")
    d.add_argument("--grey", action="store_true", help="read --data images as 1-channel grey")
    d.add_argument("--crop-scale", type=float, metavar="MIN", help="random-resized-crop area "
                   "range [MIN, 1] (default 0.08 for folders, 0.5 for MNIST)")
    d.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: on for folders, off for MNIST)")
    d.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def _clustering_flags(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model and clustering")
    m.add_argument("--method", choices=METHODS, default="deepcluster",
                   help="deepercluster: rotation × super-class and sub-class targets")
    m.add_argument("--super-classes", type=int, metavar="S",
                   help="deepercluster: super-classes (default 4); --k is then the number "
                        "of sub-classes per super-class (default 25 for MNIST, 2500)")
    m.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=True,
                   help="deepercluster: rotate inputs by 0/90/180/270 degrees")
    m.add_argument("--reassign-every", type=int, default=1, metavar="E",
                   help="epochs between re-clusterings")
    m.add_argument("--arch", choices=ARCHS, help="default: small for MNIST, alexnet for --data")
    m.add_argument("--sobel", action="store_true", help="fixed Sobel filter in front")
    m.add_argument("--k", type=int, help="clusters (default 100 for MNIST, 10000 for --data)")
    m.add_argument("--pca-dim", type=int, help="PCA whitening dims (default 32 for MNIST, 256)")
    m.add_argument("--kmeans-iters", type=int, default=20, help="Lloyd iterations per epoch")
    m.add_argument("--feature-dtype", choices=("float32", "float16"), default="float32",
                   help="float16: keep the epoch's features in fp16 on the host and stream "
                        "PCA + k-means through the device in chunks")
    m.add_argument("--feature-cache", metavar="DIR",
                   help="keep the epoch's features in a memmap under DIR (data beyond RAM); "
                        "implies the streamed PCA + k-means")
    m.add_argument("--kmeans-chunk", type=int, default=65536, metavar="ROWS",
                   help="rows per chunk of the streamed PCA + k-means")
    m.add_argument("--reassign", type=float, default=1.0,
                   help="images per epoch, as a multiple of the data set size")


def _training_flags(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, help="default 12 for MNIST, 200 for --data")
    t.add_argument("--batch-size", type=int, help="default 128 for MNIST, 256 for --data")
    t.add_argument("--lr", type=float, help="default 0.1 for MNIST, 0.05 for --data")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--wd", type=float, default=1e-5, help="weight decay")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--amp", action="store_true", help="bf16 autocast (GPU only)")
    t.add_argument("--sync-bn", action="store_true",
                   help="SyncBatchNorm across torchrun processes (CUDA only)")


def _output_flags(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help="output folder (default runs/<data>-<time>)")
    o.add_argument("--resume", action="store_true", help="continue the run in --out")
    o.add_argument("--no-final-eval", dest="final_eval", action="store_false",
                   help="skip the final k-means / linear-probe comparison")
    o.add_argument("--no-plots", dest="plots", action="store_false")
    o.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: when stderr is a terminal)")


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Parse command-line arguments into a :class:`Config` (dataset defaults unresolved)."""
    ns = build_parser().parse_args(argv)
    return Config(**vars(ns))


def resolve_defaults(cfg: Config, source: Source) -> Config:
    """Fill the data-dependent defaults and check the settings. Raises UsageError."""
    mnist = isinstance(source, TensorSource)
    if cfg.method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    defaults = dict(MNIST_DEFAULTS if mnist else FOLDER_DEFAULTS)
    if cfg.method == "deepercluster":
        defaults.update(DEEPER_MNIST_DEFAULTS if mnist else DEEPER_FOLDER_DEFAULTS)
    elif cfg.super_classes is not None:
        raise UsageError("--super-classes is for --method deepercluster")
    for key, value in defaults.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    cfg.in_channels = source.in_channels
    n = len(source)
    deeper = cfg.method == "deepercluster"
    checks = [
        (cfg.k >= 1, f"--k must be >= 1, got {cfg.k}"),
        (deeper or cfg.k <= n, f"--k {cfg.k} is larger than the number of images ({n}); "
                               f"k-means needs at least one image per cluster: pass a smaller --k"),
        (not deeper or cfg.super_classes >= 1,
         f"--super-classes must be >= 1, got {cfg.super_classes}"),
        (not deeper or cfg.super_classes <= n,
         f"--super-classes {cfg.super_classes} is larger than the number of images ({n})"),
        (cfg.reassign_every >= 1, f"--reassign-every must be >= 1, got {cfg.reassign_every}"),
        (cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
        (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
        (cfg.pca_dim >= 1, f"--pca-dim must be >= 1, got {cfg.pca_dim}"),
        (cfg.kmeans_iters >= 1, f"--kmeans-iters must be >= 1, got {cfg.kmeans_iters}"),
        (cfg.kmeans_chunk >= 1, f"--kmeans-chunk must be >= 1, got {cfg.kmeans_chunk}"),
        (cfg.reassign > 0, f"--reassign must be > 0, got {cfg.reassign}"),
        (cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}"),
        (cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    return cfg


def resumed_config(saved: dict[str, Any], cli: Config, out: str) -> Config:
    """The config of a resumed run: the checkpoint's ``saved`` settings, with what the command
    line ``cli`` may change because it does not alter the result: more epochs, the device,
    workers, outputs, and the data folder's location."""
    cfg = Config(**saved)
    cfg.epochs = cli.epochs if cli.epochs is not None else cfg.epochs
    for key in ("device", "workers", "final_eval", "plots", "progress"):
        setattr(cfg, key, getattr(cli, key))
    cfg.data = cli.data or cfg.data
    cfg.resume, cfg.out = True, out
    return cfg


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. Raises UsageError for an unusable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return device
