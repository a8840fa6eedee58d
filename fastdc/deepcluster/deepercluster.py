"""DeeperCluster's pieces for the trainer (Caron et al., ICCV 2019, "Unsupervised Pre-Training
of Image Features on Non-Curated Data"): rotations, two-level targets, the head and the loss.

Targets. The features are clustered into S super-classes, then the rows of every super-class
into k sub-classes (:func:`fastdc.engine.hierarchy.two_level_kmeans`: one batched, masked k-means
call
for all super-classes). A row's *target* is ``super * k + sub`` in [0, S·k), stored exactly like
DeepCluster's cluster id (int64 [N], -1 for unreadable images), so the trainer's sampler,
checkpoints and NMI metrics treat both methods alike. A super-class with fewer than k rows has
only ``k_eff[s] = size_s`` sub-classes; its other targets are empty, and the sampler (uniform
over *non-empty* targets) never draws them.

Rotations. Each training image is rotated by r·90°, r drawn uniformly in [0, R) (R = 4, or 1
with ``--no-rotation``). The clustering features are computed on unrotated centre crops.

Head and loss — one head with masking. The head is one ``Linear(F, S·R + S·k)`` (a fresh
N(0, 0.01) layer at every re-clustering, like DeepCluster's head):

- columns [0, S·R): the (super-class × rotation) logits, target ``super * R + r``;
- columns [S·R, S·R + S·k): k sub-class logits per super-class. A row's sub-class loss uses
  only the k columns of *its own* super-class (a softmax over the sub-classes of that
  super-class, as if each super-class had its own sub-head), with the columns of empty
  sub-classes masked to -inf.

loss = CE(super × rotation) + CE(sub-class | super-class), each a mean over the batch. The two
terms and their top-1 accuracies are logged apart, as the reference logs them.

Why one head and not S heads: the whole model stays one ``nn.Module`` whose ``forward`` gives
every logit, so DDP sees every parameter used in every step (no unused sub-heads to declare),
the head is rebuilt, optimised and checkpointed exactly as DeepCluster's, and the cost is one
GEMM of B × F × S·(R + k), the same as DeepCluster's head with S·k clusters. The paper instead
trains each super-class's sub-head on its own group of GPUs; the loss is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastdc.engine import collectives as fdist
from fastdc.engine import two_level_kmeans


def head_size(n_super: int, n_sub: int, n_rot: int) -> int:
    """Outputs of DeeperCluster's head: S·R (super-class × rotation) + S·k (sub-classes)."""
    return n_super * n_rot + n_super * n_sub


def rotate(images: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate image i by ``rotations[i]`` × 90° counter-clockwise.

    images: float [B, C, H, W] with H == W (any device); rotations: int64 [B] in [0, 4).
    Returns a new [B, C, H, W] tensor. Raises ValueError for non-square images.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotations need square images, got {tuple(images.shape[-2:])}")
    out = images.clone()
    rot = rotations.to(images.device)
    for r in range(1, 4):
        sel = (rot == r).nonzero().flatten()
        if len(sel):
            out[sel] = torch.rot90(images[sel], r, dims=(-2, -1))
    return out


def draw_rotations(n: int, n_rot: int, generator: torch.Generator) -> torch.Tensor:
    """int64 [n] rotation ids, uniform in [0, n_rot), drawn on the CPU from ``generator``."""
    if n_rot == 1:
        return torch.zeros(n, dtype=torch.int64)
    return torch.randint(n_rot, (n,), generator=generator)


def split_targets(targets: torch.Tensor, n_sub: int) -> tuple[torch.Tensor, torch.Tensor]:
    """targets int64 [...] = super·k + sub -> (super, sub), each int64 [...]."""
    return torch.div(targets, n_sub, rounding_mode="floor"), targets % n_sub


def present_targets(assignment: np.ndarray, n_targets: int) -> np.ndarray:
    """bool [n_targets]: which targets have at least one row in ``assignment`` (int [N], -1
    ignored). For DeeperCluster, ``present.reshape(S, k)`` marks the usable sub-classes."""
    valid = assignment[assignment >= 0]
    return np.bincount(valid, minlength=n_targets)[:n_targets] > 0


@dataclass
class LossParts:
    """The two terms of DeeperCluster's loss (float32 scalars, graph attached) and the batch's
    top-1 accuracies on each (float32 scalars in [0, 1], no graph)."""

    total: torch.Tensor
    super_rot: torch.Tensor
    sub: torch.Tensor
    super_rot_acc: torch.Tensor
    sub_acc: torch.Tensor


def deepercluster_loss(logits: torch.Tensor, targets: torch.Tensor, rotations: torch.Tensor,
                       present: torch.Tensor, n_super: int, n_sub: int, n_rot: int
                       ) -> LossParts:
    """CE over (super-class × rotation) + CE over the sub-class inside the super-class.

    logits: float [B, S·R + S·k] (the head's output); targets: int64 [B] = super·k + sub;
    rotations: int64 [B] in [0, R); present: bool [S·k] (False = empty sub-class: masked out
    of its super-class's softmax). Returns :class:`LossParts` (means over the batch).
    """
    logits = logits.float()
    b = logits.shape[0]
    sup, sub = split_targets(targets, n_sub)
    sr = n_super * n_rot
    super_rot = F.cross_entropy(logits[:, :sr], sup * n_rot + rotations)
    sub_logits = logits[:, sr:].reshape(b, n_super, n_sub)[torch.arange(b, device=logits.device),
                                                           sup]
    allowed = present.to(logits.device).reshape(n_super, n_sub)[sup]
    sub_logits = sub_logits.masked_fill(~allowed, float("-inf"))
    sub_loss = F.cross_entropy(sub_logits, sub)
    with torch.no_grad():
        super_rot_acc = (logits[:, :sr].argmax(dim=1) == sup * n_rot + rotations).float().mean()
        sub_acc = (sub_logits.argmax(dim=1) == sub).float().mean()
    return LossParts(super_rot + sub_loss, super_rot, sub_loss, super_rot_acc, sub_acc)


@dataclass
class HierarchyResult:
    """What :func:`cluster_hierarchy` returns, on every rank.

    targets: int64 [N_all] (all ranks' rows in rank order); loss: mean squared distance of the
    rows to their sub-class centroid (0 for rows of a super-class too small to cluster);
    super_loss: the same at level 1; k_eff: int64 [S] usable sub-classes per super-class.
    """

    targets: torch.Tensor
    loss: float
    super_loss: float
    k_eff: torch.Tensor


def cluster_hierarchy(x: torch.Tensor, n_super: int, n_sub: int, *, niter: int, seed: int,
                      group: fdist.Group | None = None) -> HierarchyResult:
    """Two-level k-means of this rank's rows x [n_r, D] float32 (all rows without a group),
    then the targets of every rank's rows gathered on every rank (``gather_rows``).

    Raises ValueError when the rows (over all ranks) are fewer than ``n_super``.
    """
    h = two_level_kmeans(x, n_super, n_sub, niter=niter, seed=seed, group=group)
    n_all = int(h.super_sizes.sum())
    sub_obj = 0.0 if h.sub_result is None else float(h.sub_result.obj[-1].sum())
    return HierarchyResult(
        targets=fdist.gather_rows(h.targets, group),
        loss=sub_obj / max(n_all, 1),
        super_loss=float(h.super_result.obj[-1]) / max(n_all, 1),
        k_eff=h.k_eff,
    )
