"""cpu backend (fastdc._C): C++/OpenMP kernels against the references, thread-count
independence, poisoned outputs, ties, the registry's reasons, and the portable fallback path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdc.ops import registry as backends
from fastdc.ops.assign import assign_ref
from fastdc.ops.cluster_sums import cluster_sums_ref
from fastdc.ops.resplit_empty import resplit_empty_ref
from fastdc.ops.sobel import IMAGENET_MEAN, IMAGENET_STD, sobel_ref

_C = pytest.importorskip("fastdc._C", reason="the C++ extension is not built")
cpu = pytest.importorskip("fastdc.ops.cpu")

ROOT = Path(__file__).resolve().parents[1]

# (B, N, K, D): N = 1, K = 1, K > N, D = 1, 3, 257 (not a power of two), B = 3, N >= 1000,
# K not a multiple of the 16-centroid panel, N not a multiple of the 6-row tile.
SHAPES = [
    (1, 1, 1, 1),
    (1, 1, 5, 3),
    (1, 7, 20, 3),
    (1, 1000, 1, 3),
    (3, 7, 3, 257),
    (2, 1003, 37, 257),
    (3, 1201, 50, 1),
    (1, 1500, 1000, 64),
]
IDS = ["x".join(map(str, s)) for s in SHAPES]


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class threads:
    """Context manager: run with torch.get_num_threads() == n."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def ref_scores(x: torch.Tensor, c: torch.Tensor, metric: str) -> torch.Tensor:
    """float64 scores [B, N, K], smaller is better (L2 distance, or minus the inner product)."""
    x64, c64 = x.double(), c.double()
    if metric == "l2":
        return torch.cdist(x64, c64) ** 2
    return -(x64 @ c64.transpose(1, 2))


# --- assign -----------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_assign_matches_reference(shape, metric):
    B, N, K, D = shape
    x, c = randn(B, N, D, seed=N + K), randn(B, K, D, seed=D)
    dist, idx = cpu.assign_cpu(x=x, centroids=c, metric=metric)
    rdist, ridx = assign_ref(x, c, metric)
    assert dist.shape == (B, N) and idx.shape == (B, N) and idx.dtype == torch.int64
    torch.testing.assert_close(dist, rdist, rtol=1e-4, atol=1e-4 * D)
    # where the argmins differ (fp32 rounding on a near tie), both must be equally good in fp64
    s = ref_scores(x, c, metric)
    ours = s.gather(2, idx.unsqueeze(2)).squeeze(2)
    theirs = s.gather(2, ridx.unsqueeze(2)).squeeze(2)
    assert ((ours - theirs).abs() <= 1e-4 * (1 + theirs.abs())).all()
    assert (idx == ridx).float().mean() > 0.99


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_assign_matches_float64_argmin_without_near_ties(metric):
    B, N, K, D = 2, 1100, 70, 45
    x, c = randn(B, N, D, seed=1), randn(B, K, D, seed=2)
    dist, idx = cpu.assign_cpu(x=x, centroids=c, metric=metric)
    s = ref_scores(x, c, metric)
    top = s.topk(2, dim=2, largest=False)
    clear = (top.values[..., 1] - top.values[..., 0]) > 1e-3 * (1 + top.values[..., 0].abs())
    assert clear.float().mean() > 0.9
    assert torch.equal(idx[clear], top.indices[..., 0][clear])
    best = top.values[..., 0] if metric == "l2" else -top.values[..., 0]
    torch.testing.assert_close(dist.double(), best, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_assign_is_bit_identical_for_1_and_2_threads(metric):
    x, c = randn(1, 2003, 131, seed=3), randn(1, 307, 131, seed=4)
    with threads(1):
        d1, i1 = cpu.assign_cpu(x=x, centroids=c, metric=metric)
    with threads(2):
        d2, i2 = cpu.assign_cpu(x=x, centroids=c, metric=metric)
    assert torch.equal(i1, i2)
    assert torch.equal(d1.view(torch.int32), d2.view(torch.int32))  # bitwise, NaN-safe
    d3, i3 = (torch.empty_like(d1), torch.empty_like(i1))
    _C.assign(x.numpy(), c.numpy(), metric == "ip", d3.numpy(), i3.numpy(), 3)
    assert torch.equal(i1, i3) and torch.equal(d1.view(torch.int32), d3.view(torch.int32))


@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1), (2, 13, 17, 5), (1, 1001, 40, 257)], ids=lambda s: "x".join(map(str, s))
)
def test_assign_writes_every_output_element(shape):
    B, N, K, D = shape
    x, c = randn(B, N, D, seed=5), randn(B, K, D, seed=6)
    for ip in (False, True):
        dist = np.full((B, N), np.nan, np.float32)
        idx = np.full((B, N), -1, np.int64)
        _C.assign(x.numpy(), c.numpy(), ip, dist, idx, 2)
        assert np.isfinite(dist).all()
        assert ((idx >= 0) & (idx < K)).all()
        rd, ri = assign_ref(x, c, "ip" if ip else "l2")
        assert np.array_equal(idx, ri.numpy())


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_assign_ties_go_to_the_smallest_index(metric):
    K, D = 40, 19
    c = randn(K, D, seed=7)
    # centroid 3 also sits at 19 (another lane) and 35 (another panel); 0 also at 16 (same
    # lane, next panel); all of them copies, so scores tie exactly
    c[19] = c[3]
    c[35] = c[3]
    c[16] = c[0]
    x = torch.stack([c[3], c[0], c[35], c[16]])
    if metric == "ip":  # make the tied centroids the unique best inner product
        c = c / c.norm(dim=1, keepdim=True)
        x = torch.stack([c[3], c[0], c[35], c[16]])
    _, idx = cpu.assign_cpu(x=x[None], centroids=c[None], metric=metric)
    assert idx[0].tolist() == [3, 0, 3, 0]
    # every centroid identical: index 0 wins for every row
    same = c[:1].expand(K, D).contiguous()
    _, idx = cpu.assign_cpu(x=randn(1, 33, D, seed=8), centroids=same[None], metric=metric)
    assert (idx == 0).all()


def test_assign_l2_distance_is_clamped_at_zero():
    c = randn(1, 5, 64, seed=9) * 100
    x = c[:, [4, 2, 2]].clone()  # rows equal to centroids: exact distance 0
    dist, idx = cpu.assign_cpu(x=x, centroids=c, metric="l2")
    assert idx[0].tolist() == [4, 2, 2]
    assert (dist >= 0).all()
    assert (dist <= 1e-3 * (c * c).sum(-1).max()).all()


# --- cluster_sums -----------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_cluster_sums_match_reference(shape, weighted):
    B, N, K, D = shape
    x = randn(B, N, D, seed=10)
    idx = torch.randint(K, (B, N), generator=torch.Generator().manual_seed(11))
    w = torch.rand(B, N, generator=torch.Generator().manual_seed(12)) if weighted else None
    sums, counts = cpu.cluster_sums_cpu(x=x, idx=idx, k=K, weights=w)
    rsums, rcounts = cluster_sums_ref(x, idx, K, w)
    # float64 accumulation in row order, exact products: same bits as the reference
    assert torch.equal(sums, rsums)
    assert torch.equal(counts, rcounts)


def test_cluster_sums_bit_identical_for_1_and_2_threads_and_poisoned():
    B, N, K, D = 2, 3001, 97, 33
    x = randn(B, N, D, seed=13)
    idx = torch.randint(K - 3, (B, N), generator=torch.Generator().manual_seed(14))  # 3 empty
    w = torch.rand(B, N, generator=torch.Generator().manual_seed(15))
    out = []
    for n in (1, 2):
        sums = np.full((B, K, D), np.nan, np.float32)
        counts = np.full((B, K), np.nan, np.float32)
        _C.cluster_sums(x.numpy(), idx.numpy(), w.numpy(), sums, counts, n)
        assert np.isfinite(sums).all() and np.isfinite(counts).all()
        assert (sums[:, K - 3 :] == 0).all() and (counts[:, K - 3 :] == 0).all()
        out.append((sums, counts))
    assert np.array_equal(out[0][0].view(np.int32), out[1][0].view(np.int32))
    assert np.array_equal(out[0][1].view(np.int32), out[1][1].view(np.int32))


def test_cluster_sums_rejects_out_of_range_ids():
    x = randn(1, 4, 3, seed=16)
    sums, counts = np.zeros((1, 2, 3), np.float32), np.zeros((1, 2), np.float32)
    for bad in (2, -1):
        idx = np.array([[0, 1, bad, 0]], np.int64)
        with pytest.raises(IndexError, match="outside"):
            _C.cluster_sums(x.numpy(), idx, None, sums, counts, 2)


# --- resplit_empty ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_frozen", [0, 3])
@pytest.mark.parametrize("B,K,D", [(1, 1, 1), (1, 12, 7), (3, 40, 257)])
def test_resplit_identical_to_reference(B, K, D, n_frozen):
    n_frozen = min(n_frozen, K)
    g = torch.Generator().manual_seed(K * 7 + D)
    c = torch.randn(B, K, D, generator=g)
    counts = torch.randint(0, 6, (B, K), generator=g).float()  # integers: exact fp64 cumsums
    counts[0, -1] = 0  # at least one empty slot
    if K > 4:
        counts[-1, 1::2] = 0  # many empties: later splits see the updated weights
    u = torch.rand(B, K, generator=g, dtype=torch.float64)
    rc, rn = c.clone(), counts.clone()
    rsplit = resplit_empty_ref(rc, rn, u, n_frozen)
    nsplit = cpu.resplit_empty_cpu(centroids=c, counts=counts, uniforms=u, n_frozen=n_frozen)
    assert torch.equal(nsplit, rsplit)
    assert torch.equal(c, rc)
    assert torch.equal(counts, rn)
    if n_frozen == 0 and K > 1:
        assert int(nsplit.sum()) > 0


def test_resplit_falls_back_to_counts_and_stops_without_donors():
    # every count <= 1: weights max(count - 1, 0) sum to 0, so the counts themselves are used
    c = randn(1, 6, 4, seed=17)
    counts = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0, 1.0]])
    u = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.7, 0.3]], dtype=torch.float64)
    rc, rn = c.clone(), counts.clone()
    rsplit = resplit_empty_ref(rc, rn, u, 0)
    nsplit = cpu.resplit_empty_cpu(centroids=c, counts=counts, uniforms=u, n_frozen=0)
    assert torch.equal(nsplit, rsplit) and torch.equal(c, rc) and torch.equal(counts, rn)
    # all empty: nobody can donate, nothing changes
    zero = torch.zeros(1, 6)
    c2 = c.clone()
    assert cpu.resplit_empty_cpu(centroids=c2, counts=zero, uniforms=u, n_frozen=0).item() == 0
    assert torch.equal(c2, c)


# --- sobel ------------------------------------------------------------------------------------


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("normalise", [True, False])
@pytest.mark.parametrize("in_dtype", [torch.uint8, torch.float32])
def test_sobel_matches_reference(in_dtype, normalise, out_dtype):
    B, H, W = 3, 37, 45  # odd sizes, more rows than one 32-row band
    g = torch.Generator().manual_seed(18)
    if in_dtype == torch.uint8:
        images = torch.randint(0, 256, (B, 3, H, W), generator=g, dtype=torch.uint8)
    else:
        images = torch.rand(B, 3, H, W, generator=g)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalise else (None, None)
    out = cpu.sobel_cpu(images=images, mean=mean, std=std, out_dtype=out_dtype)
    ref = sobel_ref(images, mean, std, torch.float32)
    assert out.shape == (B, 2, H, W) and out.dtype == out_dtype
    if out_dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:  # one rounding of a value within 1e-5 of the reference: at most one unit apart
        expect = ref.to(out_dtype).float()
        ulp = (2.0**-10 if out_dtype == torch.float16 else 2.0**-7) * expect.abs()
        assert ((out.float() - expect).abs() <= ulp + 1e-6).all()


def test_sobel_tiny_images_and_every_element_written():
    for H, W in [(1, 1), (1, 5), (4, 1), (2, 2)]:
        images = torch.randint(0, 256, (2, 3, H, W), dtype=torch.uint8)
        out = np.full((2, 2, H, W), np.nan, np.float32)
        mean, std = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)
        _C.sobel(images.numpy(), mean, std, out, 0, 2)
        ref = sobel_ref(images, IMAGENET_MEAN, IMAGENET_STD, torch.float32)
        np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-5)


# --- registry and reasons ---------------------------------------------------------------------


def test_registry_picks_cpu_for_float32_and_torch_for_float64():
    x, c = randn(1, 10, 4, seed=19), randn(1, 3, 4, seed=20)
    impl = backends.select("assign", x=x, centroids=c, metric="l2", precision="default")
    assert impl.backend == "cpu"
    why = cpu._assign_reasons(x=x.double(), centroids=c.double(), metric="l2")
    assert why and "float32" in why[0]
    impl = backends.select(
        "assign", x=x.double(), centroids=c.double(), metric="l2", precision="default"
    )
    assert impl.backend == "torch"


def test_reasons_mention_device_for_non_cpu_tensors():
    x = torch.empty(1, 10, 4, device="meta")
    c = torch.empty(1, 3, 4, device="meta")
    assert any("device" in r for r in cpu._assign_reasons(x=x, centroids=c, metric="l2"))
    idx = torch.empty(1, 10, dtype=torch.int64, device="meta")
    assert any("device" in r for r in cpu._sums_reasons(x=x, idx=idx, k=3, weights=None))
    img = torch.empty(1, 3, 8, 8, dtype=torch.uint8, device="meta")
    assert any("device" in r for r in cpu._sobel_reasons(img, None, None, torch.float32))
    img = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    assert not cpu._sobel_reasons(img, None, None, torch.float32)
    assert any("float64" in r for r in cpu._sobel_reasons(img, None, None, torch.float64))


def test_simd_name():
    assert _C.simd() in ("avx2", "generic")
    assert cpu.simd() == _C.simd()


GENERIC_SCRIPT = """
import torch
from fastdc import _C
from fastdc.ops import cpu as cpu
from fastdc.ops.assign import assign_ref
assert _C.simd() == "generic", _C.simd()
g = torch.Generator().manual_seed(0)
x, c = torch.randn(2, 1003, 37, generator=g), torch.randn(2, 41, 37, generator=g)
for metric in ("l2", "ip"):
    d, i = cpu.assign_cpu(x=x, centroids=c, metric=metric)
    rd, ri = assign_ref(x, c, metric)
    assert (i == ri).float().mean() > 0.99
    torch.testing.assert_close(d, rd, rtol=1e-4, atol=1e-3)
print("ok")
"""


def test_generic_fallback_path_matches_reference():
    env = dict(os.environ, FASTDC_CPU_SIMD="generic", PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, "-c", GENERIC_SCRIPT], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_sobel_half_conversion_rounds_like_torch(out_dtype):
    # sparse pixels of magnitude 1e-10 .. 1e6: float16 subnormals, overflow to inf, and ordinary
    # values; wherever the float32 results agree bitwise, the conversion must agree bitwise too
    g = torch.Generator().manual_seed(21)
    B, H, W = 2, 48, 40
    mask = torch.rand(B, 1, H, W, generator=g) < 0.05
    mag = 10 ** (torch.rand(B, 1, H, W, generator=g) * 16 - 10)
    sign = torch.where(torch.rand(B, 1, H, W, generator=g) < 0.5, -1.0, 1.0)
    images = (mask * mag * sign).expand(B, 3, H, W).contiguous()
    out = cpu.sobel_cpu(images=images, mean=None, std=None, out_dtype=out_dtype)
    ref = sobel_ref(images, None, None, out_dtype)
    ours32 = cpu.sobel_cpu(images=images, mean=None, std=None, out_dtype=torch.float32)
    ref32 = sobel_ref(images, None, None, torch.float32)
    same = ours32.view(torch.int32) == ref32.view(torch.int32)
    assert same.float().mean() > 0.8
    assert torch.equal(out.view(torch.int16)[same], ref.view(torch.int16)[same])
    if out_dtype == torch.float16:
        assert torch.isinf(out.float()).any()  # the overflow path was exercised
    tiny = (out.float().abs() < 2.0**-14) & (out != 0)
    assert tiny.any()  # and the subnormal path
