"""fastdc: fast DeepCluster — fused k-means kernels and a thin trainer.

Public entry points:

- :mod:`fastdc.kmeans` — ``Kmeans`` (a drop-in for ``faiss.Kmeans``) and the functional API
  ``kmeans``, ``assign``, ``update_centroids``, ``resplit_empty`` on torch tensors;
- :mod:`fastdc.clustering` — DeepCluster's ``clustering.py`` API;
- :mod:`fastdc.engine.pca` — PCA whitening on torch tensors;
- :func:`fastdc.sobel` / :class:`fastdc.Sobel` — the fused Sobel front end.
"""

from fastdc.ops import Sobel, sobel

__version__ = "0.1.0"
__all__ = ["Sobel", "sobel", "__version__"]
