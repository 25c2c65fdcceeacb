"""Checks a config passes before a run starts that need more than the config itself: the
optional packages it names (tensorboard, albumentations) and the transforms those build.
One-line ConfigErrors, raised before anything is written."""

from __future__ import annotations

from classlab.config import Config
from classlab.run.tensorboard import check_config


def check_environment(cfg: Config) -> None:
    """Raise ConfigError when ``cfg`` cannot run here (a missing optional package, an
    albumentations transform that refuses its arguments)."""
    check_config(cfg)
    if cfg.aug.backend == "albumentations":
        from classlab.augment.albu import check_transforms

        check_transforms(cfg.aug.albumentations)
