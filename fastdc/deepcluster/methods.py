"""What differs between DeepCluster and DeeperCluster, as two method objects for the trainer.

A method says how many pseudo-label targets there are and how wide the head is, how the
whitened features become targets (k-means, or the two-level hierarchy), what a training step
feeds the net and which loss it takes, and which metrics it adds to an epoch's record.

Targets are stored alike for both (int64 [N], -1 for unreadable images): DeepCluster's cluster
id in [0, k), DeeperCluster's ``super * k + sub`` in [0, S·k)
(:mod:`fastdc.deepcluster.deepercluster`), so the sampler, the checkpoints and the NMI metrics
treat both the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastdc.deepcluster import deepercluster as dc
from fastdc.deepcluster.config import Config
from fastdc.deepcluster.distribution import Distribution
from fastdc.deepcluster.seeds import STREAM_ROTATION, derive_seed
from fastdc.engine import FeatureStore, kmeans, kmeans_streaming
from fastdc.evaluation import masked_nmi


@dataclass
class Clusters:
    """A method's clustering of the readable rows of every rank.

    labels: int64 [n_readable] targets (any device), in rank order; loss: mean squared
    distance of the rows to their (sub-)centroid at the last Lloyd iteration; extra: further
    entries of the epoch record.
    """

    labels: torch.Tensor
    loss: float
    extra: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """The method-specific part of a run (see the module docstring)."""

    title: str  # the name in the run's first console line
    n_targets: int  # pseudo-label targets
    head_outputs: int  # outputs of the head
    min_rows: int  # readable images needed to cluster
    min_rows_flag: str  # the flag that sets ``min_rows``, for the error message
    step_stats: tuple[str, ...] = ()  # per-step statistics besides the loss (record keys)

    def __init__(self, cfg: Config, dist: Distribution) -> None:
        self.cfg, self.dist = cfg, dist

    @abstractmethod
    def describe(self) -> str:
        """The method's settings for the run's first console line (", k 100", ...)."""

    @abstractmethod
    def cluster(self, x: torch.Tensor | FeatureStore, seed: int, n_rows: int) -> Clusters:
        """Targets of this rank's whitened readable rows x [n_r, d] (float32 on the device, or
        a store streamed through it), gathered over the group. ``n_rows``: readable rows of
        every rank; ``seed``: the epoch's k-means seed."""

    @abstractmethod
    def begin_epoch(self, assignment: np.ndarray) -> None:
        """Prepare the training steps of an epoch on targets ``assignment`` (int64 [N])."""

    def inputs(self, images: torch.Tensor, keep: torch.Tensor, rank_seed: int, epoch: int,
               batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the net sees for a batch float [B, C, H, W], and what the loss needs besides
        the targets (None here), for the readable rows ``keep`` (bool [B])."""
        return images, None

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor,
             aux: torch.Tensor | None) -> torch.Tensor:
        """The training loss (float32 scalar) of the readable rows' logits [b, head_outputs]
        and targets int64 [b]; ``aux`` from :meth:`inputs`."""

    def loss_and_stats(self, logits: torch.Tensor, targets: torch.Tensor,
                       aux: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss`, and the batch means of :attr:`step_stats` (float32 [len(step_stats)],
        no graph)."""
        return self.loss(logits, targets, aux), torch.zeros(0)

    def metrics(self, assignment: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        """Entries the method adds to an epoch's record (none here)."""
        return {}


class DeepCluster(Method):
    """DeepCluster (Caron et al., ECCV 2018): k clusters, a k-way head, cross-entropy."""

    title = "DeepCluster"

    def __init__(self, cfg: Config, dist: Distribution) -> None:
        super().__init__(cfg, dist)
        self.n_targets = self.head_outputs = self.min_rows = cfg.k
        self.min_rows_flag = "--k"

    def describe(self) -> str:
        return f", k {self.cfg.k}"

    def cluster(self, x: torch.Tensor | FeatureStore, seed: int, n_rows: int) -> Clusters:
        cfg, group = self.cfg, self.dist.group
        if isinstance(x, FeatureStore):
            res = kmeans_streaming(x, cfg.k, niter=cfg.kmeans_iters, seed=seed,
                                   device=self.dist.device, chunk_rows=cfg.kmeans_chunk,
                                   group=group)
            labels = res.assignments.to(self.dist.device)
        else:
            res = kmeans(x, cfg.k, niter=cfg.kmeans_iters, seed=seed, group=group)
            labels = res.assignments
        return Clusters(self.dist.gather_rows(labels), float(res.obj[-1]) / n_rows)

    def begin_epoch(self, assignment: np.ndarray) -> None:
        """Nothing to prepare: every cluster has its own column of the head."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor,
             aux: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets)


class DeeperCluster(Method):
    """DeeperCluster (Caron et al., ICCV 2019): S super-classes × k sub-classes, inputs
    rotated by 0/90/180/270° (R = 4, or 1 with ``--no-rotation``), a head of S·R + S·k
    outputs and the loss of :func:`fastdc.deepcluster.deepercluster.deepercluster_loss`."""

    title = "DeeperCluster"
    step_stats = ("loss_super_rot", "loss_sub", "acc_super_rot", "acc_sub")

    def __init__(self, cfg: Config, dist: Distribution) -> None:
        super().__init__(cfg, dist)
        self.n_rot = 4 if cfg.rotations else 1
        self.n_targets = cfg.super_classes * cfg.k
        self.head_outputs = dc.head_size(cfg.super_classes, cfg.k, self.n_rot)
        self.min_rows, self.min_rows_flag = cfg.super_classes, "--super-classes"
        self.present: torch.Tensor | None = None

    def describe(self) -> str:
        rot = f"{self.n_rot} rotation" + ("s" if self.n_rot > 1 else "")
        return f", {self.cfg.super_classes} super-classes × k {self.cfg.k} sub-classes, {rot}"

    def cluster(self, x: torch.Tensor | FeatureStore, seed: int, n_rows: int) -> Clusters:
        # The batched sub-class k-means needs the whitened rows in device memory: only the raw
        # features and the PCA are streamed.
        if isinstance(x, FeatureStore):
            x = x.data.to(self.dist.device, torch.float32)
        h = dc.cluster_hierarchy(x, self.cfg.super_classes, self.cfg.k,
                                 niter=self.cfg.kmeans_iters, seed=seed, group=self.dist.group)
        return Clusters(h.targets, h.loss, {"clustering_loss_super": h.super_loss})

    def begin_epoch(self, assignment: np.ndarray) -> None:
        present = dc.present_targets(assignment, self.n_targets)
        self.present = torch.from_numpy(present).to(self.dist.device)

    def inputs(self, images: torch.Tensor, keep: torch.Tensor, rank_seed: int, epoch: int,
               batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each image rotated by r·90°, r drawn from the batch's own generator; returns the
        rotated images and the readable rows' rotations int64 [b]."""
        gen = torch.Generator().manual_seed(derive_seed(rank_seed, STREAM_ROTATION, epoch, batch))
        rotations = dc.draw_rotations(len(images), self.n_rot, gen).to(images.device)
        if self.n_rot > 1:
            images = dc.rotate(images, rotations)
        return images, rotations[keep]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor,
             aux: torch.Tensor | None) -> torch.Tensor:
        return self.loss_and_stats(logits, targets, aux)[0]

    def loss_and_stats(self, logits: torch.Tensor, targets: torch.Tensor,
                       aux: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The total loss, and its (super-class × rotation, sub-class) terms and top-1
        accuracies, in the order of :attr:`step_stats`."""
        parts = dc.deepercluster_loss(logits, targets, aux, self.present, self.cfg.super_classes,
                                      self.cfg.k, self.n_rot)
        stats = torch.stack([parts.super_rot.detach(), parts.sub.detach(), parts.super_rot_acc,
                             parts.sub_acc]).float().cpu()
        return parts.total, stats

    def metrics(self, assignment: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        """NMI of the super-classes with the labels, and how many super-classes are used."""
        sup = np.where(assignment >= 0, assignment // self.cfg.k, -1)
        return {"nmi_labels_super": masked_nmi(sup, labels),
                "nonempty_super_classes": int(len(np.unique(sup[sup >= 0])))}


def make_method(cfg: Config, dist: Distribution) -> Method:
    """The method object of ``cfg.method`` ("deepcluster" or "deepercluster")."""
    return DeeperCluster(cfg, dist) if cfg.method == "deepercluster" else DeepCluster(cfg, dist)
