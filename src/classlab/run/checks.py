"""Checks a config passes before a run starts that need more than the config itself: the
optional packages it names (tensorboard, mlflow, albumentations, kornia) and the transforms
those build.
One-line ConfigErrors, raised before anything is written."""

from __future__ import annotations

from classlab.config import Config, ConfigError
from classlab.run.tensorboard import check_config
from classlab.run.tracking import check_config as check_mlflow


def check_environment(cfg: Config) -> None:
    """Raise ConfigError when ``cfg`` cannot run here (a missing optional package, an
    albumentations transform that refuses its arguments)."""
    check_config(cfg)
    check_mlflow(cfg)
    _check_sync_bn(cfg)
    _check_kornia(cfg)
    if cfg.aug.backend == "albumentations":
        from classlab.augment.albu import check_transforms

        check_transforms(cfg.aug.albumentations)


def _check_kornia(cfg: Config) -> None:
    """The policies built on Kornia's image ops name the optional extra when it is missing
    (lr-find uses aug.ops whatever the backend, so they are checked under either)."""
    from classlab.augment.policies import missing_kornia

    name = missing_kornia(cfg.aug.ops)
    if name is not None:
        raise ConfigError(f"aug.ops: {name} uses Kornia's image ops and kornia is not "
                          "installed: pip install 'classlab[kornia]'")


def _check_sync_bn(cfg: Config) -> None:
    """torch's SyncBatchNorm runs on CUDA devices only: on CPU it would fail in every process
    of a torchrun job as DDP is built, with a traceback."""
    if not cfg.train.sync_bn:
        return
    device = cfg.train.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not device.startswith("cuda"):
        raise ConfigError(f"train.sync_bn: true needs CUDA devices (torch's SyncBatchNorm is "
                          f"GPU-only) and this run's device is {device}; set "
                          "train.sync_bn=false (each process then keeps the BatchNorm "
                          "statistics of its own share of the batch)")
