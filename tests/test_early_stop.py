"""Early stopping (train.early_stop_*): the rule, a run that stops (finished, and saying when
and why), its resume, and the checks of the config. Tiny synthetic runs."""

from __future__ import annotations

import pytest
import torch

from classlab import config
from classlab.cli import main
from classlab.config import ConfigError
from classlab.run.earlystop import EarlyStop
from classlab.run.flow import train_run
from classlab.rundir import RunFiles
from classlab.rundir.metrics import read_metrics
from classlab.rundir.summary import is_finished, read_summary, stop_sentence

TINY = {"name": "es", "data": {"name": "synthetic", "synthetic_size": 200},
        "model": {"width": 4}, "optim": {"name": "sgd", "lr": 0.05}, "sched": {"name": "none"},
        "aug": {"ops": []},
        "train": {"epochs": 6, "batch_size": 64, "progress": False, "device": "cpu",
                  "threads": 1, "precision": "fp32", "channels_last": False,
                  "checkpoint_minutes": 0,
                  # a huge min_delta: no epoch after the first counts as an improvement
                  "early_stop_patience": 2, "early_stop_min_delta": 100.0},
        "diagnose": {"enabled": False}, "log": {"dynamics_every": 0, "data_dynamics": False}}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(**train) -> config.Config:
    raw = {**TINY, "train": {**TINY["train"], **train}}
    return config.from_dict(raw)


def _rows(values: list[float], key: str = "val_loss") -> list[dict]:
    return [{"epoch": i + 1, key: v} for i, v in enumerate(values)]


def test_the_rule():
    cfg = _cfg(early_stop_min_delta=0.0, early_stop_patience=2)
    rule = EarlyStop.of(cfg, _rows([1.0, 0.9, 0.95, 0.91]))
    assert rule.stopped == {"epoch": 4, "metric": "val_loss", "best": 0.9, "best_epoch": 2,
                            "patience": 2, "min_delta": 0.0}
    assert EarlyStop.of(cfg, _rows([1.0, 0.9, 0.95, 0.85])).stopped is None
    # min_delta: 0.89 is not enough of an improvement on 0.9
    assert EarlyStop.of(_cfg(early_stop_min_delta=0.05), _rows([0.9, 0.89, 0.88])).stopped
    # accuracy goes up; NaN (a diverged epoch) never improves
    acc = _cfg(early_stop_metric="val_acc", early_stop_min_delta=0.0, early_stop_patience=1)
    assert EarlyStop.of(acc, _rows([50.0, 60.0], "val_acc")).stopped is None
    assert EarlyStop.of(acc, _rows([50.0, float("nan")], "val_acc")).stopped["epoch"] == 2
    # reaching the last epoch is not an early stop
    assert EarlyStop.of(_cfg(epochs=3), _rows([1.0, 2.0, 3.0])).stopped is None
    assert EarlyStop.of(_cfg(early_stop_patience=0), _rows([1.0, 2.0, 3.0])) is None


def test_a_run_stops_early_finished_and_says_why(tmp_path, capsys):
    res = train_run(_cfg(), out=tmp_path)
    s = res.summary
    assert s["status"] == "finished" and s["epochs_done"] == 3 and s["epochs"] == 6
    assert s["stopped_early"] == {"epoch": 3, "metric": "val_loss", "best": s[
        "stopped_early"]["best"], "best_epoch": 1, "patience": 2, "min_delta": 100.0}
    assert is_finished(read_summary(res.run_dir / "summary.json"))
    assert len(read_metrics(res.run_dir / "metrics.csv")) == 3
    assert RunFiles(res.run_dir).test_outputs.is_file()  # for the grid's paired tests
    out = capsys.readouterr().out
    assert "Stopped early after epoch 3: val_loss did not improve by more than 100 for 2 " \
           "epochs; best" in out
    # resuming a stopped run trains nothing more
    again = train_run(run_dir=res.run_dir)
    assert again.summary["epochs_done"] == 3 and again.summary["stopped_early"]["epoch"] == 3
    assert main(["runs", str(tmp_path)]) == 0
    assert "finished (early stop)" in capsys.readouterr().out
    assert main(["report", str(res.run_dir)]) == 0
    assert "stopped early after epoch 3" in (res.run_dir / "report.md").read_text()


def test_resume_replays_the_state_from_metrics(tmp_path):
    """Two epochs, then --epochs 6 (constant LR: extensible): the resumed run replays
    epochs 1-2 from metrics.csv and stops after epoch 3, as the unbroken run does."""
    whole = train_run(_cfg(), out=tmp_path / "a")
    part = train_run(_cfg(epochs=2), out=tmp_path / "b")
    assert "stopped_early" in part.summary and part.summary["stopped_early"] is None
    resumed = train_run(run_dir=part.run_dir, epochs=6)
    assert resumed.summary["stopped_early"] == whole.summary["stopped_early"]
    a = read_metrics(whole.run_dir / "metrics.csv")
    b = read_metrics(part.run_dir / "metrics.csv")
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]


def test_stop_sentence_of_a_pruned_trial():
    assert stop_sentence({"epoch": 1, "by": "pruner", "pruner": "asha", "metric": "val_acc",
                          "value": 12.5}) == "pruned after epoch 1 by the asha pruner " \
                                            "(val_acc 12.5)"
    assert stop_sentence(None) == ""


@pytest.mark.parametrize("train, data, match", [
    ({"early_stop_patience": 2}, {"val_split": 0}, "train.early_stop_patience: 2 watches "
                                                   "val_loss, but data.val_split is 0"),
    ({"early_stop_patience": 2, "eval_every": 2}, {}, "train.eval_every: 2 leaves epochs"),
    ({"early_stop_metric": "test_acc"}, {}, "train.early_stop_metric: unknown value"),
    ({"early_stop_patience": -1}, {}, "train.early_stop_patience: -1 is out of range"),
])
def test_bad_early_stop_settings(train, data, match):
    raw = {**TINY, "train": {**TINY["train"], **train}, "data": {**TINY["data"], **data}}
    with pytest.raises(ConfigError, match=match):
        config.from_dict(raw)
