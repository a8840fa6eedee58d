"""The cpu backend (fastdc._C) as a whole: results independent of the thread count, the SIMD
path it reports and its portable fallback, and the reasons it gives the registry. Each op's
results on this backend are tested with every other backend in tests/test_<op>.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdc.ops import registry as backends

_C = pytest.importorskip("fastdc._C", reason="the C++ extension is not built")
cpu = pytest.importorskip("fastdc.ops.cpu")

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_assign_is_bit_identical_for_1_2_and_3_threads(metric):
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


def _pool_work(seed: int) -> tuple[torch.Tensor, ...]:
    """assign then cluster_sums of one odd-shaped problem on the kernels' thread pool."""
    x, c = randn(1, 1531, 45, seed=seed), randn(1, 37, 45, seed=seed + 1)
    dist, idx = cpu.assign_cpu(x=x, centroids=c, metric="l2")
    sums, counts = cpu.cluster_sums_cpu(x=x, idx=idx, k=37, weights=None)
    return dist, idx, sums, counts


def _bitwise_equal(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return all(torch.equal(u.view(torch.int32) if u.is_floating_point() else u,
                           v.view(torch.int32) if v.is_floating_point() else v)
               for u, v in zip(a, b, strict=True))


def test_thread_pool_serves_concurrent_callers_and_more_threads_than_cores():
    """Python threads calling the kernels at once (one runs on the pool, the others on their
    own thread) and 8-thread task lists on any machine give the one-thread answers."""
    from concurrent.futures import ThreadPoolExecutor

    with threads(1):
        expected = [_pool_work(seed) for seed in range(6)]
    with threads(8):
        assert _bitwise_equal(_pool_work(0), expected[0])
        with ThreadPoolExecutor(3) as ex:
            got = list(ex.map(_pool_work, range(6)))
    assert all(_bitwise_equal(g, e) for g, e in zip(got, expected, strict=True))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_thread_pool_runs_in_a_forked_child():
    """A child forked after the pool started its workers (as DataLoader workers are) starts its
    own and gets the same answers."""
    import multiprocessing as mp

    with threads(2):
        expected = _pool_work(7)
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        # NumPy copies: torch tensors would travel in the child's shared memory, gone with it
        child = ctx.Process(target=lambda: queue.put([t.numpy() for t in _pool_work(7)]))
        child.start()
        got = tuple(torch.from_numpy(a) for a in queue.get(timeout=120))
        child.join(timeout=60)
    assert child.exitcode == 0
    assert _bitwise_equal(got, expected)


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
    assert any("device" in r for r in cpu._cluster_sums_reasons(x=x, idx=idx, k=3, weights=None))
    img = torch.empty(1, 3, 8, 8, dtype=torch.uint8, device="meta")
    assert any("device" in r for r in cpu._sobel_reasons(img, None, None, torch.float32))
    img = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    assert not cpu._sobel_reasons(img, None, None, torch.float32)
    assert any("float64" in r for r in cpu._sobel_reasons(img, None, None, torch.float64))


def test_only_sobel_declines_inputs_that_require_grad():
    """sobel is differentiable through the reference; the other ops detach in the public op."""
    img = torch.zeros(1, 3, 8, 8, requires_grad=True)
    assert any("autograd" in r for r in cpu._sobel_reasons(img, None, None, torch.float32))
    with torch.no_grad():
        assert not cpu._sobel_reasons(img, None, None, torch.float32)
    x = torch.zeros(1, 10, 4, requires_grad=True)
    assert not cpu._assign_reasons(x=x, centroids=x[:, :3], metric="l2")


def test_simd_name():
    assert _C.simd() in ("avx512", "avx2", "generic")
    assert cpu.simd() == _C.simd()


GENERIC_SCRIPT = """
import torch
from fastdc import _C
from fastdc.ops import cpu
from tests.helpers import assert_assign_matches
assert _C.simd() == "generic", _C.simd()
g = torch.Generator().manual_seed(0)
x, c = torch.randn(2, 1003, 37, generator=g), torch.randn(2, 41, 37, generator=g)
for metric in ("l2", "ip"):
    d, i = cpu.assign_cpu(x=x, centroids=c, metric=metric)
    assert_assign_matches(d, i, x, c, metric)
print("ok")
"""


def test_generic_fallback_path_matches_float64():
    env = dict(os.environ, FASTDC_CPU_SIMD="generic", PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, "-c", GENERIC_SCRIPT], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 300, 15), (1, 517, 16), (3, 257, 33),
                                   (1, 1000, 256)])
def test_row_norms_match_float64_and_flag_nan_inf(shape):
    x = randn(*shape, seed=sum(shape)) * 1e3
    x[0, 0, 0] = 3e19  # squares overflow float32, not float64
    if shape[1] > 2:
        x[-1, 1, -1], x[-1, 2, 0] = float("nan"), float("-inf")
    got = cpu.row_norms_cpu(x=x)
    ref = torch.linalg.vector_norm(x.double(), dim=-1)
    assert got.dtype == torch.float32 and got.shape == shape[:2]
    assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.isinf(), ref.isinf())
    finite = ref.isfinite()
    torch.testing.assert_close(got[finite].double(), ref[finite], rtol=2**-23, atol=0)


def test_kernels_own_the_cores_gives_torch_one_thread_and_the_kernels_the_rest():
    from fastdc.ops.threads import kernel_threads, kernels_own_the_cores

    with threads(3):
        assert kernel_threads() == 3
        with kernels_own_the_cores():
            assert torch.get_num_threads() == 1 and kernel_threads() == 3
            with kernels_own_the_cores():  # nested: the outer setting stands
                assert torch.get_num_threads() == 1 and kernel_threads() == 3
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3 and kernel_threads() == 3
        with pytest.raises(RuntimeError), kernels_own_the_cores():
            raise RuntimeError("restored on the way out")
        assert torch.get_num_threads() == 3


@pytest.mark.parametrize("backend,inside", [(None, True), ("cpu", True), ("torch", False)])
def test_lloyd_runs_its_iterations_with_the_kernels_owning_the_cores(monkeypatch, backend,
                                                                     inside):
    """The cpu backend's loop keeps torch on one thread (no spinning OpenMP threads beside the
    kernels); the torch backend's loop keeps torch's threads for its matrix products."""
    import fastdc.engine.lloyd as lloyd
    from fastdc.kmeans import kmeans

    seen = []
    # an iteration ends in finish_iteration, or is one call of the cpu backend's step; the cpu
    # backend's loop may also run every iteration in one call
    for owner, name in ((lloyd, "finish_iteration"), (lloyd._Step, "__call__"),
                        (lloyd._Step, "run")):
        real = getattr(owner, name)

        def spy(*args, real=real, **kwargs):
            seen.append(torch.get_num_threads())
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    x = randn(300, 5, seed=3)
    with threads(2):
        kmeans(x, 4, niter=3, backend=backend)
        assert torch.get_num_threads() == 2
    assert seen == ([1] if inside else [2] * 3)  # run(): the iterations in one call
