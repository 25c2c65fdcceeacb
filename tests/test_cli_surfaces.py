"""Surfaces the README promises that no other test reached (issue 29): ``classlab config``
(the reference, a resolved config, the albumentations check), ``--device`` of eval and
diagnose, overrides whose value holds ``=``, and the resources a Ray task asks for."""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import pytest
import torch
import yaml

from classlab import config, grid
from classlab.cli import main
from classlab.config import Config
from classlab.config.load import parse_override
from classlab.grid.ray_engine import _resources
from classlab.rundir.checkpoint import load_checkpoint, save_checkpoint
from classlab.rundir.summary import read_summary

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# --------------------------------------------------------------------------- classlab config


def test_config_without_arguments_prints_the_reference_of_every_key(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert out == config.reference() + "\n"
    keys = []  # every key of the schema, in its order
    for section in dataclasses.fields(Config):
        if section.default_factory is dataclasses.MISSING:  # a top-level key (name)
            keys.append(section.name)
        else:
            keys += [f"{section.name}.{f.name}"
                     for f in dataclasses.fields(section.default_factory)]
    assert "train.sync_bn" in keys and "sched.final_lr_frac" in keys and "name" in keys
    rows = [ln for ln in out.splitlines() if ln.startswith("| `")]
    assert [re.match(r"\| `([^`]+)`", ln).group(1) for ln in rows] == keys


def test_config_with_a_file_prints_the_resolved_config(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model: {width: 8}\noptim: {lr: 1e-3}\n")
    assert main(["config", str(path), "train.epochs=3", "sched.name=cosine"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    # every key, resolved: defaults filled in, the file's values, then the overrides
    assert printed == config.to_dict(config.load(path, ["train.epochs=3", "sched.name=cosine"]))
    assert (printed["model"]["width"], printed["optim"]["lr"]) == (8, 0.001)
    assert (printed["train"]["epochs"], printed["sched"]["name"]) == (3, "cosine")
    assert printed["data"]["name"] == "cifar10"  # a default, written out
    assert config.from_dict(printed) == config.load(path, ["train.epochs=3",
                                                           "sched.name=cosine"])


@pytest.mark.parametrize("third, message", [
    ("{name: Rotate, limt: 5}", "aug.albumentations[2].limt: unknown argument of Rotate"),
    ("{name: Rotate, limit: [1, 2, 3]}", "aug.albumentations[2].limit: Rotate refuses [1, 2, 3]"),
    ("{name: Rotat, limit: 5}", "aug.albumentations[2].name: unknown transform 'Rotat'"),
])
def test_config_checks_the_albumentations_transforms(tmp_path, capsys, third, message):
    """README: an unknown transform or argument, or a value the transform refuses, is a
    one-line error naming the key, and ``classlab config cfg.yaml`` checks it too."""
    path = tmp_path / "albu.yaml"
    path.write_text("aug:\n  backend: albumentations\n  albumentations:\n"
                    f"    - {{name: Pad, padding: 4}}\n    - {{name: HorizontalFlip}}\n"
                    f"    - {third}\n")
    assert main(["config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no config printed for a config that cannot run
    assert _one_line(captured.err).startswith(f"classlab config: error: {message}")


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize("item, key, value", [
    ("data.dir=/a=b", "data.dir", "/a=b"),
    ("name=x=y=z", "name", "x=y=z"),
    ("data.url=https://host/get?a=1&b=2", "data.url", "https://host/get?a=1&b=2"),
])
def test_an_override_splits_at_its_first_equals_sign(tmp_path, capsys, item, key, value):
    assert parse_override(item) == (key, value)
    section, _, field = key.rpartition(".")
    cfg = config.load(None, [item])
    assert getattr(getattr(cfg, section) if section else cfg, field) == value
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    assert main(["config", str(path), item]) == 0  # and on the command line
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed[section][field] if section else printed[field]) == value


# --------------------------------------------------------------------------- --device


@pytest.fixture
def gpu_trained_run(tiny_run, copy_run, tmp_path, monkeypatch):
    """A copy of the tiny run whose checkpoint says train.device=cuda (trained on a GPU
    machine), on a machine where CUDA is not available."""
    run = copy_run(tiny_run, tmp_path)
    state = load_checkpoint(run / "last.pt")
    state["config"]["train"]["device"] = "cuda"
    save_checkpoint(run / "last.pt", state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return run


def test_eval_device_overrides_the_device_the_run_was_trained_on(gpu_trained_run, capsys):
    assert main(["eval", str(gpu_trained_run)]) != 0  # as trained: cuda, which is not here
    err = _one_line(capsys.readouterr().err)
    assert "train.device=cuda" in err and "CUDA is not available" in err
    assert main(["eval", str(gpu_trained_run), "--device", "cpu"]) == 0
    line = _one_line(capsys.readouterr().out)
    test_acc = read_summary(gpu_trained_run / "summary.json")["final"]["test_acc"]
    assert line.startswith("Test set: Average loss: ") and f"({test_acc:.2f}%)" in line, line


def test_diagnose_device_overrides_the_device_the_run_was_trained_on(gpu_trained_run, capsys):
    args = ["diagnose", str(gpu_trained_run), "--count", "2", "--layers", "layer4"]
    assert main(args) != 0
    err = _one_line(capsys.readouterr().err)
    assert "train.device=cuda" in err and "CUDA is not available" in err
    assert not (gpu_trained_run / "diagnose").exists()
    assert main([*args, "--device", "cpu"]) == 0
    assert (gpu_trained_run / "diagnose" / "diagnose.json").is_file()
    assert (gpu_trained_run / "report.md").is_file()


# --------------------------------------------------------------------------- Ray tasks


def test_ray_tasks_ask_for_their_threads_as_cpus_and_a_gpu_when_on_cuda(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"base": {"data": {"name": "synthetic"}}, "axes": {
        "train.threads": [0, 3], "train.device": ["cpu", "cuda", "cuda:1", "auto"]}}))
    points = {(p.cfg.train.threads, p.cfg.train.device): p
              for p in grid.load_grid(path).points}

    def ray_with(gpus: int) -> SimpleNamespace:
        return SimpleNamespace(cluster_resources=lambda: {"CPU": 16.0, "GPU": float(gpus)})

    for (threads, device), p in points.items():
        cpus = threads or 1  # train.threads=0: one CPU
        on_gpu = device.startswith("cuda")
        assert _resources(p, ray_with(0)) == {"num_cpus": cpus, "num_gpus": int(on_gpu)}
        # auto takes a GPU where the cluster has one; cpu never does
        assert _resources(p, ray_with(2)) == {"num_cpus": cpus,
                                              "num_gpus": int(device != "cpu")}


def test_output_piped_into_a_reader_that_stops_early_is_no_traceback(tmp_path):
    # `classlab config | head -1`: head exits after one line; the rest of the reference
    # meets a closed pipe (BrokenPipeError), which is the reader's choice, not an error
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "classlab", "config"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    rc = p.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert rc in (0, 141)


def test_config_takes_overrides_without_a_file_like_train(capsys):
    from classlab.cli import main

    assert main(["config", "train.epochs=3", "optim.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "lr: 0.5" in out
