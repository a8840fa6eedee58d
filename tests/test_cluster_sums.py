"""cluster_sums / update_centroids: every backend (torch reference, cpu, triton, cuda) against a
float64 computation on odd shapes, poisoned outputs and errors; then the properties of single
backends (the cpu kernel's bit-identity, Triton's deterministic mode, GPU-size atomics)."""

import logging

import pytest
import torch

from fastdc import ops
from fastdc.ops import cluster_sums, update_centroids
from fastdc.ops import registry as backends
from fastdc.ops.cluster_sums import cluster_sums_ref
from tests.helpers import (
    ODD_SHAPE_IDS,
    ODD_SHAPES,
    TRITON_DEVICE,
    assert_close,
    backend_params,
    is_interpreted,
    poisoned_allocations,
    run_backend,
    triton_kernels,
)


def problem(B, N, K, D, weighted, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g)
    idx = torch.randint(K, (B, N), generator=g)
    w = torch.rand(B, N, generator=g) if weighted else None
    return x.to(device), idx.to(device), None if w is None else w.to(device)


def float64_sums(x, idx, k, w):
    """The float64 truth, by a one-hot product: sums [B, k, D], counts [B, k]."""
    onehot = torch.nn.functional.one_hot(idx.cpu(), k).double()  # [B, N, k]
    if w is not None:
        onehot = onehot * w.cpu().double().unsqueeze(-1)
    return onehot.transpose(1, 2) @ x.cpu().double(), onehot.sum(dim=1)


@pytest.mark.parametrize("backend,device", backend_params("cluster_sums"))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=ODD_SHAPE_IDS)
def test_matches_float64(backend, device, weighted, shape):
    B, N, K, D = shape
    if is_interpreted(backend, device) and N * K > 70_000:
        N = 300  # the interpreter is slow: keep the odd shape, trim N
    x, idx, w = problem(B, N, K, D, weighted, seed=N + K, device=device)
    with poisoned_allocations():
        sums, counts = cluster_sums(x, idx, K, weights=w, backend=backend)
    es, ec = float64_sums(x, idx, K, w)
    assert sums.shape == (B, K, D) and counts.shape == (B, K)
    assert sums.dtype == torch.float32 and counts.dtype == torch.float32
    assert_close(sums, es, torch.float32)
    assert_close(counts, ec, torch.float64)


@pytest.mark.parametrize("backend,device", backend_params("cluster_sums"))
def test_update_gives_means_and_zero_for_empty(backend, device):
    x = torch.tensor([[0.0, 2.0], [2.0, 4.0], [10.0, 10.0]])
    idx = torch.tensor([0, 0, 2])
    c, n = update_centroids(x.to(device), idx.to(device), 4, backend=backend)
    assert torch.equal(c.cpu(), torch.tensor([[1.0, 3.0], [0, 0], [10.0, 10.0], [0, 0]]))
    assert torch.equal(n.cpu(), torch.tensor([2.0, 0.0, 1.0, 0.0]))


@pytest.mark.parametrize("backend,device", backend_params("cluster_sums"))
def test_is_deterministic(backend, device):
    if backend == "cuda":
        pytest.skip("the cuda backend adds with fp32 atomics in any order (documented)")
    x, idx, _ = problem(1, 3000, 17, 40, False, seed=5, device=device)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # Triton's atomics step aside on a GPU
    try:
        a = cluster_sums(x[0], idx[0], 17, backend=backend)
        b = cluster_sums(x[0], idx[0], 17, backend=backend)
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_inputs_that_require_grad_run_on_the_fast_backend(monkeypatch, caplog):
    """cluster_sums is not differentiable: the public op detaches, so no fallback to torch."""
    monkeypatch.setattr(backends, "_LOGGED", set())
    x, idx, w = problem(1, 500, 9, 12, True, seed=6)
    with caplog.at_level(logging.WARNING, logger="fastdc"):
        sums, counts = cluster_sums(x[0].requires_grad_(), idx[0], 9, weights=w[0].requires_grad_())
    assert not [r for r in caplog.records if r.name == "fastdc"]
    expect = cluster_sums(x[0].detach(), idx[0], 9, weights=w[0].detach())
    assert torch.equal(sums, expect[0]) and torch.equal(counts, expect[1])
    assert not sums.requires_grad


def test_bad_inputs_are_clear_errors():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        cluster_sums(x, torch.tensor([0, 1, 2, 3, 4]), 4)
    with pytest.raises(ValueError, match="must match"):
        cluster_sums(x, torch.tensor([0, 1]), 4)
    with pytest.raises(TypeError, match="integer"):
        cluster_sums(x, torch.zeros(5), 4)
    with pytest.raises(ValueError, match="positive int"):
        cluster_sums(x, torch.zeros(5, dtype=torch.int64), 0)


# --------------------------------------------------------------------------------- cpu


def _cpu_kernel():
    return pytest.importorskip("fastdc._C", reason="the C++ extension is not built")


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=ODD_SHAPE_IDS)
def test_cpu_is_bit_identical_to_the_reference(shape, weighted):
    """float64 accumulation in row order of exact products: the reference's very bits."""
    _cpu_kernel()
    B, N, K, D = shape
    x, idx, w = problem(B, N, K, D, weighted, seed=10)
    sums, counts = run_backend("cluster_sums", "cpu", x=x, idx=idx, k=K, weights=w)
    ref_s, ref_c = cluster_sums_ref(x, idx, K, w)
    assert torch.equal(sums, ref_s) and torch.equal(counts, ref_c)


def test_cpu_kernel_rejects_out_of_range_ids():
    """The public op checks the range; the C++ kernel still refuses to write out of bounds."""
    np = pytest.importorskip("numpy")
    kernel = _cpu_kernel()
    x = torch.randn(1, 4, 3)
    sums, counts = np.zeros((1, 2, 3), np.float32), np.zeros((1, 2), np.float32)
    for bad in (2, -1):
        idx = np.array([[0, 1, bad, 0]], np.int64)
        with pytest.raises(IndexError, match="outside"):
            kernel.cluster_sums(x.numpy(), idx, None, sums, counts, 2)


# ------------------------------------------------------------------------------ triton


@pytest.mark.parametrize("shape", [(1, 1, 3, 3), (3, 300, 20, 64), (2, 40, 70, 257)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_triton_modes_match_float64(shape, weighted, deterministic):
    kernels = triton_kernels("cluster_sums")
    B, N, K, D = shape
    if deterministic and D == 257:
        D = 33  # one program per (cluster, chunk): keep the interpreter's program count small
    x, idx, w = problem(B, N, K, D, weighted, seed=7, device=TRITON_DEVICE)
    with poisoned_allocations():
        sums, counts = kernels.cluster_sums_triton(x, idx, K, w, deterministic)
    es, ec = float64_sums(x, idx, K, w)
    assert_close(sums, es, torch.float32)
    assert_close(counts, ec, torch.float64)


@pytest.mark.parametrize("order", ["one_cluster_per_block", "class_ordered", "random"])
@pytest.mark.parametrize("weighted", [False, True])
def test_triton_atomic_mode_on_class_ordered_rows(order, weighted):
    """The atomic mode sums runs of equal ids inside a block before its atomics: whole blocks in
    one cluster, runs that straddle blocks (sorted ids) and random ids, on odd N and D."""
    kernels = triton_kernels("cluster_sums")
    B, N, K, D = 2, 203, 11, 37
    block = kernels.cluster_sums_config(N, D, K)["BLOCK_N"]
    x, idx, w = problem(B, N, K, D, weighted, seed=11, device=TRITON_DEVICE)
    if order == "one_cluster_per_block":
        idx = (torch.arange(N) // block % K).expand(B, N).contiguous().to(TRITON_DEVICE)
    elif order == "class_ordered":
        idx = idx.sort(dim=1).values
    with poisoned_allocations():
        sums, counts = kernels.cluster_sums_triton(x, idx, K, w, False)
    es, ec = float64_sums(x, idx, K, w)
    assert_close(sums, es, torch.float32)
    assert_close(counts, ec, torch.float64)


def test_triton_deterministic_mode_is_bit_identical_run_to_run():
    kernels = triton_kernels("cluster_sums")
    x, _, _ = problem(2, 200, 4, 20, False, seed=8, device=TRITON_DEVICE)
    idx = torch.randint(0, 4, (2, 200), generator=torch.Generator().manual_seed(8))
    idx = idx.to(TRITON_DEVICE)  # long segments
    first = kernels.cluster_sums_triton(x, idx, 4, None, True)
    second = kernels.cluster_sums_triton(x, idx, 4, None, True)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_triton_half_input_through_the_public_op():
    triton_kernels("cluster_sums")
    x, idx, _ = problem(1, 150, 9, 24, False, seed=9)
    x = x.to(torch.bfloat16).to(TRITON_DEVICE)
    idx = idx.to(TRITON_DEVICE)
    sums, counts = ops.cluster_sums(x[0], idx[0], 9, backend="triton")
    es, ec = float64_sums(x.float(), idx, 9, None)  # bf16 values are exact in fp32
    assert_close(sums, es[0], torch.float32)
    assert torch.equal(counts.cpu(), ec[0].float())


# --------------------------------------------------------------------------- GPU sizes


def _need(backend: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if backend not in backends.available("cluster_sums"):
        pytest.skip(f"backend {backend!r} did not load")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_large_sums_with_atomics(backend):
    _need(backend)
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(200_000, 256, generator=g, device="cuda")
    idx = torch.randint(0, 1000, (200_000,), generator=g, device="cuda")
    sums, counts = ops.cluster_sums(x, idx, 1000, backend=backend)
    ref_s, ref_c = ops.cluster_sums(x, idx, 1000, backend="torch")
    assert_close(sums, ref_s, "float32 atomics")
    assert torch.equal(counts, ref_c)  # integer counts are exact in any order


@pytest.mark.gpu
def test_gpu_cuda_weighted_sums():
    _need("cuda")
    x, idx, w = problem(2, 3000, 50, 65, True, seed=3, device="cuda")
    for weights in (None, w):
        sums, counts = run_backend("cluster_sums", "cuda", x=x, idx=idx, k=50, weights=weights)
        ref_s, ref_c = cluster_sums_ref(x, idx, 50, weights)
        assert_close(sums, ref_s, "float32 atomics")
        assert_close(counts, ref_c, "float32 atomics")


@pytest.mark.gpu
def test_gpu_triton_deterministic_mode_is_bit_identical():
    _need("triton")
    kernels = triton_kernels("cluster_sums")
    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(1, 300_000, 256, generator=g, device="cuda")
    idx = torch.randint(0, 50, (1, 300_000), generator=g, device="cuda")  # big segments
    runs = [kernels.cluster_sums_triton(x, idx, 50, None, True) for _ in range(3)]
    for sums, counts in runs[1:]:
        assert torch.equal(sums, runs[0][0]) and torch.equal(counts, runs[0][1])
    ref_s, _ = ops.cluster_sums(x, idx, 50, backend="torch")
    assert_close(runs[0][0], ref_s, torch.float64)
