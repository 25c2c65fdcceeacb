"""Dataset name -> loader. The names are :data:`classlab.config.schema.DATASETS`.

A loader takes ``(cfg: DataConfig, root: Path)`` and returns :data:`~classlab.data.base.Arrays`
(train x/y, test x/y, class names), or :data:`~classlab.data.base.ArraysWithVal` when the
dataset brings its own validation split (imagefolder with a ``val/`` folder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from classlab.config import DataConfig
from classlab.data.base import Arrays, ArraysWithVal
from classlab.data.cifar import load_cifar10, load_cifar100
from classlab.data.imagefolder import load_imagefolder
from classlab.data.synthetic import load_synthetic

Loader = Callable[[DataConfig, Path], Arrays | ArraysWithVal]

DATASETS: dict[str, Loader] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "imagefolder": load_imagefolder,
    "synthetic": load_synthetic,
}
