"""Optimizers, LR schedulers and Lookahead, each from a registry.

The registries only build torch's own classes; the names are
:data:`classlab.config.schema.OPTIMIZERS` and :data:`~classlab.config.schema.SCHEDULERS`.

- :mod:`~classlab.optim.optimizers`: SGD, Adam, AdamW and their parameter groups
- :mod:`~classlab.optim.schedulers`: onecycle, step, plateau, cosine, linear, none
- :mod:`~classlab.optim.lookahead`: Lookahead (airbench's ramp)
"""

from classlab.optim.lookahead import Lookahead
from classlab.optim.optimizers import (
    OPTIMIZERS,
    build_optimizer,
    current_lr,
    current_momentum,
    param_groups,
)
from classlab.optim.schedulers import SCHEDULERS, Stepper, build_scheduler

__all__ = ["OPTIMIZERS", "SCHEDULERS", "Lookahead", "Stepper", "build_optimizer",
           "build_scheduler", "current_lr", "current_momentum", "param_groups"]
