"""sobel: every backend (torch reference, cpu, triton, cuda) against the reference on odd image
sizes, every input and output dtype, poisoned outputs, half rounding, autograd and errors."""

import logging

import pytest
import torch

from fastdc.ops import Sobel, sobel
from fastdc.ops import registry as backends
from fastdc.ops.registry import BackendError
from fastdc.ops.sobel import GX, GY, IMAGENET_MEAN, IMAGENET_STD, normalise, sobel_ref
from tests.helpers import (
    TRITON_DEVICE,
    assert_close,
    backend_params,
    is_interpreted,
    poisoned_allocations,
    triton_kernels,
)

IN_DTYPES = [torch.uint8, torch.float32, torch.float16, torch.float64]
OUT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def images(B, H, W, dtype=torch.uint8, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (B, 3, H, W), generator=g, dtype=torch.uint8).to(device)
    return torch.randn(B, 3, H, W, generator=g).to(dtype).to(device)


def declines(backend: str, batch: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """Whether ``backend`` refuses these images (the cpu and cuda kernels read uint8/float32)."""
    try:
        backends.select("sobel", backend, images=batch, mean=None, std=None, out_dtype=out_dtype)
    except BackendError:
        return True
    return False


@pytest.mark.parametrize("backend,device", backend_params("sobel"))
@pytest.mark.parametrize("in_dtype", IN_DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("normalise", [True, False])
def test_matches_reference(backend, device, in_dtype, out_dtype, normalise):
    batch = images(3, 37, 45, in_dtype, seed=13, device=device)  # odd sizes, > one 32-row band
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalise else (None, None)
    if declines(backend, batch, out_dtype):
        with pytest.raises(BackendError, match="uint8 or float32"):
            sobel(batch, mean=mean, std=std, out_dtype=out_dtype, backend=backend)
        return
    with poisoned_allocations():
        out = sobel(batch, mean=mean, std=std, out_dtype=out_dtype, backend=backend)
    assert out.shape == (3, 2, 37, 45) and out.dtype == out_dtype
    assert_close(out, sobel_ref(batch, mean, std, out_dtype), out_dtype)


def tap_by_tap(batch, mean, std, out_dtype):
    """The Triton kernel's arithmetic in float32 torch ops: x / 255, (x - mean) / std, · 1/3 per
    channel, channels summed in order, then the 3×3 taps added in row-major order from 0."""
    v = normalise(batch, mean, std) * torch.tensor(1.0 / 3.0)
    g = torch.nn.functional.pad(v[:, 0] + v[:, 1] + v[:, 2], (1, 1, 1, 1))
    H, W = batch.shape[2:]
    tap = [[g[:, a:a + H, c:c + W] for c in range(3)] for a in range(3)]
    gx, gy = torch.zeros_like(tap[0][0]), torch.zeros_like(tap[0][0])
    for a in range(3):
        for c in range(3):
            gx = gx + tap[a][c] * GX[a][c] if GX[a][c] else gx
            gy = gy + tap[a][c] * GY[a][c] if GY[a][c] else gy
    return torch.stack([gx, gy], dim=1).to(out_dtype)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (1, 37, 45), (2, 70, 33), (1, 5, 300)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("normalise_", [True, False])
def test_triton_uint8_look_up_table_gives_the_same_bits(shape, normalise_):
    """uint8 grey from the [3, 256] table: bit for bit the per-pixel divisions' result."""
    kernels = triton_kernels("sobel")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalise_ else (None, None)
    batch = images(*shape, seed=16)
    with poisoned_allocations():
        out = kernels.sobel_triton(batch.to(TRITON_DEVICE), mean, std, torch.float32)
    assert torch.equal(out.cpu(), tap_by_tap(batch, mean, std, torch.float32))


@pytest.mark.parametrize("backend,device", backend_params("sobel"))
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 5), (2, 4, 1), (2, 2, 2), (1, 33, 70),
                                   (3, 17, 2), (1, 3, 257), (1, 2, 509)],
                         ids=lambda s: "x".join(map(str, s)))
def test_odd_sizes_write_every_element(backend, device, shape):
    batch = images(*shape, seed=14, device=device)
    with poisoned_allocations():
        out = sobel(batch, backend=backend)
    assert not out.isnan().any()
    assert_close(out, sobel_ref(batch, IMAGENET_MEAN, IMAGENET_STD, torch.float32), torch.float32)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("backend,device", backend_params("sobel"))
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_outputs_round_like_torch(backend, device, out_dtype):
    # sparse pixels of magnitude 1e-10 .. 1e6: float16 subnormals, overflow to inf, and ordinary
    # values; wherever the float32 results agree bitwise, the conversion must agree bitwise too
    if is_interpreted(backend, device) and out_dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter truncates to bfloat16; the compiled kernel rounds")
    g = torch.Generator().manual_seed(21)
    B, H, W = 2, 48, 40
    mask = torch.rand(B, 1, H, W, generator=g) < 0.05
    mag = 10 ** (torch.rand(B, 1, H, W, generator=g) * 16 - 10)
    sign = torch.where(torch.rand(B, 1, H, W, generator=g) < 0.5, -1.0, 1.0)
    batch = (mask * mag * sign).expand(B, 3, H, W).contiguous().to(device)
    out = sobel(batch, mean=None, std=None, out_dtype=out_dtype, backend=backend)
    ref = sobel_ref(batch, None, None, out_dtype)
    ours32 = sobel(batch, mean=None, std=None, backend=backend)
    ref32 = sobel_ref(batch, None, None, torch.float32)
    same = ours32.view(torch.int32) == ref32.view(torch.int32)
    assert same.float().mean() > 0.8
    assert torch.equal(out.view(torch.int16)[same], ref.view(torch.int16)[same])
    if out_dtype == torch.float16:
        assert torch.isinf(out.float()).any()  # the overflow path was exercised
    tiny = (out.float().abs() < 2.0**-14) & (out != 0)
    assert tiny.any()  # and the subnormal path


@pytest.mark.parametrize("backend,device", backend_params("sobel"))
def test_module_and_public_op_without_normalisation(backend, device):
    batch = images(2, 9, 11, torch.float32, seed=15, device=device)
    ref = sobel_ref(batch, None, None, torch.float32)
    assert_close(sobel(batch, mean=None, std=None, backend=backend), ref, torch.float32)
    with torch.no_grad():
        assert_close(Sobel(backend=backend)(batch), ref, torch.float32)


def test_differentiable_through_the_reference(monkeypatch, caplog):
    """Images that require grad get the reference's gradient; under no_grad the fast backend
    runs on them without a fallback line."""
    monkeypatch.setattr(backends, "_LOGGED", set())
    batch = images(2, 12, 10, torch.float32, seed=16).requires_grad_()
    out = sobel(batch)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(17))
    (grad,) = torch.autograd.grad((out * weights).sum(), batch)
    ref_in = batch.detach().clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(
        (sobel_ref(ref_in, IMAGENET_MEAN, IMAGENET_STD, torch.float32) * weights).sum(), ref_in
    )
    assert torch.equal(grad, ref_grad)
    caplog.clear()
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="fastdc"):
        fast = sobel(batch)
    assert not [r for r in caplog.records if r.name == "fastdc"]
    assert_close(fast, out, torch.float32)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        sobel(torch.zeros(1, 1, 4, 4))
    with pytest.raises(TypeError, match="uint8 or floating"):
        sobel(torch.zeros(1, 3, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="out_dtype"):
        sobel(torch.zeros(1, 3, 4, 4), out_dtype=torch.float64)
    with pytest.raises(ValueError, match="both mean and std"):
        sobel(torch.zeros(1, 3, 4, 4), mean=IMAGENET_MEAN, std=None)
    with pytest.raises(ValueError, match="non-zero"):
        sobel(torch.zeros(1, 3, 4, 4), std=(1.0, 0.0, 1.0))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
def test_gpu_imagenet_batch(backend, out_dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if backend not in backends.available("sobel"):
        pytest.skip(f"backend {backend!r} did not load")
    batch = images(16, 224, 224, device="cuda")
    out = sobel(batch, out_dtype=out_dtype, backend=backend)
    assert_close(out, sobel(batch, out_dtype=out_dtype, backend="torch"), out_dtype)
