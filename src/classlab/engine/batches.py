"""From the uint8 images on the device to training batches.

The whole dataset is one uint8 tensor ``[N,3,H,W]`` on the training device; a batch is
gathered by index, converted to float and normalised there. Randomness of an epoch
(shuffle + augmentation) comes from a generator seeded by ``(train.seed, epoch)``, so a
resumed run sees exactly the batches an uninterrupted one does.
"""

from __future__ import annotations

import math

import torch

from classlab.augment import make_generator


class Normalizer:
    """uint8 ``[N,3,H,W]`` -> float32 ``(x/255 - mean)/std``, on the batch's device.

    Computed as ``x * scale + shift`` in place on the one float copy (``scale = 1/(255 std)``,
    ``shift = -mean/std``, both ``[1,3,1,1]``): an out-of-place broadcast subtract and divide
    took ~14 ms per 512 CIFAR images on one CPU core, this takes under 1 ms.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 channels_last: bool = False) -> None:
        mean_t = torch.tensor(mean, device=device, dtype=torch.float64).view(1, -1, 1, 1)
        std_t = torch.tensor(std, device=device, dtype=torch.float64).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).float()
        self.shift = (-mean_t / std_t).float()
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = x.float().mul_(self.scale).add_(self.shift)  # keeps x's strides
        # Always a dense copy in the chosen layout: x may be a strided view (the
        # albumentations backend hands over HWC arrays permuted to NCHW), and such input
        # made the backward pass abort.
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return out.contiguous(memory_format=fmt)


def batch_indices(n: int, batch_size: int, gen: torch.Generator | None) -> list[torch.Tensor]:
    """Index tensors of one epoch: shuffled with ``gen`` (None: in order). A trailing batch of
    one image is dropped, since BatchNorm cannot train on a single sample."""
    device = gen.device if gen is not None else "cpu"
    order = (torch.randperm(n, generator=gen, device=device) if gen is not None
             else torch.arange(n))
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks.pop()
    return chunks


def steps_per_epoch(n: int, batch_size: int) -> int:
    steps = math.ceil(n / batch_size)
    return steps - 1 if steps > 1 and n % batch_size == 1 else steps


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Shuffle/augmentation randomness of one epoch, independent of everything before it."""
    return make_generator(seed * 1_000_003 + epoch, device)
