"""A ResNet for small images (CIFAR's 32 px), trained from scratch: the backbone of the image
tower's ``resnet18-cifar`` architectures.

ResNet-18's layout (He et al. 2016, arXiv:1512.03385: four stages of two basic blocks, widths
w, 2w, 4w, 8w, the last three downsampling by 2) with the CIFAR stem the self-supervised papers
use on 32-px images (SimCLR arXiv:2002.05709, Appendix B.9; as solo-learn and lightly): a 3x3
convolution of stride 1 and no max-pool, so a 32-px image keeps 32x32 maps in the first stage and
4x4 in the last. ``width`` w = 64 is the standard ResNet-18 (11.2 M weights, 512-d features);
w = 16 (0.7 M, 128-d) trains on a CPU in minutes. Any input side works (average pooling at the
end): the local crops of multi-crop are smaller than the global views.

Grayscale images (Fashion-MNIST) reach it as three equal channels (``data.images`` repeats the
channel), so the stem always takes 3.
"""

from __future__ import annotations

import re

import torch.nn.functional as F
from torch import Tensor, nn

# resnet18-cifar (w = 64) or resnet18-cifar-w<w>.
RESNET_CIFAR = re.compile(r"resnet18-cifar(?:-w(?P<width>[1-9][0-9]*))?")
DEFAULT_WIDTH = 64
# CIFAR-10's per-channel mean and standard deviation, in pixel units (0-255): the input scaling of
# solo-learn and lightly for CIFAR.
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)
CIFAR_SIZE = 32


def resnet_width(architecture: str) -> int | None:
    """The width ``w`` of a ``resnet18-cifar[-w<w>]`` name, or None for another name."""
    match = RESNET_CIFAR.fullmatch(architecture)
    if match is None:
        return None
    return int(match["width"]) if match["width"] else DEFAULT_WIDTH


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut (a 1x1 convolution when the shape
    changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(outputs))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C', H/s, W/s)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-18 with the CIFAR stem; ``forward`` gives pooled features ``(B, 8w)``.

    Args:
        width: channels of the first stage (64: the standard ResNet-18).

    Raises:
        ValueError: a width below 1.
    """

    def __init__(self, width: int = DEFAULT_WIDTH) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages = []
        inputs = width
        for stage, stride in enumerate((1, 2, 2, 2)):
            outputs = width * 2**stage
            stages.append(nn.Sequential(BasicBlock(inputs, outputs, stride),
                                        BasicBlock(outputs, outputs, 1)))
            inputs = outputs
        self.stages = nn.Sequential(*stages)
        self.width = inputs  # 8w, the pooled feature width
        for module in self.modules():  # as torchvision's ResNet
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, pixels: Tensor) -> Tensor:
        maps = self.stages(self.stem(pixels))  # (B, 8w, S/8, S/8)
        return F.adaptive_avg_pool2d(maps, 1).flatten(1)  # (B, 8w)
