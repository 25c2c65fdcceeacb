"""Training-time augmentation.

- :mod:`~classlab.augment.batched`: whole-batch tensor ops on the batch's device (crop,
  flip, rotate, cutout; alternating flip), each drawing from an explicit generator. The
  names are :data:`classlab.config.schema.AUGMENTATIONS`.
- :mod:`~classlab.augment.albu`: the optional albumentations backend, image by image in
  DataLoader workers (imported only when ``aug.backend: albumentations``).
"""

from classlab.augment.batched import (
    AUGMENTATIONS,
    AugFn,
    alternate_flip,
    augment,
    cutout,
    epoch_images,
    make_generator,
    random_crop,
    random_flip,
    random_rotate,
)

__all__ = ["AUGMENTATIONS", "AugFn", "alternate_flip", "augment", "cutout", "epoch_images",
           "make_generator", "random_crop", "random_flip", "random_rotate"]
