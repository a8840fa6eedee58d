"""The paper's linear evaluation (DeepCluster, Caron et al. 2018, Table 1): a linear classifier
on the pooled output of one frozen conv layer, trained by SGD on augmented crops for a number of
epochs with the reference's learning-rate decay, and scored top-1 / top-5 on centre or ten crops.

The frozen network is seen only through ``embed`` (images -> pooled features), so this module
knows nothing of the application's models or data sets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class SGDSettings:
    """The reference's defaults: lr 0.01, momentum 0.9, weight decay 1e-4, lr_t =
    lr / sqrt(1 + lr · wd · t) at step t."""

    epochs: int = 90
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4


@dataclass
class ProtocolResult:
    """Per epoch {"epoch", "loss", "top1", "top5"}, and the best epoch by top-1."""

    epochs: list[dict] = field(default_factory=list)

    @property
    def best(self) -> dict:
        """The epoch record with the highest validation top-1 (the first on ties)."""
        return max(self.epochs, key=lambda r: (r["top1"], -r["epoch"]))


def ten_crops(images: torch.Tensor, fraction: float = 224 / 256) -> torch.Tensor:
    """The four corner crops, the centre crop and their mirror images, each resized back.

    images float [B, C, H, W] -> float [10·B, C, H, W] (crop c of image b at row c·B + b);
    each crop is ``fraction`` of the side, as torchvision's TenCrop(224) after Resize(256).
    """
    h, w = images.shape[-2:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    tops = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
    crops = [images[..., t:t + ch, s:s + cw] for t, s in tops]
    crops += [c.flip(-1) for c in crops]
    return F.interpolate(torch.cat(crops), size=(h, w), mode="bilinear", align_corners=False)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
                 ) -> list[int]:
    """How many rows have their label among the top k scores, for each k (k capped at the
    number of classes). logits float [B, K], labels int64 [B]."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return [int(hit[:, :k].any(1).sum()) for k in ks]


def _train_epoch(head: nn.Linear, embed, batches: Iterable, opt: torch.optim.SGD,
                 sgd: SGDSettings, step: int, on_batch) -> tuple[float, int]:
    """One epoch of SGD on the head; returns (mean loss, global step after the epoch)."""
    total, seen = 0.0, 0
    for images, labels in batches:
        lr = sgd.lr / math.sqrt(1 + sgd.lr * sgd.weight_decay * step)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.no_grad():
            x = embed(images)
        loss = F.cross_entropy(head(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(labels)
        seen += len(labels)
        step += 1
        on_batch()
    return total / max(seen, 1), step


@torch.no_grad()
def evaluate_head(head: nn.Linear, embed, batches: Iterable, tencrop: bool) -> tuple[float, float]:
    """(top-1, top-5) accuracy of ``head`` on ``batches`` of (float [B, C, H, W], int64 [B]);
    with ``tencrop`` the softmax scores of the ten crops are averaged, as the reference does."""
    correct, n = [0, 0], 0
    for images, labels in batches:
        if tencrop:
            b = len(labels)
            probs = F.softmax(head(embed(ten_crops(images))), 1)
            scores = probs.view(10, b, -1).mean(0)
        else:
            scores = head(embed(images))
        for i, c in enumerate(topk_correct(scores, labels)):
            correct[i] += c
        n += len(labels)
    if n == 0:
        raise ValueError("the validation split holds no readable image")
    return correct[0] / n, correct[1] / n


def train_linear_protocol(embed: Callable[[torch.Tensor], torch.Tensor], dims: int,
                          classes: int, train: Batches, val: Callable[[], Iterable], *,
                          sgd: SGDSettings, tencrop: bool, device: torch.device,
                          seed: int = 0,
                          on_epoch: Callable[[dict], object] | None = None,
                          on_batch: Callable[[], object] | None = None) -> ProtocolResult:
    """Train a linear classifier Linear(dims, classes) on frozen features and score each epoch.

    embed: float [B, C, H, W] -> float [B, dims] (frozen, no gradient needed); ``train(e)``
    yields epoch e's augmented (images, int64 labels) batches; ``val()`` the validation batches
    (centre crops); the head lives on ``device`` and starts at N(0, 0.01), zero bias.
    ``on_epoch`` receives each epoch's record, ``on_batch`` is called after each step.
    Raises ValueError for epochs < 1.
    """
    if sgd.epochs < 1:
        raise ValueError(f"the linear protocol needs at least 1 epoch, got {sgd.epochs}")
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(dims, classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    head.to(device)
    opt = torch.optim.SGD(head.parameters(), lr=sgd.lr, momentum=sgd.momentum,
                          weight_decay=sgd.weight_decay)
    result, step = ProtocolResult(), 0
    for epoch in range(sgd.epochs):
        head.train()
        loss, step = _train_epoch(head, embed, train(epoch), opt, sgd, step,
                                  on_batch or (lambda: None))
        head.eval()
        top1, top5 = evaluate_head(head, embed, val(), tencrop)
        record = {"epoch": epoch + 1, "loss": loss, "top1": top1, "top5": top5,
                  "lr": opt.param_groups[0]["lr"]}
        result.epochs.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return result
