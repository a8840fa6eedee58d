"""fastdc.deepcluster.models: output shapes, DeepCluster's inits, the Sobel front end, the head."""

import math

import pytest
import torch
from torch import nn

from fastdc.deepcluster.models import (
    GreySobel,
    alexnet,
    build_model,
    conv_body,
    min_input_size,
    small,
    vgg16,
)
from fastdc.ops import Sobel
from fastdc.ops.sobel import sobel_ref


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("sobel,channels", [(False, 1), (True, 1), (False, 3), (True, 3)])
def test_small_shapes(sobel, channels):
    model = small(7, in_channels=channels, sobel=sobel).eval()
    x = torch.randn(3, channels, 28, 28)
    with torch.no_grad():
        feats, logits = model.features(x), model(x)
    assert feats.shape == (3, 128) and feats.dtype == torch.float32
    assert logits.shape == (3, 7)
    assert model.body[0].in_channels == (2 if sobel else channels)


def test_features_are_taken_before_the_last_relu():
    model = small(5).eval()
    with torch.no_grad():
        feats = model.features(torch.randn(8, 1, 28, 28))
    assert (feats < 0).any(), "features must be the penultimate FC output before its ReLU"
    assert isinstance(model.classifier[-1], nn.Linear)


def test_alexnet_matches_the_reference_layout():
    model = alexnet(10, sobel=True).eval()
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert convs[0].in_channels == 2 and convs[0].kernel_size == (11, 11)
    assert convs[0].stride == (4, 4)
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(9216, 4096), (4096, 4096)]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert model.features(x).shape == (1, 4096)
        assert model(x).shape == (1, 10)
        layers = model.conv_layers(x)
    # At 224×224 the body ends at 6×6: the adaptive pool is the identity (as the reference).
    assert [tuple(t.shape[1:]) for t in layers] == [
        (96, 55, 55), (256, 27, 27), (384, 13, 13), (384, 13, 13), (256, 13, 13)]


def test_vgg16_shapes_on_a_small_input():
    model = vgg16(4, in_channels=3).eval()
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and convs[-1].out_channels == 512
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert model.features(x).shape == (1, 4096)
        assert model(x).shape == (1, 4)
    assert len(model.conv_layers(torch.randn(1, 3, 32, 32))) == 13


def test_reference_inits():
    model = alexnet(10)
    conv = model.body[4]  # conv2: 5×5, 256 out: std sqrt(2 / (25·256))
    assert isinstance(conv, nn.Conv2d)
    expected = math.sqrt(2.0 / (5 * 5 * 256))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.all(conv.bias == 0)
    fc = model.classifier[1]
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(fc.bias == 0)
    bn = model.body[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_reset_head_is_fresh_and_reproducible():
    model = small(5)
    head = model.reset_head(50, torch.Generator().manual_seed(3))
    assert model.top_layer is head and head.weight.shape == (50, 128)
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert torch.all(head.bias == 0)
    again = small(5).reset_head(50, torch.Generator().manual_seed(3))
    assert torch.equal(head.weight, again.weight)
    body = {id(p) for p in model.body_parameters()}
    assert all(id(p) not in body for p in head.parameters())


def test_grey_sobel_equals_the_two_convolution_reference():
    x = torch.randn(4, 1, 17, 23)
    ref = sobel_ref(x.expand(-1, 3, -1, -1).contiguous(), None, None, torch.float32)
    torch.testing.assert_close(GreySobel()(x), ref, rtol=1e-5, atol=1e-5)


def test_rgb_sobel_front_end_equals_the_reference():
    model = small(3, in_channels=3, sobel=True)
    assert isinstance(model.sobel, Sobel)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        out = model.sobel(x)
    torch.testing.assert_close(out, sobel_ref(x, None, None, torch.float32), rtol=1e-5,
                               atol=1e-5)
    assert not any(p.requires_grad for p in model.sobel.parameters())


def test_build_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet", 10, 3)
    with pytest.raises(ValueError, match="k must be"):
        build_model("small", 0, 1)
    with pytest.raises(ValueError, match="1- or 3-channel"):
        build_model("small", 10, 4, sobel=True)


@pytest.mark.parametrize("arch,side", [("small", 8), ("alexnet", 63), ("vgg16", 32)])
def test_min_input_size_is_read_from_the_layers(arch, side):
    assert min_input_size(arch) == side
    body = conv_body(arch, 3).eval()
    with torch.no_grad():
        assert body(torch.zeros(1, 3, side, side)).shape[-2:] == (1, 1)
        with pytest.raises(RuntimeError, match="too small"):
            body(torch.zeros(1, 3, side - 1, side - 1))
