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


# --------------------------------------------------------------------------- fast (airbench-like)


class ConvGroup(nn.Module):
    """conv3x3 -> maxpool 2 -> norm -> GELU -> conv3x3 -> norm -> GELU.

    ``[N, in_ch, H, W] -> [N, out_ch, H // 2, W // 2]``. The convs have no bias (the norm's
    bias plays that role); the norms' scale weights are frozen at 1 by :class:`FastNet`.
    """

    def __init__(self, in_ch: int, out_ch: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = norm_layer(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = norm_layer(out_ch)
        self.act = nn.GELU()
        for conv in (self.conv1, self.conv2):
            # Partial identity init: the first min(in, out) filters pass their input channel
            # through unchanged (the centre tap is 1), the rest keep torch's default init.
            w = conv.weight.data  # [out, in, 3, 3]
            nn.init.dirac_(w[: w.shape[1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    """A small, fast CIFAR net after airbench (Keller Jordan, arXiv 2404.00498).

    Layout for width ``w`` and 32x32 input (shapes per image):
    ``whiten`` 2x2 conv, no padding, ``3 -> 24`` channels, 31x31, set by
    :meth:`init_from_data` (the patch-whitening filters and their negatives) and frozen
    (weight and bias), then GELU;
    ``block1`` ``24 -> w`` at 31x31 -> 15x15; ``block2`` ``w -> 4w`` -> 7x7; ``block3``
    ``4w -> 4w`` -> 3x3; global max pool; linear ``4w -> classes`` without bias, its output
    multiplied by ``logit_scale`` (1/9). ``width=64`` is airbench94's 64/256/256.

    Norm layers keep their scale frozen at 1 (only the shift trains), as in airbench.
    Grad-CAM layers: ``block1``, ``block2``, ``block3`` (``whiten`` has no gradient).
    """

    patch = 2  # whitening patch side (pixels)
    whiten_eps = 5e-4  # added to the eigenvalues (normalised-pixel variance) before 1/sqrt
    logit_scale = 1.0 / 9.0

    def __init__(self, num_classes: int, norm_layer: NormLayer, width: int = 64,
                 bn_momentum: float = 0.4) -> None:
        super().__init__()
        k = 3 * self.patch * self.patch  # 12: dimension of one 2x2 RGB patch
        self.whiten = nn.Conv2d(3, 2 * k, self.patch, padding=0, bias=True)
        # Set from data and frozen, bias included: nothing before block1 then needs a gradient,
        # so backward skips block1.conv1's input gradient at 31x31 (a large share of a step).
        self.whiten.requires_grad_(False)
        self.act = nn.GELU()
        widths = (width, 4 * width, 4 * width)
        self.block1 = ConvGroup(2 * k, widths[0], norm_layer)
        self.block2 = ConvGroup(widths[0], widths[1], norm_layer)
        self.block3 = ConvGroup(widths[1], widths[2], norm_layer)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.linear = nn.Linear(widths[2], num_classes, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                if m.weight is not None:
                    m.weight.requires_grad_(False)  # scale fixed at 1; bias trains
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = bn_momentum  # fast-moving running stats: few, large steps

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, chunk: int = 500) -> None:
        """Set ``whiten`` from normalised images ``x`` ``[N, 3, H, W]``.

        With ``P`` the 2x2 patches of every image (12-vectors, mean ``mu``) and
        ``C = V diag(l) V^T`` their covariance, filter ``i`` is ``v_i / sqrt(l_i + eps)`` and
        filter ``12 + i`` its negative; the bias is ``-W mu``. So the first 12 output channels,
        over these patches, have mean 0 and covariance ``diag(l / (l + eps))`` (~identity),
        and channels 12..23 are exactly their negatives (so GELU passes both signs).
        Sums are accumulated in float64 over ``chunk`` images at a time (memory stays small).
        """
        p = self.patch
        k = 3 * p * p
        total = torch.zeros(k, dtype=torch.float64, device=x.device)  # sum of patches
        outer = torch.zeros(k, k, dtype=torch.float64, device=x.device)  # sum of P^T P
        count = 0
        for xb in x.split(chunk):
            cols = nn.functional.unfold(xb.float(), p)  # [n, 12, L]: channel, then row, column
            patches = cols.transpose(1, 2).reshape(-1, k).double()  # [n*L, 12]
            total += patches.sum(0)
            outer += patches.T @ patches
            count += len(patches)
        mu = total / count  # [12]
        cov = outer / count - torch.outer(mu, mu)  # [12, 12], population covariance
        eigval, eigvec = torch.linalg.eigh(cov)  # ascending; columns are eigenvectors
        eigval, eigvec = eigval.flip(0), eigvec.flip(1)  # largest variance first
        w = eigvec.T / torch.sqrt(eigval.clamp_min(0) + self.whiten_eps)[:, None]  # [12, 12]
        w = torch.cat([w, -w])  # [24, 12]
        bias = -(w @ mu)  # [24]
        dev, dt = self.whiten.weight.device, self.whiten.weight.dtype
        self.whiten.weight.copy_(w.view(-1, 3, p, p).to(dev, dt))
        self.whiten.bias.copy_(bias.to(dev, dt))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.linear(x) * self.logit_scale


def fastnet(num_classes: int, norm_layer: NormLayer, width: int = 64) -> nn.Module:
    return FastNet(num_classes, norm_layer, width)


MODELS["fastnet"] = fastnet
