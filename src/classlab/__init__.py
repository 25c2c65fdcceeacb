"""classlab: train CIFAR-10-sized image classifiers from a YAML file and look inside them.

Notebook API (see :mod:`classlab.api`): ``classlab.train(config_or_path, **overrides) -> Run``,
``classlab.load_run(run_dir) -> Run``, ``classlab.grid(grid_file, **overrides) -> Grid``,
``classlab.load_grid(grid_dir) -> Grid``, ``classlab.compare(run_a, run_b)``,
``classlab.lr_find(config_or_path)``; in a notebook they draw their progress in place and
show their results inline. ``import classlab`` does not import torch.

The package, from the command line down to plain values (each layer imports only those
below it; ``tests/test_architecture.py`` checks it)::

    cli  api                     the command line, the notebook API
    grid  tools                  grids of runs; lr-find and the schedule trace
    compare                      paired tests, the comparison report
    notebook                     the notebook display: live progress, cards, inline reports
    run                          the one run flow: session, epoch loop, run folder
    report  diagnose             the report; predictions, CAMs, figures
    engine                       training step, epoch, evaluation, precision, DDP
    data  models  optim  augment datasets, networks, optimizers/schedulers, augmentation
    rundir                       the run folder's files: names, atomic writes, checkpoints
    config                       the typed config tree (imports nothing else of classlab)
"""

from __future__ import annotations

from typing import Any

from classlab.api import Run, callable_package, load_grid, load_run, lr_find, train

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "compare", "grid", "load_grid", "load_run", "lr_find", "train"]


def __getattr__(name: str) -> Any:
    # classlab.grid(...) and classlab.compare(...) are the subpackages of those names, which
    # are callable; imported on first use, so that `import classlab` stays light
    return callable_package(name)
