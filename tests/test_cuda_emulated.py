"""Every kernel of csrc/cuda/*.cu run on the CPU and checked for values against the torch
reference of its op, on odd small shapes.

How: tests/cuda_host/cuda_host.h defines the CUDA C++ the sources use (``__global__``,
``__shared__``, ``threadIdx``, ``__syncthreads``, ``__shfl_xor_sync``, atomics, the two inline
PTX conversions); g++ compiles each source unchanged on it with the launch sizes of
fastdc/ops/cuda_sources.py; fastdc/ops/cuda.py's own launchers (loaded on a CuPy stand-in,
tests/cuda_host/__init__.py) launch the kernels on CPU tensors, one std::thread per CUDA thread,
the grid's blocks one after another. The cases follow tests/test_<op>.py: shapes that are not
multiples of the tiles, B > 1, k = 1 and k = M, exact ties, L2 and IP.

What this proves: each kernel's arithmetic, indexing, tiling, edge masks and tie rules give the
reference's values at these shapes when its threads interleave freely between barriers; the
launcher's grid, block and arguments match the kernel's C signature (types checked per
argument); every ``__syncthreads`` and shuffle is reached by all the threads of its block or warp
(a divergent one fails the launch); the sources need no host header.

What it does not prove: the GPU memory model (every barrier and shuffle here is a mutex
hand-off, a full fence, so code that relies on an ordering the GPU does not give, such as a
missing fence between warps, passes here); warp-synchronous behaviour (lanes are independent
threads that meet only at shuffles, the model the sources are written for since Volta, so
code that assumed lockstep lanes without a shuffle or __syncwarp would not be caught either);
concurrent blocks (one block runs at a time: no races between blocks, no contention on global
atomics); nvcc's contraction of ``a * b + c`` into FMAs (g++ does not contract: values are
compared within the op tests' tolerances, bit for bit only where the result is exact or does
not depend on it); timing, occupancy, registers and shared-memory limits
(tests/test_cuda_sources.py checks the sm_90 build), NVRTC and CuPy's streams.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastdc.ops.cluster_sums import cluster_sums_ref
from fastdc.ops.cuda_sources import LAUNCH, source
from fastdc.ops.knn import knn_ref
from fastdc.ops.resplit_empty import resplit_empty_ref
from fastdc.ops.sobel import IMAGENET_MEAN, IMAGENET_STD, sobel_ref
from tests.cuda_host import GXX, KERNELS, Module, exported_kernels, load_cuda_backend
from tests.helpers import assert_assign_matches, assert_close, poisoned_allocations
from tests.test_cluster_sums import float64_sums
from tests.test_knn import assert_close_scaled, brute_force_topk
from tests.test_resplit_empty import random_case

pytestmark = pytest.mark.skipif(
    GXX is None, reason="g++ is not on PATH: the CUDA C sources cannot be built for the CPU")

CPU = torch.device("cpu")
MAX_K = LAUNCH["knn"]["MAX_K"]


@pytest.fixture(scope="module")
def cuda(tmp_path_factory):
    """(fastdc/ops/cuda.py on the emulator, {op: (launcher, reasons)}); sources built once."""
    return load_cuda_backend(tmp_path_factory.mktemp("cuda_host"))


def run(cuda, op, **inputs):
    return cuda[1][op][0](**inputs)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------- the emulator

SELF_TEST = r"""
extern "C" __global__ void __launch_bounds__(64) reverse(int* out) {
    __shared__ int s[64];  // each block reverses its ids through shared memory
    s[threadIdx.x] = blockIdx.x * 100 + threadIdx.x;
    __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = s[63 - threadIdx.x];
}
extern "C" __global__ void warp_sums(long long* out, int* count) {
    long long v = threadIdx.x;
    for (int off = 16; off >= 1; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    out[threadIdx.x] = v;
    const int n = __syncthreads_count(threadIdx.x % 3 == 0);
    if (threadIdx.x == 0) *count = n;
}
extern "C" __global__ void diverges(int* out) {
    if (threadIdx.x == 5) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}
"""


@pytest.fixture(scope="module")
def self_test(tmp_path_factory):
    return Module(tmp_path_factory.mktemp("self_test"), SELF_TEST, name="self_test",
                  kernels=("reverse", "warp_sums", "diverges"))


def test_emulator_blocks_shared_memory_shuffles_and_divergence(self_test):
    out = torch.zeros(3 * 64, dtype=torch.int32)
    self_test.get_function("reverse")((3,), (64,), (np.uint64(out.data_ptr()),))
    expect = torch.arange(3)[:, None] * 100 + torch.arange(63, -1, -1)[None]
    assert torch.equal(out, expect.flatten().int())

    sums, count = torch.zeros(64, dtype=torch.int64), torch.zeros(1, dtype=torch.int32)
    self_test.get_function("warp_sums")((1,), (64,), (np.uint64(sums.data_ptr()),
                                                       np.uint64(count.data_ptr())))
    assert sums.tolist() == [sum(range(32))] * 32 + [sum(range(32, 64))] * 32
    assert int(count) == 22

    with pytest.raises(RuntimeError, match="__syncthreads not reached by every thread"):
        self_test.get_function("diverges")((1,), (32,), (np.uint64(out.data_ptr()),))
    with pytest.raises(TypeError, match=r"takes \(p\), the launcher passed \(q\)"):
        self_test.get_function("reverse")((1,), (64,), (np.int64(out.data_ptr()),))


def test_every_kernel_of_every_source_is_built_and_listed(cuda):
    module = cuda[0]
    assert set(KERNELS) == set(LAUNCH)
    for name, entries in KERNELS.items():
        module._kernel(name, entries[0], CPU)
        built = module._MODULES[(name, 0)]
        assert built.path.with_suffix(".cu").read_text() == source(name)  # unchanged source
        assert exported_kernels(built.path) == set(entries)


# ------------------------------------------------------------------------------- knn

KNN_SHAPES = [(1, 1, 1, 1), (1, 7, 3, 5), (2, 33, 65, 17), (3, 37, 150, 33), (1, 70, 129, 4)]
# (B, N, M, D): N = 33, 37, 70 and M = 65, 129, 150 are past a multiple of the 32-row and
# 64-row tiles, D = 17, 33 past the 16-feature chunk


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("shape", KNN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_knn_matches_float64_brute_force(cuda, metric, shape):
    B, N, M, D = shape
    x, y = randn(B, N, D, seed=N * 17 + M), randn(B, M, D, seed=N + M)
    for k in sorted({1, min(5, M), min(M, MAX_K)}):
        with poisoned_allocations():
            dist, idx = run(cuda, "knn", x=x, y=y, k=k, metric=metric)
        assert dist.shape == idx.shape == (B, N, k) and idx.dtype == torch.int64
        values, truth, clear = brute_force_topk(x, y, k, metric)
        assert (idx == truth)[clear].all(), f"k={k}: {int(((idx != truth) & clear).sum())} wrong"
        assert_close_scaled(dist, values)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_knn_ties_go_to_the_smallest_index(cuda, metric):
    # small integers (exact scores, many exactly 0), each database row three times, k = 33
    g = torch.Generator().manual_seed(3)
    base = torch.randint(-3, 4, (11, 6), generator=g).float()
    y = torch.cat([base, base, base])[None]
    x = torch.randint(-3, 4, (1, 29, 6), generator=g).float()
    dist, idx = run(cuda, "knn", x=x, y=y, k=33, metric=metric)
    values, truth, _ = brute_force_topk(x, y, 33, metric)
    ref_dist, ref_idx = knn_ref(x, y, 33, metric)
    assert torch.equal(idx, truth) and torch.equal(idx, ref_idx)
    assert torch.equal(dist.double(), values) and torch.equal(dist, ref_dist)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_knn_the_largest_k_over_many_tiles(cuda, metric):
    # k = MAX_K against five 64-row tiles of clustered rows: every tile merges into a full list
    g = torch.Generator().manual_seed(5)
    y = torch.randn(4, 8, generator=g).repeat(80, 1) + 0.1 * torch.randn(320, 8, generator=g)
    y = torch.stack([y, y.flip(0)])
    x = torch.randn(2, 37, 8, generator=g)
    with poisoned_allocations():
        dist, idx = run(cuda, "knn", x=x, y=y, k=MAX_K, metric=metric)
    values, truth, clear = brute_force_topk(x, y, MAX_K, metric)
    assert (idx == truth)[clear].all()
    assert_close_scaled(dist, values)


def test_knn_graph_of_x_finds_itself_first(cuda):
    x = randn(1, 100, 16, seed=1)
    dist, idx = run(cuda, "knn", x=x, y=x, k=6, metric="l2")
    assert torch.equal(idx[0, :, 0], torch.arange(100))
    assert dist[..., 0].abs().max() < 1e-4 and (dist[..., 1:] >= dist[..., :-1]).all()


def test_knn_zeros_of_either_sign_tie(cuda):
    # |y|^2 passed as +0, -0, +0, ...: scores |y|^2 - 2 x.y = +0 and -0 (x is orthogonal to
    # every y), one score to the kernel, so the list is in index order
    x = torch.tensor([[[1.0, 0.0, 0.0]]])
    y = torch.tensor([[[0.0, float(j), 1.0] for j in range(6)]])
    ysq = torch.tensor([[0.0, -0.0] * 3])
    xsq = torch.ones(1, 1)
    dist, idx = torch.full((1, 1, 6), float("nan")), torch.full((1, 1, 6), -7)
    kernel = cuda[0]._kernel("knn", "knn_f32", CPU)
    ptrs = [np.uint64(t.data_ptr()) for t in (x, y, xsq, ysq, dist, idx)]
    kernel((1, 1), (LAUNCH["knn"]["THREADS"],),
           (*ptrs, np.int64(1), np.int64(6), np.int64(3), np.int32(6), np.int32(1)))
    assert idx.tolist() == [[list(range(6))]] and torch.equal(dist, torch.ones(1, 1, 6))


def test_knn_declines_what_it_cannot_run(cuda):
    reasons = cuda[1]["knn"][1]
    x, y = torch.zeros(1, 3, 4), torch.zeros(1, 100, 4)
    assert [r for r in reasons(x=x, y=y, k=MAX_K, metric="l2")] == [
        "cuda backend needs tensors on a CUDA device (x, y are not)"]
    assert any(f"at most k = {MAX_K}" in r for r in reasons(x=x, y=y, k=MAX_K + 1, metric="l2"))
    assert any("float32" in r for r in reasons(x=x.double(), y=y.double(), k=2, metric="ip"))


# ---------------------------------------------------------------------------- assign

ASSIGN_SHAPES = [(1, 1, 1, 1), (1, 7, 3, 5), (3, 7, 40, 3), (2, 45, 70, 257), (1, 130, 65, 20)]


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("shape", ASSIGN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_assign_matches_float64_brute_force(cuda, metric, shape):
    B, N, K, D = shape
    x, c = randn(B, N, D, seed=N + K), randn(B, K, D, seed=N * K + D)
    with poisoned_allocations():
        dist, idx = run(cuda, "assign", x=x, centroids=c, metric=metric)
    assert dist.shape == idx.shape == (B, N)
    assert_assign_matches(dist, idx, x, c, metric)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_assign_ties_go_to_the_smallest_index(cuda, metric):
    # exact integer scores, centroids j, j+3, j+6 equal; and copies across the 64-wide tile
    g = torch.Generator().manual_seed(0)
    c = torch.randint(-3, 4, (3, 8), generator=g).float()
    c = torch.cat([c, c, c])
    x = torch.randint(-3, 4, (40, 8), generator=g).float()
    _, idx = run(cuda, "assign", x=x[None], centroids=c[None], metric=metric)
    scores = ((x[:, None] - c[None]) ** 2).sum(-1) if metric == "l2" else -(x @ c.T)
    assert idx[0].tolist() == [row.tolist().index(min(row.tolist())) for row in scores]
    c = randn(70, 19, seed=7)
    c = c / c.norm(dim=1, keepdim=True)
    c[69], c[66] = c[20], c[3]
    _, idx = run(cuda, "assign", x=c[None, [20, 69, 3, 66]], centroids=c[None], metric=metric)
    assert idx[0].tolist() == [20, 20, 3, 3]


# ---------------------------------------------------------------------- cluster_sums


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 7, 3, 5), (2, 40, 70, 257), (1, 37, 5, 130)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cluster_sums_match_float64(cuda, weighted, shape):
    B, N, K, D = shape
    g = torch.Generator().manual_seed(N + K)
    x, idx = torch.randn(B, N, D, generator=g), torch.randint(K, (B, N), generator=g)
    w = torch.rand(B, N, generator=g) if weighted else None
    sums, counts = run(cuda, "cluster_sums", x=x, idx=idx, k=K, weights=w)
    es, ec = float64_sums(x, idx, K, w)
    assert_close(sums, es, torch.float32)
    assert_close(counts, ec, torch.float64)
    ref_s, ref_c = cluster_sums_ref(x, idx, K, w)
    assert_close(sums, ref_s, torch.float32)
    assert torch.equal(counts, ref_c) or weighted


# --------------------------------------------------------------------- resplit_empty


def split(cuda, c, counts, u, n_frozen):
    """The kernel's and the reference's re-split of copies: every bit equal; nsplit."""
    got_c, got_n = c.clone(), counts.clone()
    nsplit = run(cuda, "resplit_empty", centroids=got_c, counts=got_n, uniforms=u,
                 n_frozen=n_frozen)
    ref_c, ref_n = c.clone(), counts.clone()
    assert torch.equal(nsplit, resplit_empty_ref(ref_c, ref_n, u, n_frozen))
    assert torch.equal(got_c, ref_c) and torch.equal(got_n, ref_n)
    return nsplit


@pytest.mark.parametrize("B,K,D,n_frozen", [(1, 1, 1, 0), (1, 12, 7, 3), (3, 40, 257, 2),
                                            (1, 300, 65, 2)])
def test_resplit_empty_bit_identical_to_reference(cuda, B, K, D, n_frozen):
    c, counts, u = random_case(B, K, D, seed=K * 7 + D)
    nsplit = split(cuda, c, counts, u, n_frozen)
    assert K == 1 or int(nsplit.sum()) > 0


@pytest.mark.parametrize("counts, expect", [([0.0, 1.0, 0.0, 1.0], 2), ([0.0, 0.0, 0.0], 0),
                                            ([0.0, 7.0, 0.0, 0.0, 2.0], 3)])
def test_resplit_empty_edge_cases(cuda, counts, expect):
    cnt = torch.tensor([counts])
    c = randn(1, cnt.shape[1], 5, seed=10)
    u = torch.rand(1, cnt.shape[1], generator=torch.Generator().manual_seed(11),
                   dtype=torch.float64)
    assert int(split(cuda, c, cnt, u, 0)[0]) == expect


# ----------------------------------------------------------------------------- sobel


def images(B, H, W, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (B, 3, H, W), generator=g, dtype=torch.uint8)
    return torch.randn(B, 3, H, W, generator=g)


@pytest.mark.parametrize("in_dtype", [torch.uint8, torch.float32], ids=str)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("normalise", [True, False])
def test_sobel_every_entry_matches_the_reference(cuda, in_dtype, out_dtype, normalise):
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalise else (None, None)
    for B, H, W in [(3, 37, 45), (1, 1, 1), (2, 3, 5)]:  # 2 x 5 blocks of 32 x 8; tiny
        batch = images(B, H, W, in_dtype, seed=H)
        with poisoned_allocations():
            out = run(cuda, "sobel", images=batch, mean=mean, std=std, out_dtype=out_dtype)
        assert out.dtype == out_dtype and not out.isnan().any()
        assert_close(out, sobel_ref(batch, mean, std, out_dtype), out_dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_sobel_half_outputs_round_like_torch(cuda, out_dtype):
    # magnitudes 1e-10 .. 1e6: float16 subnormals, overflow to inf and ordinary values; the
    # emulated cvt.rn rounds the kernel's float32 results as torch does, bit for bit, and
    # wherever those agree with the reference's bitwise, so do the 16-bit outputs
    g = torch.Generator().manual_seed(21)
    B, H, W = 2, 48, 40
    mask = torch.rand(B, 1, H, W, generator=g) < 0.05
    mag = 10 ** (torch.rand(B, 1, H, W, generator=g) * 16 - 10)
    sign = torch.where(torch.rand(B, 1, H, W, generator=g) < 0.5, -1.0, 1.0)
    batch = (mask * mag * sign).expand(B, 3, H, W).contiguous()
    out = run(cuda, "sobel", images=batch, mean=None, std=None, out_dtype=out_dtype)
    ours32 = run(cuda, "sobel", images=batch, mean=None, std=None, out_dtype=torch.float32)
    same = ours32.view(torch.int32) == sobel_ref(batch, None, None, torch.float32).view(
        torch.int32)
    assert same.float().mean() > 0.8
    assert torch.equal(out.view(torch.int16), ours32.to(out_dtype).view(torch.int16))
    assert torch.equal(out.view(torch.int16)[same],
                       sobel_ref(batch, None, None, out_dtype).view(torch.int16)[same])
    if out_dtype == torch.float16:
        assert torch.isinf(out.float()).any()
    assert ((out.float().abs() < 2.0**-14) & (out != 0)).any()

