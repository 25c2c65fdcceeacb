"""Datasets: CIFAR-10 and CIFAR-100 (binary or Python pickles, optional download), your own
pictures in class folders (``imagefolder``) and a synthetic stand-in.

Everything is held in memory as uint8 tensors ``[N, 3, H, W]`` (32x32 except imagefolder's
``data.image_size``) with int64 labels; the trainer normalises with the train split's
per-channel ``mean``/``std``. Loading is deterministic: the validation split and the subset
are stratified and seeded by ``data.seed`` only, so the same config always yields identical
tensors.

Every failure a user can cause (missing or corrupted files, a bad download, an unsafe
archive) is raised as :class:`DataError` with a one-line message naming the file or URL.

- :mod:`~classlab.data.base`: the loader contract (:data:`Arrays`), :class:`Splits`, DataError
- :mod:`~classlab.data.cifar`, :mod:`~classlab.data.imagefolder`,
  :mod:`~classlab.data.synthetic`: the loaders; :mod:`~classlab.data.registry`: name -> loader
- :mod:`~classlab.data.download`: checked download and safe unpacking
- :mod:`~classlab.data.splits`: validation split, subset, mean/std (:func:`load_splits`)
"""

from classlab.data.base import DataError, Splits, default_data_dir
from classlab.data.registry import DATASETS
from classlab.data.splits import load_splits

__all__ = ["DATASETS", "DataError", "Splits", "default_data_dir", "load_splits"]
