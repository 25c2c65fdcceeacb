"""Weight-update tracking: exact ratios, row counts, schedules before training."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as lrs

from classlab import config
from classlab.cli import main
from classlab.engine.dynamics import DynamicsLogger
from classlab.report.dynamics import flag_layers, read_dynamics, report_section
from classlab.run.fit import fit
from classlab.run.start import start_run


def _toy():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 4 * 4, 3))


def _steps(model, opt, logger, n, every_epoch=1):
    for step in range(n):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(5, 3, 6, 6)),
                                          torch.randint(0, 3, (5,))).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        logger.before_step(step)
        opt.step()
        logger.after_step(step, every_epoch, opt)
    logger.close()
    return grads, before


def _values(path, step, metric):
    return {r["layer"]: r["value"] for r in read_dynamics(path)
            if r["step"] == step and r["metric"] == metric}


def test_plain_sgd_ratio_is_lr_grad_over_weight(tmp_path):
    model = _toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    grads, before = _steps(model, opt, DynamicsLogger(model, tmp_path / "d.csv", 1), 1)
    ratio = _values(tmp_path / "d.csv", 0, "update_ratio")
    gnorm = _values(tmp_path / "d.csv", 0, "grad_norm")
    for k in grads:
        expect = 0.05 * grads[k].norm().item() / before[k].norm().item()
        assert ratio[k] == pytest.approx(expect, rel=1e-5), k
        assert gnorm[k] == pytest.approx(grads[k].norm().item(), rel=1e-6)


def test_adam_ratio_is_the_step_actually_taken(tmp_path):
    model = _toy()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.1)
    _, before = _steps(model, opt, DynamicsLogger(model, tmp_path / "d.csv", 3), 4)
    after = {k: p.detach() for k, p in model.named_parameters()}
    ratio = _values(tmp_path / "d.csv", 3, "update_ratio")
    for k in after:
        expect = (after[k] - before[k]).norm().item() / before[k].norm().item()
        assert ratio[k] == pytest.approx(expect, rel=1e-5), k


def test_row_counts_for_an_interval(tmp_path):
    model = _toy()
    opt = torch.optim.Adam(model.parameters())
    _steps(model, opt, DynamicsLogger(model, tmp_path / "d.csv", 4), 10)
    rows = read_dynamics(tmp_path / "d.csv")
    n_params = len(list(model.parameters()))
    layer_rows = [r for r in rows if r["layer"]]
    assert sorted({r["step"] for r in layer_rows}) == [0, 4, 8]
    assert len(layer_rows) == 3 * n_params * 3  # 3 snapshots x tensors x 3 metrics
    assert [r["step"] for r in rows if r["metric"] == "lr"] == list(range(10))
    assert len([r for r in rows if r["metric"] == "momentum"]) == 10  # Adam's beta1


def test_flags_layers_far_from_the_rest():
    import numpy as np

    ratios = np.array([[1e-3] * 4, [5e-2] * 4, [1e-6] * 3 + [1e-3]])
    assert flag_layers(["a", "b", "c"], ratios) == [("b", "high", pytest.approx(5e-2)),
                                                    ("c", "low", pytest.approx(1e-6))]


def test_training_writes_dynamics_and_the_report_section(tmp_path):
    cfg = config.load(None, ["data.name=synthetic", "data.synthetic_size=200", "model.width=4",
                             "train.epochs=1", "train.batch_size=32", "train.progress=false",
                             "log.dynamics_every=2", "train.precision=fp32",
                             "train.channels_last=false"])
    s, run_dir = start_run(cfg, tmp_path)
    fit(s, run_dir)
    rows = list(csv.DictReader(open(run_dir / "dynamics.csv")))
    assert {r["step"] for r in rows if r["metric"] == "grad_norm"} == \
        {str(i) for i in range(0, s.steps_per_epoch, 2)}
    text, images = report_section(run_dir)
    assert "median update/weight ratio" in text
    assert all(p.is_file() and p.stat().st_size > 0 for _, p in images)


def test_schedule_for_onecycle_matches_torch_step_by_step(tmp_path, capsys):
    args = ["optim.lr=0.01", "sched.name=onecycle", "train.epochs=3", "train.batch_size=100",
            "data.name=synthetic", "data.synthetic_size=1000", "data.val_split=0.1"]
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("")
    assert main(["schedule", str(cfg_file), *args, "--plot", str(tmp_path / "s.png")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln and ln[0].isdigit()]
    steps = 3 * 9  # 900 training images / 100
    assert len(lines) == steps
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=0.01)
    ref = lrs.OneCycleLR(opt, max_lr=0.01, total_steps=steps)
    for ln in lines:
        step, _, lr, mom = ln.split(",")
        assert float(lr) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), step
        assert float(mom) == pytest.approx(opt.param_groups[0]["betas"][0], rel=1e-12)
        opt.step()
        ref.step()
    assert (tmp_path / "s.png").stat().st_size > 0


def test_schedule_explains_plateau(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("sched: {name: plateau}\ntrain: {epochs: 2}\n")
    assert main(["schedule", str(cfg_file), "--plot", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "depends on validation results" in out
    assert {ln.split(",")[2] for ln in out.splitlines() if ln[:1].isdigit()} == {"0.001"}


def test_compare_overlays_runs(tmp_path, monkeypatch):
    from classlab.report import dynamics as dynamics_module
    from classlab.report.dynamics import plot_compare

    dirs = []
    for sched in ("onecycle", "step"):
        cfg = config.load(None, ["data.name=synthetic", "data.synthetic_size=100",
                                 "model.width=4", "train.epochs=1", "train.batch_size=30",
                                 "train.progress=false", "log.dynamics_every=1",
                                 "train.precision=fp32", "train.channels_last=false",
                                 "train.threads=1", f"sched.name={sched}", f"name={sched}"])
        s, run_dir = start_run(cfg, tmp_path)
        fit(s, run_dir)
        dirs.append((sched, run_dir))
    figures = []
    real_save = dynamics_module.save_figure
    monkeypatch.setattr(dynamics_module, "save_figure",
                        lambda fig, *a, **k: (figures.append(fig), real_save(fig, *a, **k)))
    out = plot_compare(dirs, tmp_path / "cmp.png")
    assert out is not None and out.stat().st_size > 0
    # what it shows, against dynamics.csv read here: per run, the median update/weight ratio
    # over the layers at each logged step (top) and the LR of each step (bottom)
    (fig,) = figures
    top, bottom = fig.axes
    for ax in (top, bottom):
        assert [line.get_label() for line in _labelled(ax)] == ["onecycle", "step"]
    for (name, run_dir), ratio_line, lr_line in zip(dirs, _labelled(top), _labelled(bottom)):
        assert ratio_line.get_label() == lr_line.get_label() == name
        rows = list(csv.DictReader(open(run_dir / "dynamics.csv")))
        by_step: dict[int, list[float]] = {}
        for r in rows:
            if r["metric"] == "update_ratio":  # nan: a layer not measured at that step
                by_step.setdefault(int(r["step"]), [])
                if r["value"] != "nan":
                    by_step[int(r["step"])].append(float(r["value"]))
        steps = sorted(by_step)
        assert list(ratio_line.get_xdata()) == steps
        assert list(ratio_line.get_ydata()) == pytest.approx(
            [float(np.median(by_step[s])) for s in steps])
        lr = [(int(r["step"]), float(r["value"])) for r in rows if r["metric"] == "lr"]
        assert list(lr_line.get_xdata()) == [s for s, _ in lr] and len(lr) == len(steps)
        assert list(lr_line.get_ydata()) == pytest.approx([v for _, v in lr])
    onecycle_lr, step_lr = (list(line.get_ydata()) for line in _labelled(bottom))
    assert len(set(onecycle_lr)) > 1 and len(set(step_lr)) == 1  # two schedules, told apart
    assert plot_compare([("none", tmp_path / "missing")], tmp_path / "x.png") is None


def _labelled(ax) -> list:
    return [line for line in ax.lines if not line.get_label().startswith("_")]
