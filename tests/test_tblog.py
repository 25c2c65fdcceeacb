"""TensorBoard logging: the event file holds exactly metrics.csv (tags, steps, values); a
missing tensorboard package is a one-line config error before any run folder exists."""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from classlab.cli import main
from classlab.config import ConfigError
from classlab.run import tensorboard

TINY = ["name=tb", "data.name=synthetic", "data.synthetic_size=300", "model.width=4",
        "train.epochs=2", "train.batch_size=64", "train.progress=false", "train.device=cpu",
        "train.threads=1", "diagnose.enabled=false", "log.dynamics_every=0",
        "train.precision=fp32", "train.channels_last=false"]


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    threads = torch.get_num_threads()  # train.threads=1 sets it process-wide
    yield
    torch.set_num_threads(threads)


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_event_file_equals_metrics_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", *TINY, "log.tensorboard=true", "--out", str(tmp_path)]) == 0
    (run_dir,) = tmp_path.iterdir()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    got = _scalars(run_dir / "tensorboard")
    assert set(got) == {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss",
                        "test/acc", "lr"}
    rows = _csv(run_dir / "metrics.csv")
    assert len(rows) == 2
    for column, tag in tensorboard.TAGS.items():
        assert [step for step, _ in got[tag]] == [1, 2], tag  # global_step = epoch
        # The CSV keeps 6 significant digits ("%.6g"): rounding moves a value by up to half a
        # unit in the 6th digit, i.e. 5e-6 relative (for a mantissa near 1.00000).
        want = [float(r[column]) for r in rows]
        assert [v for _, v in got[tag]] == pytest.approx(want, rel=5e-6, abs=1e-12), tag


def test_no_validation_split_means_no_val_tags(tmp_path: Path) -> None:
    assert main(["train", *TINY, "train.epochs=1", "data.val_split=0", "sched.name=onecycle",
                 "log.tensorboard=true", "--out", str(tmp_path)]) == 0
    (run_dir,) = tmp_path.iterdir()
    assert set(_scalars(run_dir / "tensorboard")) == {"train/loss", "train/acc", "test/loss",
                                                      "test/acc", "lr"}


def test_resumed_logging_purges_events_after_the_checkpoint(tmp_path: Path) -> None:
    def row(epoch: int, loss: float) -> dict:
        return {"epoch": epoch, "lr": 0.1, "train_loss": loss, "train_acc": 50.0,
                "val_loss": math.nan, "val_acc": math.nan, "test_loss": loss,
                "test_acc": 40.0, "seconds": 1.0}

    with tensorboard.TensorBoardLogger(tmp_path) as log:  # epochs 1..3, then a "crash"
        for epoch in (1, 2, 3):
            log(row(epoch, float(epoch)))
    with tensorboard.TensorBoardLogger(tmp_path, start_epoch=1) as log:  # resumed after epoch 1
        log(row(2, 20.0))
    got = _scalars(tmp_path / "tensorboard")
    assert got["train/loss"] == [(1, 1.0), (2, 20.0)]
    assert "val/loss" not in got  # NaN values are not written


def _without_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")
                 or m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


def test_missing_package_is_one_line_error_before_the_run_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _without_tensorboard(monkeypatch)
    with pytest.raises(ConfigError) as e:
        tensorboard.check_available()
    assert str(e.value) == tensorboard.MISSING == (
        "log.tensorboard=true needs the tensorboard package: pip install tensorboard")
    out = tmp_path / "runs"
    capsys.readouterr()
    assert main(["train", *TINY, "log.tensorboard=true", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"classlab train: error: {tensorboard.MISSING}\n"
    assert not out.exists()  # nothing was created
    # off (the default): the package is not needed, and nothing is written for it
    assert main(["train", *TINY, "train.epochs=1", "--out", str(out)]) == 0
    (run_dir,) = out.iterdir()
    assert not (run_dir / "tensorboard").exists()
