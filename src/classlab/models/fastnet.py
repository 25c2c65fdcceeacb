"""FastNet: an airbench-like net for the fast recipe (a frozen patch-whitening conv, then
three conv-pool-norm-GELU groups)."""

from __future__ import annotations

import torch
from torch import nn

from classlab.models.activations import Activation
from classlab.models.norms import NormLayer


class ConvGroup(nn.Module):
    """conv3x3 -> maxpool 2 -> norm -> act -> conv3x3 -> norm -> act (act: GELU unless
    ``act`` names another).

    ``[N, in_ch, H, W] -> [N, out_ch, H // 2, W // 2]``. The convs have no bias (the norm's
    bias plays that role); the norms' scale weights are frozen at 1 by :class:`FastNet`.
    """

    def __init__(self, in_ch: int, out_ch: int, norm_layer: NormLayer,
                 act: Activation | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = norm_layer(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = norm_layer(out_ch)
        self.act = (act or nn.GELU)()
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
    (weight and bias; ``optim.whiten_bias_epochs`` trains the bias for the first epochs),
    then GELU; each group's activation is GELU, or ``act`` (``model.activation``);
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
                 bn_momentum: float = 0.4, act: Activation | None = None) -> None:
        super().__init__()
        k = 3 * self.patch * self.patch  # 12: dimension of one 2x2 RGB patch
        self.whiten = nn.Conv2d(3, 2 * k, self.patch, padding=0, bias=True)
        # Set from data and frozen, bias included: nothing before block1 then needs a gradient,
        # so backward skips block1.conv1's input gradient at 31x31 (a large share of a step).
        self.whiten.requires_grad_(False)
        self.act = nn.GELU()
        widths = (width, 4 * width, 4 * width)
        self.block1 = ConvGroup(2 * k, widths[0], norm_layer, act)
        self.block2 = ConvGroup(widths[0], widths[1], norm_layer, act)
        self.block3 = ConvGroup(widths[1], widths[2], norm_layer, act)
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


def fastnet(num_classes: int, norm_layer: NormLayer, width: int = 64,
            act: Activation | None = None) -> nn.Module:
    return FastNet(num_classes, norm_layer, width, act=act)
