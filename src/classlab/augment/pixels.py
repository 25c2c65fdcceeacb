"""Between the normalised batches the pipeline trains on and the pixel values photometric
ops need.

The batched augmentations see ``(x / 255 - mean) / std`` (:class:`classlab.engine.batches.
Normalizer`). Posterize, solarize, equalize, autocontrast, colour, brightness, contrast and
sharpness are defined on pixel values in ``[0, 1]`` (PIL's uint8 levels / 255), so the policy
ops un-normalise once with the training split's per-channel mean and std, work in float32
pixel space, and normalise back once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PixelStats", "stats_for"]


@dataclass(frozen=True)
class PixelStats:
    """The per-channel mean and std (in ``[0, 1]`` pixel units) the batch was normalised
    with: the training split's, ``Splits.mean`` / ``Splits.std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _vectors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"pixel statistics for {len(self.mean)} channels, batch has {c}")
        mean = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, c, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, c, 1, 1)
        return mean, std

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``[N,C,H,W]`` (any float dtype) -> float32 pixels clamped to ``[0, 1]``
        (a new tensor; the clamp only removes float rounding and the overshoot of earlier
        bilinear ops)."""
        mean, std = self._vectors(x)
        return (x.float() * std + mean).clamp_(0.0, 1.0)

    def from_pixels(self, p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Float32 pixels ``[N,C,H,W]`` -> normalised, in ``dtype``."""
        mean, std = self._vectors(p)
        return ((p - mean) / std).to(dtype)

    def fill(self, x: torch.Tensor) -> torch.Tensor:
        """``[1,C,1,1]`` float32: the mean colour in pixel units, what geometric ops fill the
        uncovered area with (0 in normalised units, as the batched crop and rotate do)."""
        return self._vectors(x)[0]


def stats_for(x: torch.Tensor, stats: PixelStats | None) -> PixelStats:
    """``stats``, or, when None, statistics that make pixels of ``x`` itself (mean 0, std 1
    per channel): for batches that already hold pixel values in ``[0, 1]``."""
    if stats is not None:
        return stats
    c = x.shape[1]
    return PixelStats((0.0,) * c, (1.0,) * c)
