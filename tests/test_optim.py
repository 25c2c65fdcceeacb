"""Every optimizer x scheduler steps, and the LR follows torch's own classes."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as lrs

from classlab.config import OptimConfig, SchedConfig
from classlab.optim import (
    OPTIMIZERS,
    SCHEDULERS,
    Lookahead,
    build_optimizer,
    build_scheduler,
    current_lr,
    param_groups,
)

EPOCHS, STEPS = 4, 5


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                               torch.nn.Flatten(), torch.nn.LazyLinear(2))


def _run(opt_name: str, sched: SchedConfig, metrics=None):
    model = _model()
    model(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
    opt = build_optimizer(model, OptimConfig(name=opt_name, lr=0.1))
    stepper = build_scheduler(opt, sched, EPOCHS, STEPS)
    lrs_seen = []
    for epoch in range(EPOCHS):
        for _ in range(STEPS):
            lrs_seen.append(current_lr(opt))
            before = [p.detach().clone() for p in model.parameters()]
            model(torch.randn(2, 3, 6, 6)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            stepper.after_batch()
            assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        stepper.after_epoch(metrics[epoch] if metrics else {"val_loss": 1.0, "val_acc": 1.0,
                                                             "train_loss": 1.0})
    return lrs_seen


def _torch_reference(make) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=0.1)
    sched, per_batch = make(opt)
    out = []
    for _ in range(EPOCHS):
        for _ in range(STEPS):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if per_batch:
                sched.step()
        if not per_batch:
            sched.step()
    return out


@pytest.mark.parametrize("sched", sorted(SCHEDULERS))
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_every_optimizer_with_every_scheduler_steps(opt, sched):
    seen = _run(opt, SchedConfig(name=sched, step_size=1, warmup_epochs=1))
    assert all(math.isfinite(v) and v > 0 for v in seen)
    if sched not in ("none", "plateau"):
        assert len(set(seen)) > 1, "the LR never moved"
    if sched in ("linear", "cosine"):  # the closed form: 1 epoch of linear warm-up, then decay
        lr = OptimConfig().muon_lr if opt == "muon" else 0.1  # the first group's LR
        warm, rest = STEPS, EPOCHS * STEPS - STEPS
        up = [lr * (1 / (warm + 1) + (1 - 1 / (warm + 1)) * t / warm) for t in range(warm)]
        down = [lr * (1 - t / rest) if sched == "linear"
                else lr * (1 + math.cos(math.pi * t / rest)) / 2 for t in range(rest)]
        assert seen == pytest.approx(up + down, rel=1e-6, abs=1e-9)


def test_onecycle_matches_torch():
    ours = _run("adam", SchedConfig(name="onecycle", pct_start=0.25))
    ref = _torch_reference(lambda o: (lrs.OneCycleLR(o, max_lr=0.1, total_steps=EPOCHS * STEPS,
                                                     pct_start=0.25), True))
    assert ours == pytest.approx(ref, rel=1e-12)


def test_step_matches_torch_and_steps_per_epoch():
    ours = _run("sgd", SchedConfig(name="step", step_size=2, gamma=0.5))
    ref = _torch_reference(lambda o: (lrs.StepLR(o, step_size=2, gamma=0.5), False))
    assert ours == pytest.approx(ref)
    assert ours[:10] == [0.1] * 10 and ours[10] == pytest.approx(0.05)


def test_plateau_watches_the_given_validation_metric_only():
    flat = [{"val_loss": 1.0, "val_acc": 50.0, "train_loss": 0.5 - 0.1 * e} for e in range(4)]
    ours = _run("adam", SchedConfig(name="plateau", patience=1, factor=0.5), flat)
    # epoch 0 sets the best; epochs 1 and 2 do not improve -> drop after epoch 2
    assert ours[: 3 * STEPS] == [0.1] * (3 * STEPS)
    assert ours[3 * STEPS] == pytest.approx(0.05)
    # train loss improves every epoch: monitoring it never drops
    ours = _run("adam", SchedConfig(name="plateau", patience=1, factor=0.5,
                                    monitor="train_loss"), flat)
    assert set(ours) == {0.1}


def test_cosine_with_warmup_shape():
    ours = _run("adamw", SchedConfig(name="cosine", warmup_epochs=1, final_lr_frac=0.0))
    warm = STEPS
    assert ours[0] == pytest.approx(0.1 / (warm + 1))
    assert ours[:warm] == sorted(ours[:warm])  # rising
    assert ours[warm] == pytest.approx(0.1)  # peak right after warm-up
    rest = EPOCHS * STEPS - warm
    for i, v in enumerate(ours[warm:]):
        assert v == pytest.approx(0.05 * (1 + math.cos(math.pi * i / rest)), rel=1e-6)


def test_no_decay_for_norm_and_bias():
    model = _model()
    model(torch.randn(1, 3, 6, 6))
    groups = param_groups(model, OptimConfig(weight_decay=0.1, no_decay_norm_bias=True,
                                             norm_bias_lr_scale=2.0, lr=0.01))
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [g["lr"] for g in groups] == [0.01, 0.02]
    assert all(p.ndim > 1 for p in groups[0]["params"])
    assert all(p.ndim == 1 for p in groups[1]["params"])


def test_weight_decay_coupling():
    # Adam couples weight decay (L2 in the gradient), AdamW decouples it: with a zero
    # gradient, Adam's first step is lr*sign(w) (Adam normalises wd*w), AdamW's is lr*wd*w.
    for name, expected in (("adam", 1.0 - 0.1), ("adamw", 1.0 - 0.1 * 0.5)):
        p = torch.nn.Parameter(torch.ones(1))
        opt = OPTIMIZERS[name]([{"params": [p]}], OptimConfig(name=name, lr=0.1,
                                                                weight_decay=0.5))
        p.grad = torch.zeros(1)
        opt.step()
        assert p.item() == pytest.approx(expected, rel=1e-4), name


def test_lookahead_follows_its_schedule_and_ends_on_the_slow_weights():
    total, every, decay = 12, 3, 0.9
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = {}  # the fast weights right after the SGD step (hooks run in registration order)
    opt.register_step_post_hook(
        lambda *_: seen.update(fast=[p.detach().clone() for p in model.parameters()]))
    la = Lookahead(model, every, decay, total)
    la.attach(opt)
    slow = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 3)
    for t in range(1, total + 1):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        fast = seen["fast"]
        if t == total:  # the result is the slow copy: the last fast steps are dropped
            assert all(torch.equal(p, s) for p, s in zip(model.parameters(), la.slow))
            assert all(torch.allclose(p, s, atol=1e-7) for p, s in zip(model.parameters(), slow))
        elif t % every == 0:
            d = decay ** every * (t / total) ** 3
            slow = [d * s + (1 - d) * f for s, f in zip(slow, fast)]
            assert all(torch.allclose(p, s, atol=1e-7) for p, s in zip(model.parameters(), slow))
        elif t > every:  # between syncs the optimizer moves the fast weights away from it
            assert not all(torch.equal(p, s) for p, s in zip(model.parameters(), slow))
    assert la.steps == total
    state = la.state_dict()
    other = Lookahead(torch.nn.Linear(3, 2), every, decay, total)
    other.load_state_dict(state)
    assert other.steps == total and all(torch.equal(a, b) for a, b in zip(other.slow, la.slow))


# --------------------------------------------------------------------------- classlab schedule


def test_schedule_counts_the_training_images_of_each_dataset(tmp_path):
    # Before: every dataset but cifar10 was traced with data.synthetic_size (2,000) images.
    from PIL import Image

    from classlab import config
    from classlab.tools.schedule import train_images

    assert train_images(config.load(None, ["data.name=cifar10"])) == 45_000
    assert train_images(config.load(None, ["data.name=cifar100"])) == 45_000
    assert train_images(config.load(None, ["data.name=cifar100", "data.val_split=0"])) == 50_000
    assert train_images(config.load(None, ["data.name=synthetic", "data.synthetic_size=300",
                                           "data.val_split=0"])) == 300
    for split, n in (("train", 7), ("test", 2)):
        for i in range(n):
            folder = tmp_path / split / ("cat" if i % 2 else "dog")
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not a picture")
    cfg = config.load(None, ["data.name=imagefolder", "data.val_split=0"])
    assert train_images(cfg, tmp_path) == 7
    (tmp_path / "val" / "cat").mkdir(parents=True)  # its own val/: nothing is carved
    assert train_images(config.load(None, ["data.name=imagefolder"]), tmp_path) == 7


def test_schedule_of_cifar100_has_its_steps_per_epoch(tmp_path, capsys):
    from classlab.cli import main

    assert main(["schedule", "experiments/resnet18_bn_onecycle.yaml", "data.name=cifar100",
                 "train.epochs=1", "--plot", str(tmp_path / "lr.png")]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r[:1].isdigit()]
    assert len(rows) == -(-45_000 // 256)  # ceil: 176 steps of batch 256
