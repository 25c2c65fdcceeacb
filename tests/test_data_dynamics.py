"""Per-image training dynamics in real runs (log.data_dynamics): data_dynamics.pt after every
epoch, bit-identical across a stop mid-epoch or a kill between its write and the checkpoint,
and under torchrun equal to one process on the same global batches."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from classlab import config
from classlab.data import load_splits
from classlab.run.flow import train_run
from classlab.run.signals import TEST_SIGNAL_ENV, RunInterrupted
from classlab.rundir.datadyn import read_data_dynamics, unpack_right

pytestmark = pytest.mark.usefixtures("one_thread")

# 180 training images, batch 32: 6 steps per epoch (the last of 20 images); the default
# augmentation (crop, flip, rotate, cutout), replayed on resume
RUN = {"name": "dd", "data": {"name": "synthetic", "synthetic_size": 200},
       "model": {"width": 4},
       "train": {"epochs": 3, "batch_size": 32, "progress": False, "device": "cpu",
                 "threads": 1, "precision": "fp32", "channels_last": False},
       "log": {"dynamics_every": 0}, "diagnose": {"enabled": False}}
FIELDS = ("index", "labels", "margin", "prob", "rival", "right")


class Killed(BaseException):
    """Stands in for SIGKILL (no ``except Exception`` swallows it)."""


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Compare float16 tensors bit for bit (NaN == NaN)."""
    return t.view(torch.int16) if t.dtype == torch.float16 else t


def assert_same_dynamics(a, b) -> None:
    ra, rb = read_data_dynamics(a / "data_dynamics.pt"), read_data_dynamics(b / "data_dynamics.pt")
    assert ra is not None and rb is not None and ra["epochs"] == rb["epochs"]
    for k in FIELDS:
        assert torch.equal(_bits(ra[k]), _bits(rb[k])), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return train_run(config.from_dict(RUN), out=tmp_path_factory.mktemp("ref")).run_dir


def test_every_training_image_gets_a_row_per_epoch(reference):
    rec = read_data_dynamics(reference / "data_dynamics.pt")
    splits = load_splits(config.from_dict(RUN).data)
    assert rec["epochs"] == 3 and rec["margin"].shape == (3, 180) and rec["augmented"]
    assert rec["index"].tolist() == list(range(180))
    assert torch.equal(rec["labels"], splits.train_y)
    m, p = rec["margin"].float(), rec["prob"].float()
    assert torch.isfinite(m).all() and ((p > 0) & (p < 1)).all()
    right = torch.from_numpy(unpack_right(rec))
    assert torch.equal(right, m > 0)  # right exactly when the given label's logit leads
    assert not (rec["rival"].long() == rec["labels"][None, :]).any()


def test_stopped_mid_epoch_then_resumed_keeps_the_dynamics_bit_identical(tmp_path, reference,
                                                                        monkeypatch):
    monkeypatch.setenv(TEST_SIGNAL_ENV, "2:3")  # SIGTERM after step 3 of epoch 2
    with pytest.raises(RunInterrupted):
        train_run(config.from_dict(RUN), out=tmp_path)
    (run_dir,) = tmp_path.iterdir()
    mid = torch.load(run_dir / "midepoch.pt", weights_only=True)
    assert mid["position"]["step"] == 3 and int(mid["position"]["marks"]["seen"].sum()) == 96
    monkeypatch.delenv(TEST_SIGNAL_ENV)
    train_run(run_dir=run_dir)
    assert_same_dynamics(reference, run_dir)


def test_killed_after_the_dynamics_file_before_the_checkpoint_resumes_identically(
        tmp_path, reference, monkeypatch):
    from classlab.run import fit as fit_module

    real, calls = fit_module.save_checkpoint, {"n": 0}

    def save(path, state):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2's last.pt: its data_dynamics.pt row is already written
            raise Killed
        real(path, state)

    monkeypatch.setattr(fit_module, "save_checkpoint", save)
    with pytest.raises(Killed):
        train_run(config.from_dict(RUN), out=tmp_path)
    (run_dir,) = tmp_path.iterdir()
    assert read_data_dynamics(run_dir / "data_dynamics.pt")["epochs"] == 2
    monkeypatch.undo()
    train_run(run_dir=run_dir)
    assert_same_dynamics(reference, run_dir)


# --------------------------------------------------------------------------- torchrun

# 128 images, batch 64, 2 epochs; LayerNorm and no augmentation: a 2-process step computes
# what a 1-process step does on the same global batch (as tests/test_ddp.py)
DDP = ["name=ddp", "data.name=synthetic", "data.synthetic_size=128", "data.val_split=0",
       "model.width=4", "model.norm=ln", "optim.name=sgd", "optim.lr=0.1", "sched.name=none",
       "aug.ops=[]", "train.epochs=2", "train.batch_size=64", "train.progress=false",
       "diagnose.enabled=false", "log.dynamics_every=0", "sched.monitor=train_loss",
       "train.precision=fp32", "train.channels_last=false"]


def _cli_run(out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "classlab", "train", *DDP, "--out", str(out),
                          *extra], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = out.iterdir()
    return read_data_dynamics(run_dir / "data_dynamics.pt")


def test_two_processes_record_what_one_process_does(tmp_path):
    one = _cli_run(tmp_path / "one")
    two = _cli_run(tmp_path / "two", "--nproc", "2")
    assert two["margin"].shape == one["margin"].shape == (2, 128)
    assert torch.equal(one["index"], two["index"]) and torch.equal(one["labels"], two["labels"])
    assert torch.allclose(one["margin"].float(), two["margin"].float(), atol=2e-3)
    assert torch.allclose(one["prob"].float(), two["prob"].float(), atol=2e-3)
    assert torch.equal(one["rival"], two["rival"]) and torch.equal(one["right"], two["right"])
