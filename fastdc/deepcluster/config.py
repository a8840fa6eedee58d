"""The trainer's configuration: command-line flags, the checks that refuse settings which
cannot work (at parse time, and again once the data-dependent defaults are filled in), what a
resumed run may change, and the device choice (``python -m fastdc.train``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fastdc.deepcluster.auto import DEEPER_PAPER, DEEPER_SMALL, MNIST, PAPER, PRESETS
from fastdc.deepcluster.data import DATASET_SIDES, Source, TensorSource
from fastdc.deepcluster.models import ARCHS, min_input_size

METHODS = ("deepcluster", "deepercluster")

# Defaults that depend on the data, for settings the preset (fastdc.deepcluster.auto) left
# unset: the small net's (the mnist preset's, chosen by runs on a 2-core CPU) vs DeepCluster's
# ImageNet settings (the paper preset's).
_SIZED = ("arch", "k", "epochs", "pca_dim", "batch_size", "lr")
MNIST_DEFAULTS = {key: MNIST[key] for key in _SIZED}
FOLDER_DEFAULTS = {key: PAPER[key] for key in _SIZED}
# DeeperCluster: --k is the number of sub-classes per super-class. MNIST: 4 × 25 = 100 targets
# (DeepCluster's k there). Folders get the reference's own settings (DeeperCluster main.py and
# its ImageNet/YFCC scripts): VGG16, lr 0.1, batch 48 per process, re-clustering every 3 epochs,
# PCA 4096, 10 Lloyd iterations, head SGD with momentum 0.9, PyTorch's default Linear init for
# the heads, SyncBatchNorm. The reference's --super_classes counts clusters × rotations and its
# --k is the total number of sub-classes: reference S_ref = 4·S, k_ref = S·k here (its
# src/utils.py sets nmb_super_clusters = super_classes // 4 under --rotnet, and main.py gives
# each k // nmb_super_clusters sub-classes).
# Settings that DeepCluster and the MNIST runs leave at these values:
COMMON_DEFAULTS = {"kmeans_iters": 20, "reassign_every": 1, "sync_bn": False,
                   "head_momentum": 0.0, "head_init": "normal"}
# Integer settings and their smallest allowed value: (attribute, flag, minimum).
AT_LEAST = (("k", "--k", 1), ("super_classes", "--super-classes", 1),
            ("reassign_every", "--reassign-every", 1), ("epochs", "--epochs", 1),
            ("batch_size", "--batch-size", 1), ("pca_dim", "--pca-dim", 1),
            ("kmeans_iters", "--kmeans-iters", 1), ("kmeans_chunk", "--kmeans-chunk", 1),
            ("subset", "--subset", 1), ("image_size", "--image-size", 1),
            ("save_every", "--save-every", 1), ("workers", "--workers", 0))


class UsageError(ValueError):
    """Settings that cannot work together (k larger than the data, --resume without --out...)."""


@dataclass
class Config:
    """Every setting of a run (saved in the checkpoint and in summary.json)."""

    data: str | None = None
    dataset: str | None = None
    subset: int | None = None
    arch: str | None = None
    sobel: bool | None = None
    k: int | None = None
    pca_dim: int | None = None
    kmeans_iters: int | None = 20
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
    image_size: int | None = None
    crop_scale: float | None = None
    flip: bool | None = None
    grey: bool | None = None
    memory: bool | None = None  # a folder decoded once into memory
    preset: str = "auto"  # the rule that fills unset settings (fastdc.deepcluster.auto)
    choices: dict[str, Any] = field(default_factory=dict)  # setting -> {"value", "reason"}
    final_eval: bool = True
    plots: bool = True
    progress: bool | None = None
    in_channels: int = 0  # filled in from the data
    method: str = "deepcluster"
    clustering: str = "kmeans"  # deepcluster: "kmeans" or "pic" (power iteration clustering)
    super_classes: int | None = None  # deepercluster only
    rotations: bool = True  # deepercluster only
    reassign_every: int | None = 1
    sync_bn: bool | None = False
    head_momentum: float | None = 0.0  # the head's SGD momentum
    head_init: str | None = "normal"  # a new head: "normal" N(0, 0.01), or "default" (PyTorch)
    feature_dtype: str = "float32"  # float16: features kept in fp16 on the host, streamed
    feature_cache: str | None = None  # a directory: features in an on-disk memmap, streamed
    kmeans_chunk: int = 65536  # rows per chunk of the streamed PCA / k-means
    save_every: int | None = None  # keep checkpoint_epochNNN.pt every N epochs
    init_from: str | None = None  # a checkpoint whose weights (head dropped) start the run
    tensorboard: bool | None = None  # event files in out/tensorboard (None: off)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def streamed_features(self) -> bool:
        """--feature-dtype float16 or --feature-cache: features on the host, streamed."""
        return self.feature_dtype != "float32" or self.feature_cache is not None

    @property
    def crop_range(self) -> tuple[float, float] | None:
        """The random-resized-crop area range (--crop-scale, 1), None for the data's default.
        Raises UsageError outside (0, 1]."""
        return crop_range(self.crop_scale)


def crop_range(scale: float | None) -> tuple[float, float] | None:
    """The random-resized-crop area range (scale, 1), None for None. Raises UsageError for a
    scale outside (0, 1]."""
    if scale is None:
        return None
    if not 0 < scale <= 1:
        raise UsageError(f"--crop-scale must be in (0, 1], got {scale}")
    return scale, 1.0


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
    d.add_argument("--subset", type=int, metavar="N",
                   help="use only N images, drawn across all classes in proportion to their "
                        "sizes (seeded by --seed; a uniform draw for data without classes)")
    d.add_argument("--preset", choices=PRESETS, default="auto",
                   help="the rule for every setting not given: auto picks from the data "
                        "(ImageNet-like folders, >= 100k images of >= 128 px: paper; other "
                        "folders: the small net at the images' resolution; the built-in "
                        "data: mnist), paper = DeepCluster's ImageNet settings, mnist = the "
                        "built-in MNIST run's")
    d.add_argument("--image-size", type=int, help="crop size for --data (default: from "
                   "--preset; auto: the images' own side, in [16, 64] px)")
    d.add_argument("--grey", action=argparse.BooleanOptionalAction, default=None,
                   help="read --data images as 1-channel grey (default: when they are grey)")
    d.add_argument("--in-memory", dest="memory", action=argparse.BooleanOptionalAction,
                   default=None, help="decode --data once into memory (default: for "
                   "non-ImageNet-like folders that fit in 1 GiB)")
    d.add_argument("--crop-scale", type=float, metavar="MIN", help="random-resized-crop area "
                   "range [MIN, 1] (default: 0.08 for paper, 0.5 otherwise)")
    d.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: paper on; auto on for colour "
                        "folders; off for grey ones and MNIST)")
    d.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def _clustering_flags(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model and clustering")
    m.add_argument("--method", choices=METHODS, default="deepcluster",
                   help="deepercluster: rotation × super-class and sub-class targets; with "
                        "--preset paper it takes the reference's settings (vgg16, lr 0.1, "
                        "batch 48, --reassign-every 3, --pca-dim 4096, --kmeans-iters 10, "
                        "--head-momentum 0.9, --head-init default, --sync-bn)")
    m.add_argument("--clustering", choices=("kmeans", "pic"), default="kmeans",
                   help="deepcluster: k-means with --k clusters, or power iteration clustering "
                        "on a 5-NN graph (as many clusters as it finds, the head sized to them "
                        "every epoch; single process, features in memory)")
    m.add_argument("--super-classes", type=int, metavar="S",
                   help="deepercluster: super-classes (default 4); --k is then the number "
                        "of sub-classes per super-class (default 25 for MNIST, 2500). The "
                        "reference's --super_classes counts super-classes × 4 rotations and "
                        "its --k is the total: its --super_classes 16 --k 10000 is "
                        "--super-classes 4 --k 2500 here")
    m.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=True,
                   help="deepercluster: rotate inputs by 0/90/180/270 degrees")
    m.add_argument("--reassign-every", type=int, metavar="E",
                   help="epochs between re-clusterings (default 1; deepercluster paper: 3)")
    sides = ", ".join(f"{arch} {min_input_size(arch)}" for arch in ARCHS)
    m.add_argument("--arch", choices=ARCHS,
                   help="default: from --preset (small for MNIST and auto, alexnet for "
                        "paper, vgg16 for deepercluster paper; the checkpoint's with "
                        f"--init-from). Smallest image side in pixels: {sides}")
    m.add_argument("--sobel", action=argparse.BooleanOptionalAction, default=None,
                   help="fixed Sobel filter in front (default: on for paper, off otherwise)")
    m.add_argument("--k", type=int, help="clusters (default 100 for MNIST, 10000 for paper; "
                   "auto: about one per 25 images)")
    m.add_argument("--pca-dim", type=int, help="PCA whitening dims (default 32 for MNIST and "
                   "auto, 256 for paper; deepercluster paper: 4096)")
    m.add_argument("--kmeans-iters", type=int,
                   help="Lloyd iterations per epoch (default 20; deepercluster paper: 10)")
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
    t.add_argument("--epochs", type=int, help="default 12 for MNIST, 200 for paper; auto: "
                   "about 48 000 training images in all, 12-30 epochs")
    t.add_argument("--batch-size", type=int, help="default 128 for MNIST and auto (64 under "
                   "2000 images), 256 for paper (48 per process for deepercluster paper)")
    t.add_argument("--lr", type=float, help="default 0.1 for MNIST and auto, 0.05 for paper "
                   "(0.1 for deepercluster paper)")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--wd", type=float, default=1e-5,
                   help="weight decay, the value itself (DeepCluster's script takes the "
                        "exponent: its --wd -5 is --wd 1e-5 here)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--amp", action="store_true", help="bf16 autocast (GPU only)")
    t.add_argument("--sync-bn", action=argparse.BooleanOptionalAction,
                   help="SyncBatchNorm across torchrun processes (CUDA only; default off, on "
                        "for deepercluster paper)")
    t.add_argument("--head-momentum", type=float,
                   help="momentum of the head's SGD (default 0 as DeepCluster; deepercluster "
                        "paper: 0.9)")
    t.add_argument("--head-init", choices=("normal", "default"),
                   help="a new head's weights: normal N(0, 0.01) as DeepCluster (default), or "
                        "PyTorch's default Linear init (deepercluster paper)")
    t.add_argument("--init-from", metavar="CKPT",
                   help="start a new run from these weights, head dropped: a fastdc "
                        "checkpoint, or a reference DeepCluster checkpoint (AlexNet/VGG16, "
                        "converted on the fly). The architecture is the checkpoint's; an "
                        "--arch or --sobel that differs is an error. Ignored when --resume "
                        "finds a checkpoint")


def _output_flags(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help="output folder (default runs/<data>-<time>)")
    o.add_argument("--resume", action="store_true",
                   help="continue the run in --out (starts it when --out has no checkpoint "
                        "yet, so a job script can always pass --resume)")
    o.add_argument("--save-every", type=int, metavar="N",
                   help="also keep checkpoint_epochNNN.pt every N epochs (checkpoint.pt is "
                        "always the latest)")
    o.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="TensorBoard event files in --out/tensorboard: training loss per "
                        "step, NMI and cluster sizes per epoch (needs the tensorboard package)")
    o.add_argument("--no-final-eval", dest="final_eval", action="store_false",
                   help="skip the final k-means / linear-probe comparison")
    o.add_argument("--no-plots", dest="plots", action="store_false")
    o.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: when stderr is a terminal)")


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Parse command-line arguments into a :class:`Config` (dataset defaults unresolved).
    Raises UsageError for a setting that cannot work (:func:`check_settings`; the image size
    is left to :func:`resolve_defaults` with --resume, whose data is the checkpoint's)."""
    cfg = Config(**vars(build_parser().parse_args(argv)))
    check_settings(cfg, None if cfg.resume else input_side(cfg))
    return cfg


def input_side(cfg: Config) -> int | None:
    """The side (pixels) of the images the net will see: --image-size for --data, the built-in
    data set's own size otherwise (None for an unknown data set)."""
    return cfg.image_size if cfg.data else DATASET_SIDES.get(cfg.dataset or "mnist")


def check_settings(cfg: Config, side: int | None) -> None:
    """Raise UsageError, with what to do, for a setting that cannot work: an integer below its
    minimum (:data:`AT_LEAST`), a number that is not finite, a learning rate or --reassign
    <= 0, a momentum outside [0, 1), a negative weight decay, a crop scale outside (0, 1], or
    an --arch whose pools shrink images of ``side`` pixels to nothing. Settings still None
    (defaults to come) pass."""
    for attr, flag, low in AT_LEAST:
        value = getattr(cfg, attr)
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    for flag, value in (("--lr", cfg.lr), ("--reassign", cfg.reassign), ("--wd", cfg.wd),
                        ("--momentum", cfg.momentum), ("--crop-scale", cfg.crop_scale)):
        if value is not None and not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, got {value}")
    for flag, value in (("--lr", cfg.lr), ("--reassign", cfg.reassign)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be > 0, got {value}")
    for flag, value in (("--momentum", cfg.momentum), ("--head-momentum", cfg.head_momentum)):
        if value is not None and not 0 <= value < 1:
            raise UsageError(f"{flag} must be in [0, 1), got {value}")
    if not cfg.wd >= 0:
        raise UsageError(_negative_wd(cfg.wd))
    crop_range(cfg.crop_scale)
    if cfg.arch is not None and side is not None:
        _check_arch_fits(cfg.arch, side, bool(cfg.data))


def _negative_wd(wd: float) -> str:
    """The error for --wd < 0, which DeepCluster's script reads as an exponent."""
    if wd == int(wd):
        return (f"--wd must be >= 0, got {wd:g}: it is the weight decay itself, not DeepCluster's "
                f"exponent form; for 10^{int(wd)} pass --wd 1e{int(wd)}")
    return f"--wd must be >= 0 (a weight decay such as 1e-5), got {wd}"


def _check_arch_fits(arch: str, side: int, folder: bool) -> None:
    """Raise UsageError when ``arch`` cannot take ``side``-pixel images."""
    need = min_input_size(arch)
    if side >= need:
        return
    small_fits = arch != "small" and side >= min_input_size("small")
    if folder:
        what = f"--image-size is {side}"
        fix = f"pass --image-size {need} or more" + (", or --arch small" if small_fits else "")
    else:
        what = f"the built-in images are {side}×{side}"
        fix = "use --arch small (the default here)" if small_fits else "use a folder (--data)"
    raise UsageError(f"--arch {arch} needs images of at least {need}×{need} pixels (its "
                     f"convolutions and pools shrink smaller ones to nothing), but {what}: "
                     f"{fix}")


def resolve_defaults(cfg: Config, source: Source) -> Config:
    """Fill the data-dependent defaults and check the settings, against the data too (k and
    the super-classes at most the number of images, an architecture that fits the images).
    Raises UsageError."""
    mnist = cfg.data is None or cfg.arch == "small"  # the small net: the small-data defaults
    if cfg.method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    defaults = {**COMMON_DEFAULTS, **(MNIST_DEFAULTS if mnist else FOLDER_DEFAULTS)}
    if cfg.method == "deepercluster":
        defaults.update(DEEPER_SMALL if mnist else DEEPER_PAPER)
    elif cfg.super_classes is not None:
        raise UsageError("--super-classes is for --method deepercluster")
    for key, value in defaults.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    cfg.in_channels = source.in_channels
    cfg.image_size, cfg.grey = cfg.image_size or source.side, source.in_channels == 1
    cfg.sobel, cfg.memory = bool(cfg.sobel), isinstance(source, TensorSource)
    check_settings(cfg, source.side)
    n = len(source)
    if cfg.method != "deepercluster" and cfg.k > n:
        raise UsageError(f"--k {cfg.k} is larger than the number of images ({n}); k-means "
                         f"needs at least one image per cluster: pass a smaller --k")
    if cfg.method == "deepercluster" and cfg.super_classes > n:
        raise UsageError(f"--super-classes {cfg.super_classes} is larger than the number of "
                         f"images ({n})")
    return cfg


def resumed_config(saved: dict[str, Any], cli: Config, out: str) -> Config:
    """The config of a resumed run: the checkpoint's ``saved`` settings, with what the command
    line ``cli`` may change because it does not alter the result: more epochs, the device,
    workers, outputs (snapshots, TensorBoard, plots...), and the data folder's location."""
    cfg = Config(**saved)
    check_resume_flags(cfg, cli)
    for key in ("epochs", "save_every", "tensorboard"):  # the command line's, when given
        if getattr(cli, key) is not None:
            setattr(cfg, key, getattr(cli, key))
    for key in ("device", "workers", "final_eval", "plots", "progress"):
        setattr(cfg, key, getattr(cli, key))
    cfg.data = cli.data or cfg.data
    cfg.resume, cfg.out = True, out
    return cfg


# Settings a resumed run may take from its command line; every other one is the checkpoint's.
RESUMABLE = ("epochs", "save_every", "tensorboard", "device", "workers", "final_eval", "plots",
             "progress", "data", "out", "resume")


def check_resume_flags(saved: Config, cli: Config) -> None:
    """Raise UsageError when the command line of a resumed run sets a setting (other than
    :data:`RESUMABLE`) to a value that differs from the checkpoint's: it would be ignored."""
    given = vars(build_parser().parse_args([]))
    changed = [f"--{key.replace('_', '-')} {getattr(cli, key)!r} (the run has "
               f"{getattr(saved, key)!r})"
               for key, default in given.items()
               if key not in RESUMABLE and getattr(cli, key) != default
               and getattr(cli, key) != getattr(saved, key)]
    if changed:
        raise UsageError("--resume continues a run with its own settings, but the command line "
                         "changes " + ", ".join(changed) + ": drop these flags, or start a new "
                         "run in another --out (--init-from CKPT starts from its weights)")


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
