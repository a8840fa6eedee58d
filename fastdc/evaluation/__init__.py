"""Evaluation of learned features, below the DeepCluster application and above the k-means
engine:

- :mod:`fastdc.evaluation.metrics` — NMI, ARI, purity and the contingency table
  (scikit-learn's), NMI over readable positions only, k-means and PIC NMI of features;
- :mod:`fastdc.evaluation.probes` — linear probes of frozen features, the fixed train / test
  split, and the side-by-side comparison of feature sets the trainer prints at the end;
- :mod:`fastdc.evaluation.linear_protocol` — the paper's linear evaluation: SGD on crops for
  one frozen conv layer, top-1 / top-5 on centre or ten crops, the best epoch.

Code outside this package imports these names from ``fastdc.evaluation`` itself.
"""

from fastdc.evaluation.linear_protocol import (
    ProtocolResult,
    SGDSettings,
    ten_crops,
    topk_correct,
    train_linear_protocol,
)
from fastdc.evaluation.metrics import (
    ari,
    contingency,
    kmeans_nmi,
    masked_nmi,
    nmi,
    pic_nmi,
    purity,
)
from fastdc.evaluation.probes import compare_features, linear_probe, split_indices

__all__ = [
    "ProtocolResult",
    "SGDSettings",
    "ari",
    "compare_features",
    "contingency",
    "kmeans_nmi",
    "linear_probe",
    "masked_nmi",
    "nmi",
    "pic_nmi",
    "purity",
    "split_indices",
    "ten_crops",
    "topk_correct",
    "train_linear_protocol",
]
