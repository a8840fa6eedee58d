"""Linear probes of frozen features, the fixed train / test split they use, and the comparison
of several feature sets by k-means NMI and linear-probe accuracy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fastdc.evaluation.metrics import kmeans_nmi, pic_nmi


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, *, weight_decay: float = 1e-4, max_iter: int = 50,
                 seed: int = 0) -> float:
    """Test accuracy of a multinomial logistic regression trained on frozen features.

    train_x float [N, D], train_y int64 [N], test_x float [M, D], test_y int64 [M] (one
    device). Features are standardised with the training statistics; the classifier is fitted
    by full-batch L-BFGS (deterministic) with an L2 penalty ``weight_decay``. Returns a float in
    [0, 1]. Raises ValueError for an empty split.
    """
    if train_x.shape[0] == 0 or test_x.shape[0] == 0:
        raise ValueError("linear probe needs non-empty train and test splits")
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(xtr.shape[1], classes, generator=gen) * 0.01).to(xtr.device)
    w.requires_grad_(True)
    b = torch.zeros(classes, device=xtr.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, train_y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (xte @ w + b).argmax(1)
    return float((pred == test_y).float().mean())


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random split of range(n): (train int64 [n - m], test int64 [m]), m ≥ 1.
    Raises ValueError for n < 2."""
    if n < 2:
        raise ValueError(f"cannot split {n} item(s) into train and test")
    perm = np.random.default_rng(seed).permutation(n)
    m = min(n - 1, max(1, round(n * test_fraction)))
    return np.sort(perm[m:]), np.sort(perm[:m])


def compare_features(columns: dict[str, torch.Tensor], labels: np.ndarray, ok: np.ndarray, *,
                     pca_dim: int, seed: int, split_seed: int,
                     on_step: Callable[[], object] | None = None, pic: bool = False) -> dict:
    """k-means NMI (k = the number of classes) and linear-probe accuracy of each feature set,
    and with ``pic`` the NMI of PIC clustering (:func:`pic_nmi`) beside the k-means one.

    columns: name -> float [N, D_name] (one device); labels: int64 [N]; ok: bool [N] (False:
    left out). The probe trains on a fixed 80 % of the kept rows (``split_seed``) and is
    scored on the rest. ``on_step`` is called after each of the 2 × len(columns) fits.
    Returns {"classes", "train", "test", name: {"kmeans_nmi", "linear_probe_acc"[, "pic_nmi",
    "pic_clusters"]}, ...}.
    """
    step = on_step or (lambda: None)
    n_classes = len(np.unique(labels))
    keep = np.flatnonzero(ok)
    tr, te = split_indices(len(keep), 0.2, split_seed)
    tr, te = keep[tr], keep[te]
    result: dict = {"classes": n_classes, "train": len(tr), "test": len(te)}
    for name, full in columns.items():
        device = full.device
        kept = full[torch.from_numpy(keep).to(device)] if len(keep) < len(ok) else full
        score, _ = kmeans_nmi(kept, labels[keep], n_classes, pca_dim=pca_dim, seed=seed)
        step()
        y = torch.from_numpy(labels).to(device)
        ti, vi = torch.from_numpy(tr).to(device), torch.from_numpy(te).to(device)
        acc = linear_probe(full[ti], y[ti], full[vi], y[vi], seed=seed)
        step()
        result[name] = {"kmeans_nmi": score, "linear_probe_acc": acc}
        if pic:
            result[name]["pic_nmi"], result[name]["pic_clusters"] = pic_nmi(
                kept, labels[keep], pca_dim=pca_dim)
    return result
