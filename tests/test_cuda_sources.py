"""The CUDA C sources (csrc/cuda/*.cu): they compile for sm_90 with nvcc when it is on PATH,
and the ``cuda`` backend (CuPy) matches the torch reference on a GPU (skipped without one)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

CUDA_DIR = Path(__file__).resolve().parents[1] / "csrc" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
EXPECTED = {"assign.cu", "cluster_sums.cu", "resplit_empty.cu", "sobel.cu"}


def test_every_op_has_a_cuda_source():
    assert EXPECTED <= {p.name for p in SOURCES}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cu_compiles_for_sm90(source, tmp_path):
    out = tmp_path / (source.stem + ".ptx")
    proc = subprocess.run(
        ["nvcc", "-arch=sm_90", "--ptx", "-std=c++17", "-o", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert ".entry" in out.read_text()  # at least one extern "C" kernel was emitted


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda_backend():
    return pytest.importorskip("fastdc.ops.cuda", reason="cupy is not installed")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("shape", [(1, 1, 5, 3), (3, 7, 40, 64), (1, 1030, 13, 257)])
def test_cuda_assign_matches_reference(shape, metric):
    cb = _cuda_backend()
    from fastdc.ops.assign import assign_ref

    B, N, K, D = shape
    x = torch.randn(B, N, D, device="cuda")
    c = torch.randn(B, K, D, device="cuda")
    dist, idx = cb.assign_cuda(x, c, metric)
    ref_d, ref_i = assign_ref(x, c, metric)
    assert not dist.isnan().any()
    assert (idx == ref_i).float().mean() >= 0.999
    torch.testing.assert_close(dist, ref_d, rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
@needs_cuda
def test_cuda_resplit_bit_identical():
    cb = _cuda_backend()
    from fastdc.ops.resplit_empty import resplit_empty_ref

    g = torch.Generator().manual_seed(0)
    c = torch.randn(3, 300, 65, generator=g)
    cnt = torch.randint(1, 6, (3, 300), generator=g).float()
    cnt[torch.rand(3, 300, generator=g) < 0.3] = 0
    u = torch.rand(3, 300, generator=g, dtype=torch.float64)
    c1, n1 = c.cuda(), cnt.cuda()
    s1 = cb.resplit_empty_cuda(c1, n1, u.cuda(), 2)
    c2, n2 = c.clone(), cnt.clone()
    s2 = resplit_empty_ref(c2, n2, u, 2)
    assert torch.equal(s1.cpu(), s2) and torch.equal(c1.cpu(), c2) and torch.equal(n1.cpu(), n2)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("in_dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_sobel_matches_reference(in_dtype, out_dtype):
    cb = _cuda_backend()
    from fastdc.ops.sobel import IMAGENET_MEAN, IMAGENET_STD, sobel_ref

    if in_dtype == torch.uint8:
        images = torch.randint(0, 256, (2, 3, 37, 45), dtype=torch.uint8, device="cuda")
    else:
        images = torch.randn(2, 3, 37, 45, device="cuda")
    out = cb.sobel_cuda(images, IMAGENET_MEAN, IMAGENET_STD, out_dtype)
    ref = sobel_ref(images, IMAGENET_MEAN, IMAGENET_STD, out_dtype)
    tol = {torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[out_dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=1e-3)


@pytest.mark.gpu
@needs_cuda
def test_cuda_cluster_sums_matches_reference():
    cb = _cuda_backend()
    from fastdc.ops.cluster_sums import cluster_sums_ref

    x = torch.randn(2, 3000, 65, device="cuda")
    idx = torch.randint(0, 50, (2, 3000), device="cuda")
    w = torch.rand(2, 3000, device="cuda")
    for weights in (None, w):
        sums, counts = cb.cluster_sums_cuda(x, idx, 50, weights)
        ref_s, ref_c = cluster_sums_ref(x, idx, 50, weights)
        torch.testing.assert_close(sums, ref_s, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(counts, ref_c, rtol=1e-5, atol=1e-4)
