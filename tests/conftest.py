# --------------------------------------------------------------------------- speed cache
# train.precision / train.channels_last default to auto, which measures and caches its choice
# in the user cache folder: the suite (and the CLI / Ray processes it starts, which inherit
# the environment) uses a folder of its own, so it never reads or writes the user's cache,
# and every run of one model and batch in the session trains with the same choice. Test configs
# pin train.precision=fp32 and train.channels_last=false, so their numbers do not depend on
# what the probe picks on the machine; only tests/test_speed.py lets it measure.

import os as _os
import tempfile as _tempfile

_os.environ["CLASSLAB_CACHE"] = _tempfile.mkdtemp(prefix="classlab-test-cache-")

# --------------------------------------------------------------------------- tiny trained run
# A 1-epoch run on the synthetic data (width 4), trained once per test session and shared by
# every test file that needs a real run folder (config.yaml, metrics.csv, summary.json,
# last.pt, dynamics.csv). Tests that write into a run folder should work on a copy
# (fixture ``copy_run``) so the shared one stays as training left it.

import shutil as _shutil
from pathlib import Path as _Path

import pytest as _pytest


def _tiny_config():
    from classlab import config

    return config.from_dict({
        "name": "tiny",
        "data": {"name": "synthetic", "synthetic_size": 300},
        "model": {"width": 4},
        # One thread: tiny convolutions gain nothing from two, and OpenMP threads stall
        # badly when the CPU is shared with other test processes.
        "train": {"epochs": 1, "batch_size": 64, "progress": False, "device": "cpu",
                  "threads": 1, "precision": "fp32", "channels_last": False},
        "log": {"dynamics_every": 1},
        "diagnose": {"enabled": False, "count": 6},
    })


@_pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: _pytest.TempPathFactory) -> _Path:
    """Folder of a finished 1-epoch synthetic run (do not write into it; copy it)."""
    from classlab.run.flow import train_run

    return train_run(_tiny_config(), out=tmp_path_factory.mktemp("tiny_runs")).run_dir


def _copy_run(src: _Path, dst_parent: _Path, files: tuple[str, ...] | None = None) -> _Path:
    """Copy a run folder (all of it, or only ``files``) into ``dst_parent``."""
    dst = _Path(dst_parent) / src.name
    if files is None:
        _shutil.copytree(src, dst)
    else:
        dst.mkdir(parents=True)
        for name in files:
            if (src / name).exists():
                _shutil.copy2(src / name, dst / name)
    return dst


@_pytest.fixture
def copy_run():
    """``copy_run(run_dir, dst_parent, files=None) -> copy``: a run folder to write into."""
    return _copy_run


@_pytest.fixture(scope="session")
def tiny_diagnosed(tiny_run: _Path, tmp_path_factory: _pytest.TempPathFactory) -> tuple:
    """(run folder, result dict) of ``diagnose_run`` on a copy of ``tiny_run``: 6 mistakes,
    Grad-CAM at layer1..layer4, loaded from last.pt as ``classlab diagnose`` does."""
    from classlab.run.diagnosis import diagnose_run

    run_dir = _copy_run(tiny_run, tmp_path_factory.mktemp("tiny_diagnosed"))
    return run_dir, diagnose_run(run_dir)


# --------------------------------------------------------------------------- shared helpers


@_pytest.fixture(scope="module")
def one_thread():
    """Width-4 nets run fastest on one thread, and two OpenMP threads stall badly when the
    CPU is shared with other processes (use with ``pytestmark = usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@_pytest.fixture
def cut_and_resume(monkeypatch):
    """``cut_and_resume(cfg, out, at="2:3")``: train ``cfg`` into ``out`` with a SIGTERM after
    step 3 of epoch 2 (``at``), resume the stopped run and return its folder."""
    from classlab.run.flow import train_run
    from classlab.run.signals import TEST_SIGNAL_ENV, RunInterrupted

    def run(cfg, out: _Path, at: str = "2:3") -> _Path:
        monkeypatch.setenv(TEST_SIGNAL_ENV, at)
        with _pytest.raises(RunInterrupted):
            train_run(cfg, out=out)
        (run_dir,) = out.iterdir()
        monkeypatch.delenv(TEST_SIGNAL_ENV)
        train_run(run_dir=run_dir)
        return run_dir

    return run


def assert_same_weights(a: _Path, b: _Path) -> None:
    """The two run folders' last.pt hold bit-identical model weights."""
    import torch

    wa = torch.load(a / "last.pt", weights_only=True)["model"]
    wb = torch.load(b / "last.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []


@_pytest.fixture(scope="module")
def net():
    """A width-4 resnet18 with random weights and non-trivial BatchNorm statistics, in eval."""
    import torch
    from torch import nn

    from classlab.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10, norm_layer=nn.BatchNorm2d, width=4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def count_hooks(model) -> int:
    """Forward/backward hooks left on any of ``model``'s modules (imported by test files:
    ``from conftest import count_hooks``)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def fake_cifar_bin(root):
    """A cifar-10-batches-bin folder under ``root`` with 20 random records per batch; returns
    its MD5 table (to monkeypatch over classlab.data.cifar.CIFAR10_BIN_MD5S)."""
    import hashlib

    import numpy as np

    from classlab.data import cifar

    folder = _Path(root) / cifar.BIN_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    md5s = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        rec = rng.integers(0, 256, size=(20, 3073), dtype=np.uint8)
        rec[:, 0] = np.arange(20) % 10
        (folder / f"{name}.bin").write_bytes(rec.tobytes())
        md5s[f"{name}.bin"] = hashlib.md5(rec.tobytes()).hexdigest()
    (folder / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    return md5s
