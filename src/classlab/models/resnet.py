"""ResNet18/34 for 32x32 images (the spec's models): a 3x3 stem without max-pool, four stages
of basic blocks with strides 1, 2, 2, 2, global average pooling and one linear layer."""

from __future__ import annotations

import torch
from torch import nn

from classlab.models.activations import Activation
from classlab.models.norms import NormLayer


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 projection when the shape changes. ``act``: the
    activation after the first norm and after the sum (ReLU unless named)."""

    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm_layer: NormLayer,
                 act: Activation | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(out_ch)
        self.act = (act or nn.ReLU)()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm_layer(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem (no max-pool), four stages with strides 1,2,2,2,
    global average pooling and one linear layer. Stage outputs are ``layer1``..``layer4``
    with shapes [N,w,32,32], [N,2w,16,16], [N,4w,8,8], [N,8w,4,4] for width w."""

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int,
        norm_layer: NormLayer,
        width: int = 64,
        act: Activation | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.act = (act or nn.ReLU)()  # after the stem; each block holds its own
        stages, in_ch = [], width
        for i, n in enumerate(blocks):
            out_ch = width * 2**i
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            layers = []
            for s in strides:
                layers.append(BasicBlock(in_ch, out_ch, s, norm_layer, act))
                in_ch = out_ch
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))


def resnet18(num_classes: int, norm_layer: NormLayer, width: int = 64,
             act: Activation | None = None) -> nn.Module:
    return CifarResNet((2, 2, 2, 2), num_classes, norm_layer, width, act)


def resnet34(num_classes: int, norm_layer: NormLayer, width: int = 64,
             act: Activation | None = None) -> nn.Module:
    return CifarResNet((3, 4, 6, 3), num_classes, norm_layer, width, act)
