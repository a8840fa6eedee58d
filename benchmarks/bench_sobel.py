"""sobel on the CPU, side by side: the ``cpu`` backend vs the ``torch`` reference (DeepCluster's
two convolutions) on an ImageNet batch of 64×3×224×224, uint8 or float32 input, float32 output;
with a plain memory copy of the output's size for context."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.op_inputs import need
from benchmarks.report import record
from benchmarks.timing import measure
from fastdc.ops import sobel

B, H, W = 64, 224, 224


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_sobel(backend, dtype):
    need("sobel", backend)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (B, 3, H, W), generator=g, dtype=torch.uint8)
    if dtype == "float32":
        images = images.float() / 255
    seconds = measure(lambda: sobel(images, backend=backend)).best
    moved = images.numel() * images.element_size() + B * 2 * H * W * 4
    record(f"op_sobel_cpu_{B}x3x{H}x{W}_{dtype}",
           {"name": f"fastdc {backend}", "time_s": seconds, "GB/s": moved / seconds / 1e9},
           reference="fastdc torch", note="normalise + grey + Gx/Gy to fp32; GB/s = read+write")


def test_numpy_copy_bandwidth():
    """Context for the Sobel rows: a plain memory copy of a 64×2×224×224 fp32 batch."""
    a = np.ones(B * 2 * H * W, dtype=np.float32)
    b = np.empty_like(a)
    seconds = measure(lambda: np.copyto(b, a)).best
    record("op_copy_bandwidth_cpu", {"name": "numpy copy 25.7 MB", "time_s": seconds,
           "GB/s": 2 * a.nbytes / seconds / 1e9})
