"""Multi-process training through torchrun (gloo on CPU, 2 processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from classlab import config
from classlab.run.session import build_session
from classlab.rundir.checkpoint import load_checkpoint

# 64 training images, batch 64: exactly one optimizer step per epoch. LayerNorm (no batch
# statistics) so a 2-process step must equal a 1-process step on the same global batch.
ONE_STEP = ["name=ddp", "data.name=synthetic", "data.synthetic_size=64", "data.val_split=0",
            "model.width=4", "model.norm=ln", "optim.name=sgd", "optim.lr=0.1",
            "sched.name=none", "aug.ops=[]", "train.epochs=1", "train.batch_size=64",
            "train.progress=false", "diagnose.enabled=false", "log.dynamics_every=0",
            "sched.monitor=train_loss",
            # the same arithmetic in both: a measured choice may differ between batch 64 and
            # the per-process batch 32
            "train.precision=fp32", "train.channels_last=false"]


def _train(tmp_path, out: str, *launcher: str, extra=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "classlab", "train", *ONE_STEP, *extra, "--out",
           str(tmp_path / out), *launcher]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    dirs = list((tmp_path / out).iterdir())
    assert len(dirs) == 1, dirs  # only rank 0 creates a run folder
    return dirs[0], res


def test_two_processes_step_like_one_process_with_the_same_global_batch(tmp_path):
    single, _ = _train(tmp_path, "single")
    multi, res = _train(tmp_path, "multi", "--nproc", "2")
    assert "2 processes" in res.stdout
    a = load_checkpoint(single / "last.pt")["model"]
    b = load_checkpoint(multi / "last.pt")["model"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k
    # and that step really moved the weights away from the (seeded) initialisation
    init = build_session(config.load(None, ONE_STEP)).model.state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-4
    for f in ("config.yaml", "metrics.csv", "summary.json", "last.pt"):
        assert (multi / f).is_file()
    rows_s = (single / "metrics.csv").read_text().splitlines()
    rows_m = (multi / "metrics.csv").read_text().splitlines()
    assert len(rows_m) == len(rows_s) == 2
    # all-reduced metrics: test accuracy over the whole test set, equal to 1 process
    col = rows_s[0].split(",").index("test_acc")
    assert float(rows_s[1].split(",")[col]) == float(rows_m[1].split(",")[col])


# --------------------------------------------------------------------------- BatchNorm

BN = ("model.norm=bn",)


def _bn_stats(run_dir) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run_dir / "last.pt")["model"]
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


@pytest.fixture(scope="module")
def bn_single(tmp_path_factory):
    """BatchNorm statistics of one process stepping the global batch of 64 once."""
    run, _ = _train(tmp_path_factory.mktemp("bn"), "single", extra=BN)
    return _bn_stats(run)


def test_without_sync_bn_a_process_keeps_the_statistics_of_its_half(tmp_path, bn_single):
    # the control: rank 0's running statistics are those of its 32 images, not the 64
    multi, _ = _train(tmp_path, "multi", "--nproc", "2", extra=BN)
    stats = _bn_stats(multi)
    assert stats.keys() == bn_single.keys() and len(stats) >= 2
    assert any(not torch.allclose(stats[k], bn_single[k], atol=1e-5) for k in stats)


def test_sync_bn_on_cpu_is_one_line_before_any_process_starts(tmp_path):
    # torch's SyncBatchNorm is GPU-only: on CPU (gloo) every rank used to die building DDP
    # with "ValueError: SyncBatchNorm layers only work with GPU modules" tracebacks
    cmd = [sys.executable, "-m", "classlab", "train", *ONE_STEP, *BN, "train.sync_bn=true",
           "--out", str(tmp_path / "o"), "--nproc", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "train.sync_bn" in lines[0] and "GPU-only" in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_early_stopping_stops_every_process_after_the_same_epoch(tmp_path):
    # rank 0 decides (it alone reads metrics.csv on a resume) and broadcasts: a rank that
    # went on alone would hang in the next all-reduce until the timeout
    extra = ("data.synthetic_size=128", "data.val_split=0.25", "train.epochs=5",
             "train.early_stop_patience=1", "train.early_stop_min_delta=100")
    multi, res = _train(tmp_path, "multi", "--nproc", "2", extra=extra)
    assert "2 processes" in res.stdout and "Stopped early after epoch 2" in res.stdout
    rows = (multi / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["stopped_early"]["epoch"] == 2
