"""Settings derived from the data (``--preset auto|paper|mnist``).

:func:`inspect_folder` looks at an image folder (how many images, their size, colour or grey,
how many classes); :func:`preset_choices` turns that into the settings of a run, each with the
reason it was chosen; :func:`apply_choices` fills the settings the command line left unset
(an explicit flag always wins).

The rules:

- ``paper``: DeepCluster's ImageNet settings (AlexNet-BN + Sobel at 224 px, crops of 8-100 %
  of the area with flips, k 10 000, PCA 256, 200 epochs, batch 256, lr 0.05).
- ``mnist``: the built-in MNIST run's settings (small net at 28 px, crops of 50-100 % without
  flips, k 100, PCA 32, 12 epochs, batch 128, lr 0.1).
- ``auto``: the built-in data set gets ``mnist``; a folder that looks like ImageNet
  (:data:`IMAGENET_LIKE`: >= 100 000 images of >= 128 px) gets ``paper``; any other folder
  gets the small net at its own resolution (clamped to [16, 64] px), held in memory, with the
  settings of :func:`small_data_choices`.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastdc.deepcluster.data import DataError, scan_folder
from fastdc.deepcluster.models import min_input_size

PRESETS = ("auto", "paper", "mnist")
IMAGENET_LIKE = (100_000, 128)  # (images, shorter side in px) from which a folder is "ImageNet"
SAMPLED = 64  # images opened to measure size and colour
SMALL_SIDES = (16, 64)  # the small net's input side: the images' own, clamped to this range
IMAGES_PER_CLUSTER = 25
TRAIN_IMAGES = 48_000  # images seen by training over a whole small-data run (epochs × N)
EPOCHS = (12, 30)

PAPER = {"arch": "alexnet", "sobel": True, "image_size": 224, "crop_scale": 0.08, "flip": True,
         "k": 10_000, "pca_dim": 256, "epochs": 200, "batch_size": 256, "lr": 0.05,
         "memory": False}
# DeeperCluster's reference (main.py and its ImageNet/YFCC scripts), for --preset paper.
DEEPER_PAPER = {"super_classes": 4, "k": 2_500, "arch": "vgg16", "lr": 0.1, "batch_size": 48,
                "reassign_every": 3, "pca_dim": 4096, "kmeans_iters": 10, "sync_bn": True,
                "head_momentum": 0.9, "head_init": "default"}
MNIST = {"arch": "small", "sobel": False, "crop_scale": 0.5, "flip": False, "k": 100,
         "pca_dim": 32, "epochs": 12, "batch_size": 128, "lr": 0.1}
# DeeperCluster on small data: 4 super-classes × 25 sub-classes = 100 targets (the mnist k).
DEEPER_SMALL = {"super_classes": 4, "k": 25}


@dataclass(frozen=True)
class FolderShape:
    """What :func:`inspect_folder` found: ``images`` (count), ``side`` (median shorter side in
    px of the sampled images), ``colour`` (any sampled image has unequal RGB channels),
    ``classes`` (class sub-folders; 0 when the images lie directly in the folder)."""

    images: int
    side: int
    colour: bool
    classes: int

    def describe(self) -> str:
        """E.g. '2000 colour images of 32 px in 10 classes'."""
        tone = "colour" if self.colour else "grey"
        classes = f"in {self.classes} classes" if self.classes else "without classes"
        return f"{self.images} {tone} images of {self.side} px {classes}"


@dataclass(frozen=True)
class Choice:
    """One setting: its Config attribute, value, and why."""

    key: str
    value: Any
    reason: str


def inspect_folder(root: str | os.PathLike, sampled: int = SAMPLED) -> FolderShape:
    """Count the images under ``root`` (:func:`fastdc.deepcluster.data.scan_folder`) and open
    ``sampled`` of them, evenly spaced, for their size and colour. Unreadable images are left
    out of the measures. Raises DataError when none of the sampled images can be read."""
    from PIL import Image

    samples, classes = scan_folder(root)
    picks = np.unique(np.linspace(0, len(samples) - 1, min(sampled, len(samples))).astype(int))
    sides, colour = [], False
    for i in picks:
        try:
            with Image.open(samples[i][0]) as img:
                sides.append(min(img.size))
                if not colour and img.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                    img.thumbnail((64, 64))
                    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
                    colour = bool(np.abs(rgb[..., :1] - rgb[..., 1:]).max() > 2)
        except Exception:  # an unreadable image says nothing about the others
            continue
    if not sides:
        raise DataError(f"none of the {len(picks)} images sampled in {str(root)!r} could be "
                        "read: check the files are images")
    return FolderShape(len(samples), int(statistics.median(sides)), colour, len(classes))


def imagenet_like(shape: FolderShape) -> bool:
    """Whether a folder is large enough, in images and pixels, for the paper's settings."""
    return shape.images >= IMAGENET_LIKE[0] and shape.side >= IMAGENET_LIKE[1]


def preset_choices(preset: str, shape: FolderShape | None, *, method: str = "deepcluster",
                   arch: str | None = None) -> list[Choice]:
    """The settings of ``preset`` for a folder of ``shape`` (None: the built-in MNIST), for
    ``method``; ``arch``: the architecture given on the command line, if any (the image size
    is then at least what it needs). Raises DataError for an unknown preset."""
    if preset not in PRESETS:
        raise DataError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    paper = preset == "paper" or (preset == "auto" and shape is not None
                                  and imagenet_like(shape))
    if preset == "mnist" or (preset == "auto" and shape is None):
        why = "the built-in MNIST run's setting" + (" (--preset mnist)" if shape else "")
        picked = dict(MNIST, **({"image_size": 28, "memory": True} if shape else {}))
        choices = [Choice(key, value, why) for key, value in picked.items()]
    elif paper:
        why = ("DeepCluster's ImageNet setting" + (" (--preset paper)" if preset == "paper"
               else f": {shape.describe()} looks like ImageNet (>= {IMAGENET_LIKE[0]} images "
                    f"of >= {IMAGENET_LIKE[1]} px)"))
        choices = [Choice(key, value, why) for key, value in PAPER.items()]
        if method == "deepercluster":  # the reference's DeeperCluster settings instead
            choices = [c for c in choices if c.key not in DEEPER_PAPER] + [
                Choice(key, value, "DeeperCluster's reference setting")
                for key, value in DEEPER_PAPER.items()]
    else:
        choices = small_data_choices(shape, arch)
    if method == "deepercluster" and not paper:
        choices = [c for c in choices if c.key != "k"] + [
            Choice("super_classes", DEEPER_SMALL["super_classes"],
                   f"DeeperCluster: {DEEPER_SMALL['super_classes']} super-classes"),
            Choice("k", DEEPER_SMALL["k"],
                   f"DeeperCluster: {DEEPER_SMALL['k']} sub-classes per super-class")]
    return choices


def small_data_choices(shape: FolderShape, arch: str | None = None) -> list[Choice]:
    """The ``auto`` settings for a folder that is not ImageNet-like: see the reasons.
    ``arch``: a given architecture other than the small net raises the image size to what
    it needs."""
    n, side = shape.images, shape.side
    need = min_input_size(arch) if arch else SMALL_SIDES[0]
    size = max(min(max(side, SMALL_SIDES[0]), SMALL_SIDES[1]), need)
    size_why = (f"the images' own {side} px" if size == side else
                f"{side}-px images {'up' if size > side else 'down'}-sampled to {size} px "
                + (f"(--arch {arch} needs >= {need} px)" if size == need > SMALL_SIDES[0]
                   else f"(the small net's range is {SMALL_SIDES[0]}-{SMALL_SIDES[1]} px)"))
    k = min(n, 10_000, max(10, 2 * shape.classes, round(n / IMAGES_PER_CLUSTER)))
    epochs = min(EPOCHS[1], max(EPOCHS[0], math.ceil(TRAIN_IMAGES / n)))
    batch = 128 if n >= 2_000 else 64
    flip = shape.colour
    return [
        Choice("arch", "small", f"{shape.describe()} (< {IMAGENET_LIKE[0]} images or < "
               f"{IMAGENET_LIKE[1]} px): the small net, fast on a CPU"),
        Choice("image_size", size, size_why),
        Choice("memory", n * (3 if shape.colour else 1) * size * size <= 2**30,
               "decoded once and held in memory when it fits in 1 GiB"),
        Choice("sobel", False, "no Sobel front: on small images the colour and intensity "
               "it removes carry much of what there is to learn"),
        Choice("grey", not shape.colour, "the images are " + ("colour" if shape.colour else
               "grey: one channel")),
        Choice("crop_scale", 0.5, "crops of 50-100 % of the area: the paper's 8 % leaves a "
               "few pixels of a small image"),
        Choice("flip", flip, "horizontal flips for colour pictures" if flip else
               "no flips: grey images are often characters or digits, not mirror-symmetric"),
        Choice("k", k, f"about one cluster per {IMAGES_PER_CLUSTER} images (at least 2 per "
               "class and 10 in all, at most one per image)"),
        Choice("pca_dim", 32, "PCA to 32 dims of the small net's 128 features"),
        Choice("epochs", epochs, f"about {TRAIN_IMAGES} training images in all, "
               f"{EPOCHS[0]}-{EPOCHS[1]} epochs: a few minutes on a 2-core CPU"),
        Choice("batch_size", batch, f"{batch} images per step" + ("" if n >= 2_000 else
               " (fewer than 2000 images: more steps per epoch)")),
        Choice("lr", 0.1, "the small net's rate (as the built-in MNIST run)"),
    ]


def apply_choices(cfg: Any, choices: list[Choice]) -> None:
    """Set every chosen setting that ``cfg`` leaves at None, and record each in
    ``cfg.choices`` ({key: {"value", "reason"}}; "given on the command line" where the
    command line set it)."""
    for c in choices:
        given = getattr(cfg, c.key) is not None
        if not given:
            setattr(cfg, c.key, c.value)
        cfg.choices[c.key] = {"value": getattr(cfg, c.key),
                              "reason": "given on the command line" if given else c.reason}
