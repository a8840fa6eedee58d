"""The networks DeepCluster trains: AlexNet-BN, VGG16-BN and a small net for 28×28 images.

All three share one interface (:class:`DeepClusterNet`):

- ``model.features(x)`` — the clustering features: the output of the penultimate fully
  connected layer *before* its ReLU, float [B, feature_dim]. This is where DeepCluster's
  ``main.py`` takes them (it drops the classifier's last ReLU and the top layer);
- ``model(x)`` — ``top_layer(relu(features(x)))``, float [B, k]: the pseudo-label logits;
- ``model.top_layer`` — the head, replaced by :meth:`DeepClusterNet.reset_head` every epoch
  (weights N(0, 0.01), zero bias, as in the reference);
- ``model.conv_layers()`` — the ReLU outputs of every conv layer, for linear probes.

Architectures and inits follow DeepCluster (Caron et al., ECCV 2018, ``models/alexnet.py`` and
``models/vgg16.py``): convs with BatchNorm, conv weights N(0, sqrt(2 / (kh·kw·out_channels))),
zero conv bias, BatchNorm weight 1 / bias 0, linear weights N(0, 0.01) with zero bias.
:func:`min_input_size` reads from a net's own layers the smallest image it accepts.

The optional Sobel front end (``sobel=True``) is fixed (no parameters) and gives the body two
input channels. For 3-channel input it is :class:`fastdc.ops.Sobel` (grey = mean of RGB, then
the two 3×3 filters). For 1-channel input (MNIST) the grey image *is* the channel, so
:class:`GreySobel` applies the two 3×3 filters of :func:`fastdc.ops.sobel.sobel_weights` to it
directly — the same result as replicating the channel three times, a third of the work.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from fastdc.ops import Sobel, sobel_weights

ARCHS = ("small", "alexnet", "vgg16")

# DeepCluster's AlexNet convs: (out_channels, kernel, stride, padding) or "M" (max-pool 3, 2).
ALEXNET_CFG = [(96, 11, 4, 2), "M", (256, 5, 1, 2), "M", (384, 3, 1, 1), (384, 3, 1, 1),
               (256, 3, 1, 1), "M"]
# VGG16 (configuration "D"): 3×3 convs, padding 1; "M" = max-pool 2, 2.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M"]
# The small net for 28×28 grey images (fastdc's own): conv widths, MLP width.
SMALL_WIDTHS = (16, 32, 64)
SMALL_FC = 128


class GreySobel(nn.Module):
    """Fixed Sobel filters on a 1-channel image: float [B, 1, H, W] -> [B, 2, H, W].

    Equal to :func:`fastdc.ops.sobel_ref` on the channel replicated to RGB (grey = the channel).
    """

    def __init__(self) -> None:
        super().__init__()
        _, filt = sobel_weights()
        self.register_buffer("weight", filt, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float [B, 1, H, W] -> the two Sobel responses [B, 2, H, W] (x's dtype)."""
        return F.conv2d(x, self.weight.to(x.dtype), padding=1)


def sobel_front(in_channels: int) -> nn.Module:
    """The Sobel front end for 1- or 3-channel input (output: 2 channels)."""
    if in_channels == 1:
        return GreySobel()
    if in_channels == 3:
        return Sobel()
    raise ValueError(f"--sobel needs 1- or 3-channel images, got {in_channels} channels")


class DeepClusterNet(nn.Module):
    """A conv body, a 2-layer MLP whose second layer gives the features, and a linear head.

    body: conv layers (+ pooling) -> ``pool`` -> flatten -> ``classifier`` (Linear, ReLU,
    [Dropout,] Linear; the ReLU after the last Linear is applied in :meth:`forward`, not here)
    -> ``top_layer``.
    """

    def __init__(self, arch: str, front: nn.Module | None, body: nn.Sequential, pool: nn.Module,
                 classifier: nn.Sequential, feature_dim: int, k: int) -> None:
        super().__init__()
        self.arch = arch
        self.sobel = front
        self.body = body
        self.pool = pool
        self.classifier = classifier
        self.feature_dim = feature_dim
        self.top_layer = nn.Linear(feature_dim, k)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Clustering features: float [B, C, H, W] -> [B, feature_dim] (last FC, pre-ReLU)."""
        if self.sobel is not None:
            x = self.sobel(x)
        x = self.pool(self.body(x))
        return self.classifier(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pseudo-label logits: float [B, C, H, W] -> [B, k]."""
        return self.top_layer(F.relu(self.features(x)))

    def reset_head(self, k: int, generator: torch.Generator | None = None,
                   normal: bool = True) -> nn.Linear:
        """Replace ``top_layer`` by a fresh ``Linear(feature_dim, k)``: N(0, 0.01) weights and
        zero bias (``normal``, DeepCluster), else PyTorch's default Linear init (DeeperCluster),
        drawn from ``generator`` either way."""
        head = nn.Linear(self.feature_dim, k)
        with torch.no_grad():
            if normal:
                head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)
                head.bias.zero_()
            else:
                bound = 1 / math.sqrt(self.feature_dim)
                head.weight.uniform_(-bound, bound, generator=generator)
                head.bias.uniform_(-bound, bound, generator=generator)
        head = head.to(self.top_layer.weight.device)
        self.top_layer = head
        return head

    def body_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of everything but the head (the head has its own optimiser)."""
        head = {id(p) for p in self.top_layer.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in head]

    @property
    def conv_count(self) -> int:
        """The number of conv layers (each followed by one ReLU in ``body``)."""
        return sum(isinstance(m, nn.ReLU) for m in self.body)

    def conv_output(self, x: torch.Tensor, conv: int) -> torch.Tensor:
        """The ReLU output of conv layer ``conv`` (1-based), running the body only that far:
        float [B, C, H, W] -> [B, C_l, H_l, W_l]. Raises ValueError when ``conv`` is out of
        range (the message gives the valid range)."""
        if not 1 <= conv <= self.conv_count:
            raise ValueError(f"conv layer {conv} is out of range for {self.arch}: choose 1 to "
                             f"{self.conv_count}")
        if self.sobel is not None:
            x = self.sobel(x)
        relus = [i for i, m in enumerate(self.body) if isinstance(m, nn.ReLU)]
        return self.body[:relus[conv - 1] + 1](x)

    def conv_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The ReLU output of every conv layer, in order: float [B, C_i, H_i, W_i] each."""
        if self.sobel is not None:
            x = self.sobel(x)
        outs = []
        for layer in self.body:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                outs.append(x)
        return outs


def init_weights(model: nn.Module) -> None:
    """DeepCluster's init: conv N(0, sqrt(2/n)), n = kh·kw·out; BN 1/0; linear N(0, 0.01)/0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, pad: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, pad), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _conv_body(layout: list, pool: tuple[int, int], in_channels: int) -> nn.Sequential:
    """A conv body: conv-BN-ReLU layers as in ``layout`` (entries (out_channels, kernel,
    stride, padding), a bare width for a 3×3 conv with padding 1, or "M" for a max-pool of
    (kernel, stride) ``pool``) on ``in_channels`` input channels."""
    layers: list[nn.Module] = []
    cin = in_channels
    for v in layout:
        if v == "M":
            layers.append(nn.MaxPool2d(*pool))
            continue
        cout, kernel, stride, pad = v if isinstance(v, tuple) else (v, 3, 1, 1)
        layers += _conv_bn_relu(cin, cout, kernel, stride, pad)
        cin = cout
    return nn.Sequential(*layers)


def _small_layout(widths: tuple[int, ...]) -> list:
    """The small net's body layout: a 3×3 conv then a 2×2 max-pool per width."""
    return [entry for width in widths for entry in (width, "M")]


# The conv body of each net: (layout, (kernel, stride) of its max-pools).
BODIES = {"small": (_small_layout(SMALL_WIDTHS), (2, 2)), "alexnet": (ALEXNET_CFG, (3, 2)),
          "vgg16": (VGG16_CFG, (2, 2))}


def conv_body(arch: str, in_channels: int) -> nn.Sequential:
    """The conv layers of ``arch`` (conv-BN-ReLU and max-pools; no Sobel front, no classifier)
    on ``in_channels`` channels. Raises ValueError for an unknown ``arch``."""
    if arch not in BODIES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    layout, pool = BODIES[arch]
    return _conv_body(layout, pool, in_channels)


def _reference_net(arch: str, body: nn.Sequential, side: int, classifier: nn.Sequential,
                   k: int, in_channels: int, sobel: bool) -> DeepClusterNet:
    """A reference net: the Sobel front (when asked), ``body``, an adaptive average pool to
    ``side``×``side`` and ``classifier`` (4096 features), with a k-way head."""
    front = sobel_front(in_channels) if sobel else None
    return DeepClusterNet(arch, front, body, nn.AdaptiveAvgPool2d(side), classifier, 4096, k)


def alexnet(k: int, in_channels: int = 3, sobel: bool = False) -> DeepClusterNet:
    """DeepCluster's AlexNet-BN: convs 96-256-384-384-256, FC 4096-4096; input [B, C, 224, 224].

    The adaptive average pool before the classifier is the identity at 224×224 (the conv body
    gives 6×6 there); it lets smaller images through for quick tests.
    """
    body = conv_body("alexnet", 2 if sobel else in_channels)
    classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(4096, 4096),
    )
    return _reference_net("alexnet", body, 6, classifier, k, in_channels, sobel)


def vgg16(k: int, in_channels: int = 3, sobel: bool = False) -> DeepClusterNet:
    """DeepCluster's VGG16-BN: 13 3×3 convs, FC 4096-4096; input [B, C, 224, 224].

    As for :func:`alexnet`, the adaptive pool (to 7×7) is the identity at 224×224.
    """
    body = conv_body("vgg16", 2 if sobel else in_channels)
    classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096),
    )
    return _reference_net("vgg16", body, 7, classifier, k, in_channels, sobel)


def small(k: int, in_channels: int = 1, sobel: bool = False,
          widths: tuple[int, ...] = SMALL_WIDTHS, fc: int = SMALL_FC) -> DeepClusterNet:
    """A small net for 28×28 images (fastdc's own, not from the paper).

    One 3×3 conv (BN, ReLU) then a 2×2 max-pool per entry of ``widths`` (28 -> 14 -> 7 -> 3),
    then FC ``fc`` (BN, ReLU) and FC ``fc`` (the features, pre-ReLU): [B, C, 28, 28] ->
    features [B, fc]. Other sizes work (an adaptive pool gives 3×3). With the defaults: about
    2 M multiply-adds per 28×28 image, fast on a CPU.

    Init: as the reference for convs and BatchNorm; the linear layers use N(0, sqrt(2/fan_in))
    instead of N(0, 0.01): at width 128 the reference's 0.01 shrinks the signal about 10× per
    layer and the net barely trains (measured: the loss stays at ln k).
    """
    body = _conv_body(_small_layout(widths), (2, 2), 2 if sobel else in_channels)
    classifier = nn.Sequential(
        nn.Linear(widths[-1] * 3 * 3, fc), nn.BatchNorm1d(fc), nn.ReLU(inplace=True),
        nn.Linear(fc, fc),
    )
    front = sobel_front(in_channels) if sobel else None
    model = DeepClusterNet("small", front, body, nn.AdaptiveAvgPool2d(3), classifier, fc, k)
    for m in classifier.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_features))
    return model


def build_model(arch: str, k: int, in_channels: int, sobel: bool = False) -> DeepClusterNet:
    """Build ``arch`` ("small", "alexnet", "vgg16") with a k-way head. Raises ValueError."""
    builders = {"small": small, "alexnet": alexnet, "vgg16": vgg16}
    if arch not in builders:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return builders[arch](k, in_channels=in_channels, sobel=sobel)


_SIZED_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _pair(v: int | tuple[int, ...]) -> int:
    """The height entry of a layer's (h, w) setting: our nets are square."""
    return v[0] if isinstance(v, tuple) else v


@functools.cache
def min_input_size(arch: str) -> int:
    """The smallest square image side (pixels) that ``arch``'s conv body maps to at least one
    pixel, read from the body's own convolutions and pools (built on the meta device).

    Walks the layers backwards: a layer of kernel k, stride s, padding p, dilation d with a
    floor-mode output needs an input of at least (out - 1)·s + d·(k - 1) + 1 - 2p pixels.
    Raises ValueError for an unknown ``arch``.
    """
    with torch.device("meta"):
        body = conv_body(arch, 3)
    need = 1
    for m in reversed([m for m in body.modules() if isinstance(m, _SIZED_LAYERS)]):
        k, s, p, d = (_pair(getattr(m, name, 1)) for name in
                      ("kernel_size", "stride", "padding", "dilation"))
        need = max(1, (need - 1) * s + d * (k - 1) + 1 - 2 * p)
    return need


def initial_model(arch: str, k: int, in_channels: int, sobel: bool, seed: int
                  ) -> DeepClusterNet:
    """:func:`build_model` with its random init drawn from the torch generator seeded with
    ``seed``, inside :func:`torch.random.fork_rng` (the global generator is left as it was):
    the same weights for the same seed, on the CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(arch, k, in_channels, sobel=sobel)
