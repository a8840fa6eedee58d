"""PCA whitening on torch tensors (public face of :mod:`fastdc.engine.pca`)."""

from fastdc.engine import PCA, l2_normalize_rows, pca_whiten

__all__ = ["PCA", "l2_normalize_rows", "pca_whiten"]
