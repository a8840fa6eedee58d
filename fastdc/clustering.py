"""DeepCluster's ``clustering.py`` API on fastdc's k-means, so that its ``main.py`` runs with
``from fastdc import clustering``.

Differences from the original, all deliberate: random choices take a ``seed`` instead of calling
``np.random`` behind the caller's back; features may be NumPy arrays or torch tensors (a CUDA
tensor is clustered on its GPU); ``UnifLabelSampler`` lives here too (the original keeps it in
``util.py``). ``PIC`` (the graph-clustering alternative) runs on fastdc's fused k-NN op and
never builds an N×N matrix.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from fastdc.engine import kmeans, pca_whiten, pic, to_tensor
from fastdc.ops import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "Kmeans",
    "PIC",
    "preprocess_features",
    "run_kmeans",
    "arrange_clustering",
    "cluster_assign",
    "ReassignedDataset",
    "UnifLabelSampler",
]

def _features(data) -> tuple[torch.Tensor, Callable]:
    if isinstance(data, torch.Tensor):
        return to_tensor(data, "features", data.shape[-1], data.device)
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {arr.shape}")
    return to_tensor(arr, "features", arr.shape[1], torch.device("cpu"))


def preprocess_features(npdata, pca: int = 256):
    """PCA-whiten features to ``pca`` dims (eigenvalue power -0.5), then L2-normalise rows.

    npdata: (N, D) NumPy array or torch tensor. Returns float32 (N, min(pca, D)) of the same
    kind (and device).
    """
    x, like = _features(npdata)
    return like(pca_whiten(x, dim=pca, eigen_power=-0.5))


def run_kmeans(
    x,
    nmb_clusters: int,
    verbose: bool = False,
    *,
    seed: int = 0,
    niter: int = 20,
    backend: str | None = None,
) -> tuple[list[int], float]:
    """k-means as DeepCluster runs it: 20 iterations, no subsampling, then nearest centroids.

    x: (N, D) features (NumPy or tensor). Returns (cluster id of every row as a list of int,
    objective of the last iteration). The loop stops at the first iteration that changes no
    assignment, which gives the same ids and objective as running all niter iterations.
    """
    xt, _ = _features(x)
    res = kmeans(xt, nmb_clusters, niter=niter, seed=seed, backend=backend, verbose=verbose,
                 early_stop_threshold=0.0)
    loss = float(res.obj[-1]) if niter else 0.0
    return res.assignments.cpu().tolist(), loss


class Kmeans:
    """DeepCluster's clustering object: ``Kmeans(k).cluster(features)`` fills ``images_lists``.

    images_lists: list of k lists of row indices (one per cluster, possibly empty).
    """

    def __init__(
        self,
        k: int,
        *,
        seed: int = 0,
        pca: int = 256,
        niter: int = 20,
        backend: str | None = None,
    ):
        self.k, self.seed, self.pca, self.niter, self.backend = k, seed, pca, niter, backend
        self.images_lists: list[list[int]] = []

    def cluster(self, data, verbose: bool = False) -> float:
        """PCA-whiten + L2-normalise ``data`` (N, D), run k-means; returns the k-means loss."""
        start = time.perf_counter()
        xb = preprocess_features(data, pca=self.pca)
        ids, loss = run_kmeans(
            xb, self.k, verbose, seed=self.seed, niter=self.niter, backend=self.backend
        )
        self.images_lists = images_lists_from_labels(ids, self.k)
        if verbose:
            print(f"k-means time: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        return loss


class PIC:
    """DeepCluster's power iteration clustering: ``PIC().cluster(features)`` fills
    ``images_lists`` (see :func:`fastdc.engine.pic` for the algorithm).

    args: ignored (DeepCluster's ``main.py`` passes the number of clusters to both classes;
    PIC finds its own). sigma: the Gaussian kernel's bandwidth; nnn: neighbours per row;
    alpha: the power iteration's damping; distribute_singletons: move singletons into their
    nearest neighbour's cluster. images_lists: one non-empty list of row indices per cluster.
    """

    def __init__(self, args=None, sigma: float = 0.2, nnn: int = 5, alpha: float = 0.001,
                 distribute_singletons: bool = True, *, pca: int = 256, niter: int = 200,
                 backend: str | None = None):
        self.sigma, self.nnn, self.alpha = sigma, nnn, alpha
        self.distribute_singletons, self.pca, self.niter = distribute_singletons, pca, niter
        self.backend = backend
        self.images_lists: list[list[int]] = []

    def cluster(self, data, verbose: bool = False) -> int:
        """PCA-whiten + L2-normalise ``data`` (N, D), cluster it; returns 0 (as the reference:
        PIC has no loss)."""
        start = time.perf_counter()
        xb, _ = _features(preprocess_features(data, pca=self.pca))
        res = pic(xb, nnn=self.nnn, sigma=self.sigma, alpha=self.alpha, niter=self.niter,
                  distribute_singletons=self.distribute_singletons, backend=self.backend)
        self.images_lists = images_lists_from_labels(res.labels.cpu().tolist(), res.n_clusters)
        if verbose:
            print(f"pic time: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        return 0


def images_lists_from_labels(labels: Sequence[int], k: int) -> list[list[int]]:
    """Cluster id per row → k lists of row indices (in increasing row order)."""
    lists: list[list[int]] = [[] for _ in range(k)]
    for row, cluster in enumerate(labels):
        lists[int(cluster)].append(row)
    return lists


def arrange_clustering(images_lists: Sequence[Sequence[int]]) -> np.ndarray:
    """images_lists → the cluster id of every image, in image order (int64 array)."""
    n = sum(len(images) for images in images_lists)
    labels = np.full(n, -1, dtype=np.int64)
    for cluster, images in enumerate(images_lists):
        rows = np.asarray(images, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ValueError(f"images_lists must cover images 0..{n - 1} exactly once")
        labels[rows] = cluster
    if (labels < 0).any():
        raise ValueError(f"images_lists must cover images 0..{n - 1} exactly once")
    return labels


class ReassignedDataset(Dataset):
    """A dataset relabelled with pseudo-labels: item i is (transform(image), pseudolabel).

    dataset: a sequence of (path, target) pairs (images opened with PIL, as DeepCluster's
    ``dataset.imgs``) or any indexable dataset returning (image, target).
    Pseudo-labels are the non-empty clusters renumbered 0..m-1 in cluster order.
    """

    def __init__(self, image_indexes, pseudolabels, dataset, transform=None):
        self.image_indexes = list(image_indexes)
        clusters = sorted(set(pseudolabels))
        renumber = {c: i for i, c in enumerate(clusters)}
        self.pseudolabels = [renumber[c] for c in pseudolabels]
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.image_indexes)

    def __getitem__(self, i: int):
        item = self.dataset[self.image_indexes[i]]
        image = item[0]
        if isinstance(image, str):
            from PIL import Image

            with open(image, "rb") as f:
                image = Image.open(f).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.pseudolabels[i]


def default_train_transform():
    """DeepCluster's training augmentation: RandomResizedCrop(224), flip, ImageNet normalise."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def cluster_assign(images_lists, dataset, transform=None) -> ReassignedDataset:
    """Dataset of (image, pseudo-label) for every clustered image.

    images_lists: k lists of image indices; dataset: (path, target) pairs or an indexable
    dataset. transform defaults to DeepCluster's training augmentation.
    """
    indexes, labels = [], []
    for cluster, images in enumerate(images_lists):
        indexes.extend(images)
        labels.extend([cluster] * len(images))
    if transform is None:
        transform = default_train_transform()
    return ReassignedDataset(indexes, labels, dataset, transform)


class UnifLabelSampler(Sampler):
    """Samples N image indices uniformly over the non-empty clusters.

    Each non-empty cluster contributes ceil-ish N / (#non-empty) images (with replacement only
    when it is smaller than that), the result is shuffled and cut to N. ``seed`` makes it
    reproducible; the indices are drawn once, at construction (as in DeepCluster).
    """

    def __init__(self, N: int, images_lists, *, seed: int = 0):
        if N < 0:
            raise ValueError(f"N must be >= 0, got {N}")
        self.N = int(N)
        self.images_lists = images_lists
        self.indexes = self._draw(np.random.default_rng(seed))

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        nonempty = [np.asarray(c, dtype=np.int64) for c in self.images_lists if len(c)]
        if not nonempty:
            raise ValueError("every cluster is empty: nothing to sample")
        per_cluster = self.N // len(nonempty) + 1
        picks = [
            rng.choice(c, per_cluster, replace=len(c) <= per_cluster) for c in nonempty
        ]
        indexes = np.concatenate(picks)
        rng.shuffle(indexes)
        return indexes[: self.N]

    def __iter__(self):
        return iter(self.indexes.tolist())

    def __len__(self) -> int:
        return len(self.indexes)
