"""Triton kernels, installed as ``fastdc.kernels``: importing registers backend ``triton``.

One module per op (assign, knn, cluster_sums, resplit_empty, sobel); each registers its function
with :func:`fastdc.ops.registry.register`. GPU tensors run compiled; CPU tensors run only under
``TRITON_INTERPRET=1`` (Triton's interpreter, for tests).
"""

from . import assign, cluster_sums, knn, resplit_empty, sobel

__all__ = ["assign", "cluster_sums", "knn", "resplit_empty", "sobel"]
