"""Every schedule setting changes the schedule (issue 29): OneCycleLR, LinearLR, cosine, step
and plateau traced step by step against torch's own schedulers (or the closed form) at
non-default settings, and every field of SchedConfig moves the LR (or momentum) trace of the
schedule that uses it."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.optim import lr_scheduler as lrs

from classlab import config
from classlab.config import SchedConfig
from classlab.optim import build_scheduler

LR, EPOCHS, STEPS = 0.1, 8, 3
TOTAL = EPOCHS * STEPS
# Per-epoch validation/training results: the validation loss never improves, the validation
# accuracy rises every epoch and the training loss falls every epoch.
METRICS = [{"val_loss": 1.0, "val_acc": 50.0 + e, "train_loss": 1.0 - 0.05 * e}
           for e in range(EPOCHS)]


def _sched(**fields) -> SchedConfig:
    """A validated SchedConfig (the values must be ones a config file may hold)."""
    return config.from_dict({"sched": fields}).sched


def _optimizer() -> torch.optim.SGD:
    p = torch.nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([p], lr=LR, momentum=0.9)


def _trace(stepper_or_sched, opt: torch.optim.Optimizer | None = None,
           metrics: list[dict] = METRICS) -> list[tuple[float, float]]:
    """(lr, momentum) before every optimizer step of EPOCHS x STEPS, stepped as training
    steps it: per batch, then once per epoch with that epoch's metrics."""
    if isinstance(stepper_or_sched, SchedConfig):
        opt = _optimizer()
        stepper = build_scheduler(opt, stepper_or_sched, EPOCHS, STEPS)
    else:
        stepper = stepper_or_sched
    out = []
    for epoch in range(EPOCHS):
        for _ in range(STEPS):
            out.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
            opt.step()
            stepper.after_batch()
        stepper.after_epoch(metrics[epoch])
    return out


def _torch_trace(make, per_batch: bool, metric: str | None = None) -> list[tuple[float, float]]:
    """The same trace with a torch scheduler built by ``make(optimizer)``."""
    opt = _optimizer()
    sched = make(opt)
    out = []
    for epoch in range(EPOCHS):
        for _ in range(STEPS):
            out.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
            opt.step()
            if per_batch:
                sched.step()
        if metric is not None:
            sched.step(METRICS[epoch][metric])
        elif not per_batch:
            sched.step()
    return out


def _lrs(trace: list[tuple[float, float]]) -> list[float]:
    return [lr for lr, _ in trace]


def _flat(trace: list[tuple[float, float]]) -> list[float]:
    """lr0, momentum0, lr1, ... (pytest.approx compares flat lists)."""
    return [x for pair in trace for x in pair]


# --------------------------------------------------------------------------- against torch


@pytest.mark.parametrize("three_phase", [False, True])
def test_onecycle_matches_torch_at_non_default_settings(three_phase):
    ours = _trace(_sched(name="onecycle", pct_start=0.4, div_factor=7.0, final_div_factor=50.0,
                         three_phase=three_phase))
    ref = _torch_trace(lambda o: lrs.OneCycleLR(o, max_lr=LR, total_steps=TOTAL, pct_start=0.4,
                                                div_factor=7.0, final_div_factor=50.0,
                                                three_phase=three_phase), per_batch=True)
    assert _flat(ours) == pytest.approx(_flat(ref), rel=1e-12)
    # the settings as the reference documents them: start at lr/div, end at start/final_div
    assert ours[0][0] == pytest.approx(LR / 7.0)
    assert max(_lrs(ours)) == pytest.approx(LR, rel=0.05)
    assert ours[-1][0] == pytest.approx(LR / 7.0 / 50.0, rel=1e-9)


def test_onecycle_without_momentum_cycling_keeps_the_momentum():
    ours = _trace(_sched(name="onecycle", cycle_momentum=False))
    ref = _torch_trace(lambda o: lrs.OneCycleLR(o, max_lr=LR, total_steps=TOTAL,
                                                cycle_momentum=False), per_batch=True)
    assert _flat(ours) == pytest.approx(_flat(ref), rel=1e-12)
    assert {m for _, m in ours} == {0.9}


@pytest.mark.parametrize("warmup_epochs", [0.0, 1.0])
def test_linear_matches_torch_and_the_closed_form(warmup_epochs):
    frac, warm = 0.2, int(warmup_epochs * STEPS)
    ours = _lrs(_trace(_sched(name="linear", final_lr_frac=frac, warmup_epochs=warmup_epochs)))
    rest = TOTAL - warm

    def make(o):
        decay = lrs.LinearLR(o, start_factor=1.0, end_factor=frac, total_iters=rest)
        if not warm:
            return decay
        up = lrs.LinearLR(o, start_factor=1 / (warm + 1), end_factor=1.0, total_iters=warm)
        return lrs.SequentialLR(o, [up, decay], milestones=[warm])

    assert ours == pytest.approx(_lrs(_torch_trace(make, per_batch=True)), rel=1e-12)
    # closed form: a straight line from 1/(warm+1) of the LR up to the LR, then down to
    # final_lr_frac of it at the end of training
    closed = [LR * (1 / (warm + 1) + (1 - 1 / (warm + 1)) * t / warm) if t < warm
              else LR * (1 + (frac - 1) * (t - warm) / rest) for t in range(TOTAL)]
    assert ours == pytest.approx(closed, rel=1e-9)


def test_cosine_matches_torch_and_the_closed_form_at_a_final_fraction():
    frac = 0.3
    ours = _lrs(_trace(_sched(name="cosine", final_lr_frac=frac)))
    ref = _torch_trace(lambda o: lrs.CosineAnnealingLR(o, T_max=TOTAL, eta_min=LR * frac),
                       per_batch=True)
    assert ours == pytest.approx(_lrs(ref), rel=1e-12)
    floor = LR * frac
    closed = [floor + (LR - floor) * (1 + math.cos(math.pi * t / TOTAL)) / 2
              for t in range(TOTAL)]
    assert ours == pytest.approx(closed, rel=1e-9)


def test_step_matches_torch_at_non_default_settings():
    ours = _trace(_sched(name="step", step_size=3, gamma=0.5))
    ref = _torch_trace(lambda o: lrs.StepLR(o, step_size=3, gamma=0.5), per_batch=False)
    assert _flat(ours) == pytest.approx(_flat(ref), rel=1e-12)
    assert _lrs(ours)[3 * STEPS] == pytest.approx(LR / 2)


@pytest.mark.parametrize("monitor, mode", [("val_loss", "min"), ("val_acc", "max"),
                                           ("train_loss", "min")])
def test_plateau_matches_torch_on_the_monitored_metric(monitor, mode):
    # falling accuracy for val_acc, so that every monitor sees a plateau somewhere
    metrics = [{**m, "val_acc": 60.0 - e} for e, m in enumerate(METRICS)] \
        if monitor == "val_acc" else METRICS
    sched = _sched(name="plateau", monitor=monitor, factor=0.5, patience=1, min_lr=0.02)
    opt = _optimizer()
    ours = _trace(build_scheduler(opt, sched, EPOCHS, STEPS), opt, metrics)
    ref_opt = _optimizer()
    ref = lrs.ReduceLROnPlateau(ref_opt, mode=mode, factor=0.5, patience=1, min_lr=0.02)
    expected = []
    for epoch in range(EPOCHS):
        expected += [ref_opt.param_groups[0]["lr"]] * STEPS
        ref.step(metrics[epoch][monitor])
    assert _lrs(ours) == pytest.approx(expected, rel=1e-12)
    if monitor != "train_loss":  # a plateau of the watched metric: drops down to min_lr
        assert min(_lrs(ours)) == pytest.approx(0.02) and _lrs(ours)[0] == LR
    else:  # the training loss falls every epoch: no drop
        assert set(_lrs(ours)) == {LR}


# --------------------------------------------------------------------------- every field

# field -> (the schedule that uses it and its other settings, a valid non-default value)
FIELD_CASES = {
    "name": ({"name": "onecycle"}, "cosine"),
    "pct_start": ({"name": "onecycle"}, 0.5),
    "div_factor": ({"name": "onecycle"}, 5.0),
    "final_div_factor": ({"name": "onecycle"}, 10.0),
    "three_phase": ({"name": "onecycle"}, True),
    "cycle_momentum": ({"name": "onecycle"}, False),
    "step_size": ({"name": "step"}, 3),
    "gamma": ({"name": "step", "step_size": 2}, 0.5),
    "monitor": ({"name": "plateau"}, "val_acc"),
    "factor": ({"name": "plateau"}, 0.5),
    "patience": ({"name": "plateau"}, 1),
    "min_lr": ({"name": "plateau", "patience": 0}, 0.01),
    "warmup_epochs": ({"name": "cosine"}, 1.0),
    "final_lr_frac": ({"name": "linear"}, 0.1),
}


def test_every_sched_field_has_a_case():
    assert set(FIELD_CASES) == {f.name for f in dataclasses.fields(SchedConfig)}


@pytest.mark.parametrize("field", sorted(FIELD_CASES))
def test_every_sched_field_changes_the_schedule(field):
    base, value = FIELD_CASES[field]
    assert getattr(SchedConfig(), field) != value  # a non-default value
    before = _trace(_sched(**base))
    after = _trace(_sched(**{**base, field: value}))
    assert after != before, f"sched.{field}={value} left the LR and momentum trace unchanged"


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_final_lr_frac_is_where_the_decay_ends(name):
    # the last step is one short of the end of the decay: (frac + one step's worth)
    for frac in (0.0, 0.25, 1.0):
        lrs_seen = _lrs(_trace(_sched(name=name, final_lr_frac=frac)))
        last = lrs_seen[-1] / LR
        assert frac <= last <= frac + 0.1 * (1 - frac) + 1e-12, (frac, last)
