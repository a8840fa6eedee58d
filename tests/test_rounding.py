"""The main pass's rounding bound, simulated on the CPU (fastdc.kernels.assign.candidates_ref):
on whitened, L2-normalised features at the first and later Lloyd iterations, and on odd shapes,
the float64 and the fp32 arg-min are always candidates, and the re-checked assignment equals
fp32 brute force on every row."""

import pytest
import torch

from benchmarks.bench_rounding import fp32_scores, lloyd_centroids, simulate, whitened_mixture
from tests.helpers import triton_kernels


@pytest.fixture(scope="module")
def assign_kernels():
    return triton_kernels("assign")


def assert_argmins_are_candidates(kernels, x, c, dot_mode):
    count, first, second = kernels.candidates_ref(x, c, dot_mode)
    assert bool((count >= 1).all())
    x64, c64 = x.double(), c.double()
    exact = ((c64 * c64).sum(1)[None, :] - 2.0 * x64 @ c64.T).argmin(dim=1)
    for j in (exact, fp32_scores(x, c).argmin(dim=1)):
        small = count <= 2
        assert bool(((j == first) | (j == second))[small].all())
        assert bool((j[count == 1] == first[count == 1]).all())
    return count


@pytest.mark.parametrize("dot_mode", ["bf16", "tf32"])
@pytest.mark.parametrize("iterations", [0, 3])
def test_whitened_features_have_no_wrong_assignment(assign_kernels, dot_mode, iterations):
    x = whitened_mixture(3_000, d_in=300, dim=128, seed=iterations)
    for seed in range(3):
        c = lloyd_centroids(x, 500, iterations, seed=seed)
        count = assert_argmins_are_candidates(assign_kernels, x, c, dot_mode)
        out = simulate(x, c, dot_mode)
        assert out["wrong"] == 0
        assert out["one"] + out["two"] + out["more"] == pytest.approx(1.0)
        assert out["one"] > 0.5  # the bound is tight enough that most rows need no re-check
        assert int((count > 2).sum()) == round(out["more"] * len(x))


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 3, 5), (130, 40, 33), (257, 129, 257)])
@pytest.mark.parametrize("dot_mode", ["bf16", "tf32"])
def test_odd_shapes_and_scales(assign_kernels, shape, dot_mode):
    n, k, d = shape
    g = torch.Generator().manual_seed(n + k + d)
    for scale in (1e-3, 1.0, 1e3):
        x = torch.randn(n, d, generator=g) * scale
        c = torch.cat([x[: k // 2], torch.randn(k - k // 2, d, generator=g) * scale])
        assert_argmins_are_candidates(assign_kernels, x, c, dot_mode)
        assert simulate(x, c, dot_mode)["wrong"] == 0


def test_exact_copies_are_two_candidates_or_more(assign_kernels):
    """Two identical centroids tie in every precision: both are candidates, the smaller first."""
    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    c = torch.cat([x[:4], x[:4]])
    count, first, second = assign_kernels.candidates_ref(x[:4], c)
    assert bool((count >= 2).all())
    assert torch.equal(first, torch.arange(4))
    assert bool(((second == first + 4) | (count > 2)).all())


def test_width_grows_with_the_unit_and_the_centroid_error(assign_kernels):
    k = assign_kernels
    one = torch.ones(1)
    bf16 = k.candidate_width(one, one * 2**-9, 256, k.BF16_UNIT)[0]
    tf32 = k.candidate_width(one, one * 2**-11, 256, k.TF32_UNIT)[0]
    assert bool((bf16 >= tf32).all()) and float(bf16[1]) > float(tf32[1])
    assert float(bf16[0]) == pytest.approx(4.0, rel=1e-2)  # 2·(2·|x_l|·cmax)
