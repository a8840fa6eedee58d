"""The end of a run: how good are the learned features?

The trained net, the same net at its random init, and (for data held in memory) the raw
pixels are compared by k-means NMI with the class labels (k = the number of classes) and by the
accuracy of a linear probe trained on 80 % of the images and tested on the rest
(:func:`fastdc.evaluation.compare_features`); runs with ``--clustering pic`` also show the NMI
of PIC's own clustering beside k-means'. Labels are used here only, never in training.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from fastdc.deepcluster.config import Config
from fastdc.deepcluster.data import Source
from fastdc.deepcluster.features import FeaturePass
from fastdc.deepcluster.models import DeepClusterNet
from fastdc.deepcluster.run_control import progress_bar
from fastdc.deepcluster.seeds import STREAM_SPLIT, derive_seed
from fastdc.evaluation import compare_features


def final_evaluation(cfg: Config, source: Source, features: FeaturePass, trained: DeepClusterNet,
                     random_init: DeepClusterNet, progress: bool) -> dict[str, Any] | None:
    """k-means NMI and linear-probe accuracy of each feature set (see the module docstring).

    Returns {"classes", "train", "test", "trained", "random init"[, "raw pixels"], "time"}, or
    None (with a note on stderr) when the data has no class labels.
    """
    labels = source.labels
    if labels is None:
        print("final evaluation skipped: the data has no class labels", file=sys.stderr)
        return None
    t_start = time.perf_counter()
    columns: dict[str, torch.Tensor] = {}
    columns["trained"], ok = features(trained, "eval")
    columns["random init"], _ = features(random_init, "eval (init)")
    pixels = source.pixels(features.place.device)
    if pixels is not None:
        columns["raw pixels"] = pixels
    with progress_bar("evaluate", 2 * len(columns), progress) as bar:
        result = compare_features(columns, labels, ok, pca_dim=cfg.pca_dim, seed=cfg.seed,
                                  split_seed=derive_seed(cfg.seed, STREAM_SPLIT) % 2**31,
                                  on_step=bar.update, pic=cfg.clustering == "pic")
    result["time"] = time.perf_counter() - t_start
    return result
