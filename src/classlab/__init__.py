"""classlab: train CIFAR-10-sized image classifiers from a YAML file and look inside them.

Notebook API (see :mod:`classlab.api`): ``classlab.train(config_or_path, **overrides) -> Run``,
``classlab.load_run(run_dir) -> Run``. ``import classlab`` does not import torch.

The package, from the command line down to plain values (each layer imports only those
below it; ``tests/test_architecture.py`` checks it)::

    cli  api                     the command line, the notebook API
    grid  tools                  grids of runs; lr-find and the schedule trace
    run                          the one run flow: session, epoch loop, run folder
    report  diagnose             the report; predictions, CAMs, figures
    engine                       training step, epoch, evaluation, precision, DDP
    data  models  optim  augment datasets, networks, optimizers/schedulers, augmentation
    rundir                       the run folder's files: names, atomic writes, checkpoints
    config                       the typed config tree (imports nothing else of classlab)
"""

from __future__ import annotations

from classlab.api import Run, load_run, train

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "load_run", "train"]
