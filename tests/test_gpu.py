"""GPU-only checks (marked ``gpu``, skipped without CUDA): the ops on CUDA tensors for the
``triton`` and ``cuda`` backends at realistic sizes, float64 brute-force agreement of the
default precision, and the deterministic update mode. (tests/test_kernels_triton.py also runs
compiled on the GPU when CUDA is present.)"""

from __future__ import annotations

import pytest
import torch

from fastdc import ops
from fastdc.ops.registry import available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BACKENDS = ["triton", "cuda"]


def _need(backend: str, op: str) -> None:
    if backend not in available(op):
        pytest.skip(f"backend {backend!r} did not load")


def _unit_rows(n, d, gen):
    x = torch.randn(n, d, generator=gen, device="cuda")
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_assign_default_agrees_with_float64(backend, metric):
    _need(backend, "assign")
    g = torch.Generator(device="cuda").manual_seed(0)
    x, c = _unit_rows(200_000, 256, g), _unit_rows(2_000, 256, g)  # DeepCluster-like features
    dist, idx = ops.assign(x, c, metric=metric, backend=backend)
    xd, cd = x.double(), c.double()
    agree, rel_max, n_clear = 0, 0.0, 0
    for s in range(0, x.shape[0], 20_000):
        sc = xd[s:s + 20_000] @ cd.T
        if metric == "l2":
            sc = (xd[s:s + 20_000] ** 2).sum(1, keepdim=True) + (cd**2).sum(1) - 2 * sc
        else:
            sc = -sc
        top = sc.topk(2, dim=1, largest=False)
        best = top.values[:, 0]
        clear = (top.values[:, 1] - best) > 1e-6 * best.abs().clamp_min(1)
        agree += int(((idx[s:s + 20_000] == top.indices[:, 0]) & clear).sum())
        n_clear += int(clear.sum())
        ref = best if metric == "l2" else -best
        rel = ((dist[s:s + 20_000].double() - ref).abs() / ref.abs().clamp_min(1e-3))[clear]
        rel_max = max(rel_max, float(rel.max()))
    assert agree / n_clear >= 0.9999
    assert rel_max <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_assign_batched_matches_per_problem(backend):
    _need(backend, "assign")
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(4, 5_000, 64, generator=g, device="cuda")
    c = torch.randn(4, 300, 64, generator=g, device="cuda")
    dist, idx = ops.assign(x, c, backend=backend)
    for b in range(4):
        d1, i1 = ops.assign(x[b], c[b], backend=backend)
        assert torch.equal(i1, idx[b]) and torch.equal(d1, dist[b])


def test_triton_is_the_automatic_choice_on_cuda():
    x = torch.randn(100, 16, device="cuda")
    c = torch.randn(10, 16, device="cuda")
    _need("triton", "assign")
    dist, idx = ops.assign(x, c)
    ref_d, ref_i = ops.assign(x, c, backend="torch")
    assert (idx == ref_i).float().mean() >= 0.99


@pytest.mark.parametrize("backend", BACKENDS)
def test_cluster_sums_large(backend):
    _need(backend, "cluster_sums")
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(200_000, 256, generator=g, device="cuda")
    idx = torch.randint(0, 1000, (200_000,), generator=g, device="cuda")
    sums, counts = ops.cluster_sums(x, idx, 1000, backend=backend)
    ref_s, ref_c = ops.cluster_sums(x, idx, 1000, backend="torch")
    torch.testing.assert_close(sums, ref_s, rtol=1e-4, atol=1e-3)
    assert torch.equal(counts, ref_c)


def test_cluster_sums_deterministic_mode_is_bit_identical():
    _need("triton", "cluster_sums")
    from fastdc.kernels.cluster_sums import cluster_sums_triton

    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(1, 300_000, 256, generator=g, device="cuda")
    idx = torch.randint(0, 50, (1, 300_000), generator=g, device="cuda")  # big segments
    runs = [cluster_sums_triton(x, idx, 50, None, True) for _ in range(3)]
    for sums, counts in runs[1:]:
        assert torch.equal(sums, runs[0][0]) and torch.equal(counts, runs[0][1])
    ref_s, _ = ops.cluster_sums(x, idx, 50, backend="torch")
    torch.testing.assert_close(runs[0][0], ref_s, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resplit_large_bit_identical(backend):
    _need(backend, "resplit_empty")
    g = torch.Generator().manual_seed(4)
    c = torch.randn(2, 10_000, 256, generator=g)
    cnt = torch.randint(1, 300, (2, 10_000), generator=g).float()
    cnt[torch.rand(2, 10_000, generator=g) < 0.01] = 0
    out = ops.resplit_empty(c.cuda(), cnt.cuda(), seed=5, n_frozen=3, backend=backend)
    ref = ops.resplit_empty(c.cuda(), cnt.cuda(), seed=5, n_frozen=3, backend="torch")
    for a, b in zip(out, ref, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sobel_imagenet_batch(backend, out_dtype):
    _need(backend, "sobel")
    images = torch.randint(0, 256, (16, 3, 224, 224), dtype=torch.uint8, device="cuda")
    out = ops.sobel(images, out_dtype=out_dtype, backend=backend)
    ref = ops.sobel(images, out_dtype=out_dtype, backend="torch")
    tol = {torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[out_dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=1e-3)
