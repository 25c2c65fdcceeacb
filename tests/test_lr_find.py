"""LR range test: restores everything bit for bit, stops on divergence, suggests LRs inside the
sweep and, where the divergence threshold is known exactly, below it."""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from classlab import config
from classlab.config import ConfigError
from classlab.engine import (
    EpochPlan,
    EpochStart,
    StepRecipe,
    epoch_generator,
    rng_state,
    train_one_epoch,
)
from classlab.run.session import Session, build_session
from classlab.tools.lr_find import (
    lr_find,
    lr_range_test,
    main_lr_find,
    suggest_steepest,
    suggest_valley,
)

TINY = ["data.name=synthetic", "data.synthetic_size=300", "model.width=4",
        "train.batch_size=64", "train.progress=false", "train.device=cpu",
        "diagnose.enabled=false", "log.dynamics_every=0", "train.precision=fp32",
        "train.channels_last=false"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is fastest on a shared CPU
    yield
    torch.set_num_threads(threads)


def _session(*extra: str) -> Session:
    return build_session(config.load(None, TINY + list(extra)))


def _epoch(s: Session, epoch: int) -> None:
    x, y = s.data["train"]
    plan = EpochPlan(s.model, StepRecipe(s.optimizer, s.amp), s.stepper, s.normalize,
                     lambda xb, g: xb, s.cfg.train.batch_size)
    train_one_epoch(plan, x, y, epoch_generator(s.cfg.train.seed, epoch, s.device),
                    EpochStart(epoch, (epoch - 1) * s.steps_per_epoch), progress=False)


def _same(a: object, b: object) -> bool:
    """Recursive, bitwise equality of (nested) state dicts."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


class _TrainOnly(dict):
    """session.data that fails the test if anything but the training split is read."""

    def __getitem__(self, key: str):
        if key != "train":
            raise AssertionError(f"lr_find read the {key} split")
        return super().__getitem__(key)


@pytest.mark.parametrize("extra", [[], ["optim.lookahead_every=2"]])
def test_restores_bit_identically_and_training_continues_unchanged(extra: list[str]) -> None:
    opts = ["optim.name=adam", "sched.name=onecycle", "train.epochs=2", *extra]
    a, b = _session(*opts), _session(*opts)
    _epoch(a, 1)
    _epoch(b, 1)
    groups = a.optimizer.param_groups
    before = {"model": copy.deepcopy(a.model.state_dict()),
              "optimizer": copy.deepcopy(a.optimizer.state_dict()),
              "scheduler": copy.deepcopy(a.stepper.state_dict()),
              "rng": rng_state()}
    assert before["optimizer"]["state"], "Adam has state after one epoch"
    a.data = _TrainOnly(a.data)
    res = lr_find(a, start_lr=1e-5, end_lr=1.0, steps=15)
    a.data = dict(a.data)
    assert len(res.lrs) == len(res.losses) == len(res.smoothed) > 5
    assert _same(a.model.state_dict(), before["model"])
    assert _same(a.optimizer.state_dict(), before["optimizer"])
    assert _same(a.stepper.state_dict(), before["scheduler"])
    assert _same(rng_state(), before["rng"])
    if a.lookahead is not None:  # paused during the sweep: its step count did not move
        assert a.lookahead.active and a.lookahead.steps == b.lookahead.steps > 0
    assert a.optimizer.param_groups is groups and all(g is h for g, h in
                                                      zip(groups, a.optimizer.param_groups))
    # ... so the next epoch is exactly what it would have been without the test
    _epoch(a, 2)
    _epoch(b, 2)
    assert _same(a.model.state_dict(), b.model.state_dict())
    for lr in (res.steepest, res.valley):
        assert lr is not None and res.start_lr <= lr <= res.end_lr


def test_lr_ramp_is_exponential_and_smoothing_bias_corrected() -> None:
    s = _session("optim.name=sgd", "optim.norm_bias_lr_scale=0.5", "sched.name=none")
    seen: list[list[float]] = []
    opt_step = s.optimizer.step

    def spy(*args, **kwargs):  # record the LR of every group at each step
        seen.append([g["lr"] for g in s.optimizer.param_groups])
        return opt_step(*args, **kwargs)

    s.optimizer.step = spy
    res = lr_find(s, start_lr=1e-4, end_lr=1e-2, steps=9, smooth=0.5, diverge=1e9)
    del s.optimizer.step
    assert not res.stopped_early and res.reason == "completed"
    assert res.lrs == pytest.approx(np.geomspace(1e-4, 1e-2, 9).tolist(), rel=1e-12)
    assert [g[1] / g[0] for g in seen] == pytest.approx([0.5] * 9)  # group ratios kept
    avg, expected = 0.0, []
    for i, loss in enumerate(res.losses):
        avg = 0.5 * avg + 0.5 * loss
        expected.append(avg / (1 - 0.5 ** (i + 1)))
    assert res.smoothed == pytest.approx(expected, rel=1e-12)
    assert res.smoothed[0] == pytest.approx(res.losses[0])


def test_stops_early_when_the_loss_diverges() -> None:
    s = _session("optim.name=sgd", "optim.momentum=0.9", "sched.name=none")
    before = copy.deepcopy(s.model.state_dict())
    res = lr_find(s, start_lr=1e-7, end_lr=1e4, steps=30)
    assert res.stopped_early and len(res.lrs) < 30
    assert "diverged" in res.reason or "non-finite" in res.reason
    assert max(res.smoothed) > 1.0 * min(res.smoothed)
    assert _same(s.model.state_dict(), before)
    for lr in (res.steepest, res.valley):
        assert lr is not None and 1e-7 <= lr <= 1e4 and lr < res.lrs[-1]


def test_suggestion_below_the_known_divergence_threshold() -> None:
    """Full-batch gradient descent on least squares, loss = mean((Xw - y)^2): the Hessian is
    H = 2 X^T X / N and plain GD diverges exactly for lr > 2 / lambda_max(H)."""
    gen = torch.Generator().manual_seed(0)
    n, d = 256, 8
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.linspace(0.3, 3.0, d,
                                                                               dtype=torch.float64)
    y = x @ torch.randn(d, 1, generator=gen, dtype=torch.float64) \
        + 0.1 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    threshold = 2 / torch.linalg.eigvalsh(2 * x.T @ x / n).max().item()
    model = torch.nn.Linear(d, 1, bias=False).double()
    w0 = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = lr_range_test(model, opt, lambda i: ((model(x) - y) ** 2).mean(), start_lr=1e-5,
                        end_lr=10.0, steps=200)
    assert res.stopped_early and res.lrs[-1] > threshold  # it did run into the divergence
    assert torch.equal(model.weight, w0) and opt.param_groups[0]["lr"] == 0.1
    for lr in (res.steepest, res.valley):
        assert threshold / 100 < lr < threshold, (lr, threshold)
    assert res.suggestion == res.valley <= res.steepest


def test_suggestion_rules_on_a_known_curve() -> None:
    lrs = np.geomspace(1e-6, 1.0, 121).tolist()
    t = np.log10(lrs)
    # a smooth drop centred at 1e-3 (steepest there), flat before, blowing up after 1e-1
    curve = 2.0 - 1.5 / (1 + np.exp(-(t + 3) * 3)) + np.where(t > -1, (t + 1) ** 2 * 50, 0)
    assert suggest_steepest(lrs, curve.tolist()) == pytest.approx(1e-3, rel=0.13)
    valley = suggest_valley(lrs, curve.tolist())
    # strictly decreasing from the 11th point (the window's start) to the minimum near 1e-1:
    lo = int(np.argmin(curve))
    assert valley == pytest.approx(lrs[(10 + lo) // 2])
    # a bump (an instability) after the first minimum, then a later dip almost as low: the
    # descent ends at the minimum instead of hopping over the bump
    bumpy = np.concatenate([np.linspace(2.3, 2.0, 40), np.linspace(2.2, 2.01, 60),
                            np.linspace(2.01, 2.3, 21)])
    assert suggest_valley(lrs, bumpy.tolist()) == pytest.approx(lrs[(10 + 39) // 2])
    assert suggest_steepest(lrs[:4], curve[:4].tolist()) is None
    assert suggest_valley(lrs[:4], curve[:4].tolist()) is None


@pytest.mark.parametrize("kw", [dict(start_lr=1.0, end_lr=0.1), dict(start_lr=0.0),
                                dict(steps=1), dict(smooth=1.0), dict(diverge=1.0)])
def test_bad_arguments_are_config_errors(kw: dict) -> None:
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="lr-find") as e:
        lr_range_test(model, opt, lambda i: model(torch.ones(1, 2)).sum(), **kw)
    assert "\n" not in str(e.value)


def test_main_writes_plot_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = config.load(None, TINY)
    assert main_lr_find(cfg, None, steps=12, start_lr=1e-5, end_lr=1.0,
                        plot=tmp_path / "out" / "lr.png") == 0
    out = capsys.readouterr().out
    assert "Suggested LR: " in out and "Plot: " in out
    png = (tmp_path / "out" / "lr.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "out" / "lr.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and list(rows[0]) == ["step", "lr", "loss", "smoothed"]


def test_cli_lr_find(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from classlab.cli import main

    plot = tmp_path / "lr_find.png"
    assert main(["lr-find", *TINY, "--steps", "12", "--start-lr", "1e-5", "--end-lr", "1",
                 "--plot", str(plot)]) == 0
    assert "Suggested LR: " in capsys.readouterr().out and plot.is_file()
    assert main(["lr-find", *TINY, "--start-lr", "1", "--end-lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("classlab lr-find: error: lr-find: need 0 < start_lr < end_lr")
    assert err.count("\n") == 1


def test_steepest_ignores_a_one_step_wiggle() -> None:
    """A smoothed curve from noisy losses wiggles; the steepest descent is the broad one."""
    import numpy as np

    lrs = np.logspace(-7, 1, 200)
    smoothed = 2.3 - 0.2 / (1 + np.exp(-2 * (np.log10(lrs) + 3)))  # steepest at 1e-3
    smoothed[12] -= 0.01  # a one-step dip near 1.6e-7: locally steeper than the descent
    got = suggest_steepest(lrs.tolist(), smoothed.tolist())
    assert 3e-4 < got < 3e-3
