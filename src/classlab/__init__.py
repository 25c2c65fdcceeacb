"""classlab: train CIFAR-10-sized image classifiers from a YAML file and look inside them.

Notebook API (see :mod:`classlab.api`): ``classlab.train(config_or_path, **overrides) -> Run``,
``classlab.load_run(run_dir) -> Run``. ``import classlab`` does not import torch.
"""

from __future__ import annotations

from typing import Any

from classlab.api import Run, load_run

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "load_run", "train"]


def __getattr__(name: str) -> Any:
    # ``classlab.train``: the training module, made callable as the notebook function and
    # imported (with torch) only when first used.
    if name == "train":
        from classlab.api import _train_module

        return _train_module()
    raise AttributeError(f"module 'classlab' has no attribute {name!r}")
