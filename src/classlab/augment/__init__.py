"""Training-time augmentation.

- :mod:`~classlab.augment.batched`: whole-batch tensor ops on the batch's device (crop,
  flip, rotate, cutout, normjitter = brightness/contrast in normalised units; alternating
  flip), each drawing from an explicit generator. The names are
  :data:`classlab.config.schema.AUGMENTATIONS`.
- :mod:`~classlab.augment.policies`: RandAugment, TrivialAugment, AutoAugment (CIFAR-10),
  colour jitter and random erasing, with the same conventions; their image ops in
  :mod:`~classlab.augment.imageops`, on pixel values (:mod:`~classlab.augment.pixels`).
- :mod:`~classlab.augment.mixing`: mixup and CutMix, applied at the training step with their
  soft targets.
- :mod:`~classlab.augment.albu`: the optional albumentations backend, image by image in
  DataLoader workers (imported only when ``aug.backend: albumentations``).

Every batched name, whichever module implements it, is registered in :data:`AUGMENTATIONS`.
"""

from classlab.augment.batched import (
    AUGMENTATIONS,
    AugFn,
    alternate_flip,
    augment,
    cutout,
    epoch_images,
    make_generator,
    normjitter,
    random_crop,
    random_flip,
    random_rotate,
)
from classlab.augment.mixing import MIXING, MIXING_OPS, Mix, make_mixer, mixed_cross_entropy
from classlab.augment.pixels import PixelStats
from classlab.augment.policies import POLICY_OPS

AUGMENTATIONS.update(POLICY_OPS)
AUGMENTATIONS.update(MIXING_OPS)

__all__ = ["AUGMENTATIONS", "MIXING", "AugFn", "Mix", "PixelStats", "alternate_flip",
           "augment", "cutout", "epoch_images", "make_generator", "make_mixer",
           "mixed_cross_entropy", "normjitter", "random_crop", "random_flip", "random_rotate"]
