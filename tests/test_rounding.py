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


@pytest.mark.parametrize("dot_mode", ["bf16", "tf32", "tf32x3"])
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
@pytest.mark.parametrize("dot_mode", ["bf16", "tf32", "tf32x3"])
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
    bf16 = k.candidate_width(one, one * 2**-9, 256, "bf16")[0]
    tf32 = k.candidate_width(one, one * 2**-11, 256, "tf32")[0]
    assert bool((bf16 >= tf32).all()) and float(bf16[1]) > float(tf32[1])
    assert float(bf16[0]) == pytest.approx(4.0, rel=1e-2)  # 2·(2·|x_l|·cmax)


def truncating_matmul(a: torch.Tensor, b: torch.Tensor, block: int = 8) -> torch.Tensor:
    """a [n, D] @ b [K, D]ᵀ as the tensor cores were measured to add (ACC_UNIT's references):
    exact products, added ``block`` at a time to the accumulator with every significand cut
    (toward zero) at fp32's last bit of the largest term, and the sum cut to 24 bits. Returns
    [n, K] float32 (values exact in float64 throughout)."""

    def cut(t, at):  # t toward zero to a multiple of 2^(exponent of ``at`` − 23)
        _, e = torch.frexp(at)
        ulp = torch.ldexp(torch.ones_like(at), e - 24)
        return torch.where(at == 0, t, torch.trunc(t / ulp) * ulp)

    prod = a.double()[:, None, :] * b.double()[None, :, :]  # exact: <= 11-bit significands
    acc = torch.zeros(prod.shape[:2], dtype=torch.float64)
    for d0 in range(0, prod.shape[2], block):
        terms = torch.cat([acc[..., None], prod[..., d0:d0 + block]], dim=2)
        top = terms.abs().amax(dim=2, keepdim=True)
        total = cut(terms, top).sum(dim=2)
        acc = cut(total, total.abs())
    return acc.float()


def test_truncating_accumulation_needs_the_tensor_core_unit(assign_kernels):
    """The accumulation probe's unit-first row (one unit term and D − 1 terms just below its
    last bit) against all ones: a truncating adder drops the small terms, an error of about
    2·D·2^-24, past IEEE's γ_D (D·2^-24) but within γ_D(ACC_UNIT)."""
    k, d = assign_kernels, 256
    a, b = k.probe_operands(d=d)
    x, c = a[:1], b[:1]
    assert bool((c == 1.0).all())
    exact = float(x.double().sum())
    err = abs(float(truncating_matmul(x, c)) - exact)
    assert err > k._gamma(d, 2.0**-24) * exact
    assert err <= k._gamma(d, k.ACC_UNIT) * exact
    assert float(x @ c.T) == pytest.approx(exact, abs=k._gamma(d, 2.0**-24) * exact)


@pytest.mark.parametrize("dot_mode", ["bf16", "tf32", "tf32x3"])
@pytest.mark.parametrize("block", [1, 8])
def test_argmins_are_candidates_under_truncating_accumulation(assign_kernels, dot_mode, block):
    """The counting passes accumulated as the tensor cores were measured to: on whitened rows
    and on near-duplicate centroids, the fp32 and exact arg-mins are still candidates."""
    x = whitened_mixture(160, d_in=96, dim=64, seed=3)
    g = torch.Generator().manual_seed(4)
    near = x[:40] + 1e-4 * torch.randn(40, 64, generator=g)
    c = torch.cat([x[40:100], near])
    count, first, second = assign_kernels.candidates_ref(
        x, c, dot_mode, matmul=lambda a, b: truncating_matmul(a, b, block))
    x64, c64 = x.double(), c.double()
    exact = ((c64 * c64).sum(1)[None, :] - 2.0 * x64 @ c64.T).argmin(dim=1)
    for j in (exact, fp32_scores(x, c).argmin(dim=1)):
        held = (j == first) | ((j == second) & (count == 2)) | (count > 2)
        assert bool(held.all())
    assert float((count == 1).float().mean()) > 0.5


@pytest.mark.parametrize("device", [
    pytest.param("cuda", marks=pytest.mark.gpu, id="tensor-cores"),
    pytest.param("cpu", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                 reason="the GPU runs the tensor-core case"),
                 id="interpreter"),
])
@pytest.mark.parametrize("mode", ["bf16", "tf32"])
def test_dot_accumulation_within_acc_unit(assign_kernels, device, mode):
    """One tl.dot of the counting passes against float64, on random rows and on rows a
    truncating adder gets wrong: on a GPU the tensor cores stay within ACC_UNIT's allowance
    (4× IEEE's γ_d); the interpreter (numpy, rounding to nearest) within IEEE's own."""
    k = assign_kernels
    err = k.accumulation_error(mode, device)
    allowed = k.ACC_UNIT / 2.0**-24 if device == "cuda" else 1.0
    assert float(err.max()) <= allowed, (float(err.max()), float(err[0, 0]), float(err[1, 0]))
