"""Figures of a run, drawn with Matplotlib's Agg backend (no display needed).

- ``curves.png``: clustering and training loss, and the two NMI curves, over epochs;
- ``clusters.png``: sample images from the largest clusters of the last epoch, one row each.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: Sequence[dict], path: str | os.PathLike) -> Path:
    """Draw ``curves.png`` from per-epoch records (keys ``epoch``, ``clustering_loss``,
    ``train_loss``, ``nmi_prev``, ``nmi_labels``; missing/None values are left out)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    epochs = [r["epoch"] for r in records]

    def series(key: str) -> tuple[list, list]:
        pts = [(e, r.get(key)) for e, r in zip(epochs, records, strict=True)
               if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    for ax, key, title in ((axes[0], "clustering_loss", "k-means loss (mean sq. distance)"),
                           (axes[1], "train_loss", "training loss (cross-entropy)")):
        ax.plot(*series(key), marker="o", ms=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for key, label in (("nmi_prev", "NMI(t, t-1)"), ("nmi_labels", "NMI(clusters, labels)")):
        xs, ys = series(key)
        if xs:
            axes[2].plot(xs, ys, marker="o", ms=3, label=label)
    axes[2].set_title("NMI")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylim(0, 1)
    axes[2].grid(alpha=0.3)
    axes[2].legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_clusters(thumbnails: np.ndarray, cluster_ids: Sequence[int],
                  cluster_sizes: Sequence[int], path: str | os.PathLike,
                  per_row: int) -> Path:
    """Draw ``clusters.png``: row r shows ``per_row`` images of cluster ``cluster_ids[r]``.

    thumbnails: uint8 [rows * per_row, H, W, C] (C = 1 or 3), row-major; missing tiles may be
    all-zero. The tiles are assembled into one mosaic (a single ``imshow``: fast).
    """
    plt = _pyplot()
    rows = len(cluster_ids)
    n, h, w, c = thumbnails.shape
    gap = max(1, h // 14)
    mosaic = np.full((rows * (h + gap) + gap, per_row * (w + gap) + gap, c), 255, np.uint8)
    for i in range(min(n, rows * per_row)):
        r, col = divmod(i, per_row)
        y0, x0 = gap + r * (h + gap), gap + col * (w + gap)
        mosaic[y0:y0 + h, x0:x0 + w] = thumbnails[i]
    fig, ax = plt.subplots(figsize=(per_row * 0.6 + 1.2, rows * 0.6 + 0.5))
    if c == 1:
        ax.imshow(mosaic[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([gap + r * (h + gap) + h / 2 for r in range(rows)])
    ax.set_yticklabels([f"#{cid} ({size})" for cid, size in zip(cluster_ids, cluster_sizes,
                                                                 strict=True)], fontsize=7)
    ax.set_title("largest clusters: cluster id (size)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def cluster_grid(assignment: np.ndarray, rows: int = 10, per_row: int = 12,
                 seed: int = 0) -> tuple[list[int], list[int], np.ndarray]:
    """Choose what :func:`plot_clusters` shows: the ``rows`` largest clusters of
    ``assignment`` (int [N], -1 = skipped image) and ``per_row`` random members of each.

    Returns (cluster ids, sizes, image indices int64 [rows * per_row]; -1 = empty tile).
    """
    valid = assignment[assignment >= 0]
    sizes = np.bincount(valid) if valid.size else np.zeros(0, dtype=np.int64)
    order = np.argsort(-sizes, kind="stable")[:rows]
    order = [int(c) for c in order if sizes[c] > 0]
    rng = np.random.default_rng(seed)
    picks = np.full(len(order) * per_row, -1, dtype=np.int64)
    for r, c in enumerate(order):
        members = np.flatnonzero(assignment == c)
        chosen = rng.choice(members, size=min(per_row, len(members)), replace=False)
        picks[r * per_row:r * per_row + len(chosen)] = np.sort(chosen)
    return order, [int(sizes[c]) for c in order], picks
