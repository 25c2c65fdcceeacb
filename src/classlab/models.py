"""Models and normalization layers, each from a registry.

Names become classes once, here at the edge (:func:`build_model`); inner blocks receive a
``norm_layer`` callable ``(channels) -> nn.Module`` and never see a string.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from classlab.config import ModelConfig

NormLayer = Callable[[int], nn.Module]


def _group_norm(channels: int, groups: int) -> nn.Module:
    return nn.GroupNorm(groups, channels)


def _norm_factory(name: str, cfg: ModelConfig) -> NormLayer:
    if name == "bn":
        return nn.BatchNorm2d
    if name == "ln":
        # The spec's "Layer Normalization" for conv nets: statistics over (C, H, W) of each
        # image, with a per-channel affine, which is GroupNorm with a single group.
        return partial(_group_norm, groups=1)
    return partial(_group_norm, groups=cfg.gn_groups)


NORMS: dict[str, str] = {
    "bn": "BatchNorm2d: batch statistics, running averages at eval",
    "ln": "LayerNorm over (C,H,W): GroupNorm with one group",
    "gn": "GroupNorm with model.gn_groups groups",
}


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 projection when the shape changes."""

    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm_layer(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


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
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = norm_layer(width)
        stages, in_ch = [], width
        for i, n in enumerate(blocks):
            out_ch = width * 2**i
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            layers = []
            for s in strides:
                layers.append(BasicBlock(in_ch, out_ch, s, norm_layer))
                in_ch = out_ch
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))


def resnet18(num_classes: int, norm_layer: NormLayer, width: int = 64) -> nn.Module:
    return CifarResNet((2, 2, 2, 2), num_classes, norm_layer, width)


def resnet34(num_classes: int, norm_layer: NormLayer, width: int = 64) -> nn.Module:
    return CifarResNet((3, 4, 6, 3), num_classes, norm_layer, width)


ModelFn = Callable[..., nn.Module]
MODELS: dict[str, ModelFn] = {"resnet18": resnet18, "resnet34": resnet34}


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Resolve the registry names in ``cfg`` and build the model (weights from torch's RNG)."""
    if cfg.name not in MODELS:
        raise KeyError(f"model.name: unknown model {cfg.name!r}; allowed: {', '.join(MODELS)}")
    norm_layer = _norm_factory(cfg.norm, cfg)
    return MODELS[cfg.name](num_classes=num_classes, norm_layer=norm_layer, width=cfg.width)


def count_params(model: nn.Module) -> int:
    """Trainable parameters (the spec's "Params" column)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def layer_names(model: nn.Module) -> list[str]:
    """Names of the modules that can be given to Grad-CAM (any named submodule)."""
    return [name for name, _ in model.named_modules() if name]
