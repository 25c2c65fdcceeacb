"""``classlab schedule``: the LR (and momentum) of every step of a configured run, without
training. Built with the same registries as training, stepped the same way."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from classlab.config import Config, ConfigError
from classlab.data import default_data_dir
from classlab.data.imagefolder import count_images
from classlab.engine import steps_per_epoch
from classlab.optim import build_optimizer, build_scheduler, current_lr, current_momentum
from classlab.rundir import make_folder, save_figure
from classlab.rundir.files import check_output_file

# Training-set sizes of the releases (before the validation split)
RELEASE_TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000}
# The most optimizer steps traced (and printed, and plotted): 1,000 epochs of CIFAR-10 at
# batch 50 are 1,000,000; tracing them takes about a minute.
MAX_STEPS = 1_000_000


def train_images(cfg: Config, data_root: Path | None = None) -> int:
    """Training images per epoch implied by the config (after the val split and subset).

    CIFAR-10/100 have 50,000, the synthetic set ``data.synthetic_size``; an imagefolder's
    pictures are counted in ``<data dir>/train/`` (its ``val/`` folder, when there is one,
    replaces the carved validation split)."""
    name, carve = cfg.data.name, True
    if name in RELEASE_TRAIN_IMAGES:
        n = RELEASE_TRAIN_IMAGES[name]
    elif name == "synthetic":
        n = cfg.data.synthetic_size
    elif name == "imagefolder":
        root = data_root or (Path(cfg.data.dir).expanduser() if cfg.data.dir
                             else default_data_dir())
        n, has_val = count_images(root)
        carve = not has_val
    else:
        raise ConfigError(f"data.name: {name!r} has no known size; pass --train-images")
    if carve:
        n -= round(cfg.data.val_split * n)
    return min(n, cfg.data.subset) if cfg.data.subset else n


def trace(cfg: Config, n_images: int) -> list[tuple[int, int, float, float | None]]:
    """(step, epoch, lr, momentum) of every optimizer step. ReduceLROnPlateau depends on
    validation results that do not exist yet: it is traced as if no plateau happened."""
    model = torch.nn.Linear(2, 2)  # any parameters will do: only the LR is traced
    opt = build_optimizer(model, cfg.optim)
    steps = steps_per_epoch(n_images, cfg.train.batch_size)
    stepper = build_scheduler(opt, cfg.sched, cfg.train.epochs, steps)
    out = []
    for epoch in range(1, cfg.train.epochs + 1):
        for i in range(steps):
            out.append(((epoch - 1) * steps + i, epoch, current_lr(opt), current_momentum(opt)))
            opt.step()  # no gradients: parameters unchanged, but schedulers expect the call
            stepper.after_batch()
        if stepper.interval == "epoch":
            stepper.after_epoch({})
    return out


def _plot(rows, path: Path, title: str) -> None:
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    ax.plot([r[0] for r in rows], [r[2] for r in rows], color="C0")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate", color="C0")
    moms = [r[3] for r in rows]
    if moms[0] is not None and len(set(moms)) > 1:
        ax2 = ax.twinx()
        ax2.plot([r[0] for r in rows], moms, color="C1")
        ax2.set_ylabel("momentum / beta1", color="C1")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def check_steps(cfg: Config, n_images: int, given: bool) -> int:
    """Steps per epoch of ``n_images`` training images, when the whole schedule (at most
    :data:`MAX_STEPS` steps) can be traced; a one-line ConfigError otherwise."""
    if n_images < 1:
        where = "--train-images" if given else "training images"
        raise ConfigError(f"{where}: {n_images:,} is out of range; must be ≥ 1")
    steps = steps_per_epoch(n_images, cfg.train.batch_size)
    if cfg.train.epochs * steps > MAX_STEPS:
        raise ConfigError(f"schedule: train.epochs={cfg.train.epochs:,} x {steps:,} steps per "
                          f"epoch ({n_images:,} images, batch {cfg.train.batch_size:,}) is "
                          f"{cfg.train.epochs * steps:,} steps; at most {MAX_STEPS:,} are "
                          "traced")
    return steps


def main_schedule(cfg: Config, n_images: int | None, plot: Path,
                  data_root: Path | None = None, force: bool = False) -> int:
    check_output_file(plot, "--plot", suffix=".png", force=force)  # before any work
    n = n_images if n_images is not None else train_images(cfg, data_root)
    check_steps(cfg, n, n_images is not None)
    rows = trace(cfg, n)
    steps = len(rows) // cfg.train.epochs
    note = (f"# {cfg.sched.name}: {cfg.train.epochs} epochs x {steps} steps "
            f"({n} training images, batch {cfg.train.batch_size})")
    if cfg.sched.name == "plateau":
        note += ("\n# plateau: the LR starts at optim.lr and is multiplied by sched.factor "
                 f"after {cfg.sched.patience} epochs without improvement of "
                 f"{cfg.sched.monitor}; that depends on validation results, so it is shown "
                 "constant here.")
    print(note)
    print("step,epoch,lr,momentum")
    for step, epoch, lr, mom in rows:
        print(f"{step},{epoch},{lr!r},{'' if mom is None else repr(mom)}")
    make_folder(Path(plot).parent)
    _plot(rows, plot, f"{cfg.name}: {cfg.sched.name} schedule")
    print(f"# plot: {plot}", file=sys.stderr)
    return 0
