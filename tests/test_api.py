"""Notebook API: ``classlab.train`` / ``classlab.load_run`` / ``Run``, the README's
"## Notebook API" snippet executed as written, and ``import classlab`` staying light."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import classlab
from classlab import api
from classlab.config import Config, ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "nb", "data": {"name": "synthetic", "synthetic_size": 300},
        "model": {"width": 4}, "train": {"epochs": 1, "batch_size": 64, "progress": False,
                                         "device": "cpu", "precision": "fp32",
                                         "channels_last": False},
        "log": {"dynamics_every": 0}, "diagnose": {"enabled": False}}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; the CPU is shared with other test processes
    yield
    torch.set_num_threads(threads)


def _readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"^## Notebook API[ \t]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, "README.md has no '## Notebook API' section"
    code = re.search(r"^```python[ \t]*\n(.*?)^```", m.group(1), re.M | re.S)
    assert code, "the '## Notebook API' section has no ```python block"
    return code.group(1)


def test_readme_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture) -> None:
    snippet = _readme_snippet()
    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "__notebook__"}
    exec(compile(snippet, "README.md (## Notebook API)", "exec"), scope)
    run, again = scope["run"], scope["again"]
    assert isinstance(run, classlab.Run) and run.dir.parent == Path("runs")
    assert run.summary["status"] == "finished" and len(run.metrics) == 1
    assert (run.dir / "diagnose" / "confusion.png").is_file()
    assert (run.dir / "report.html").is_file()
    assert again.evaluate()["acc"] == pytest.approx(run.metrics[-1]["test_acc"], abs=1e-6)
    assert "Run(" in capsys.readouterr().out


def test_train_run_and_load_run_agree_with_metrics_csv(tmp_path: Path) -> None:
    # EMA on: the reported numbers come from the averaged weights, and so must evaluate's
    run = classlab.train(TINY, out=tmp_path / "runs", train__ema_decay=0.9,
                         overrides={"data.val_split": 0.2})
    assert run.config.train.ema_decay == 0.9 and run.config.data.val_split == 0.2
    last = run.metrics[-1]
    assert set(last) >= {"epoch", "lr", "train_loss", "val_acc", "test_acc"}
    assert last["epoch"] == 1 and isinstance(last["epoch"], int)
    for split in ("val", "test"):
        got = run.evaluate(split)
        assert got["loss"] == pytest.approx(last[f"{split}_loss"], rel=1e-5)
        assert got["acc"] == pytest.approx(last[f"{split}_acc"], abs=1e-6)
    assert run.evaluate("val")["n"] == 60 and run.evaluate("train")["n"] == 240
    loaded = classlab.load_run(run.dir, device="cpu")
    assert loaded.config == run.config and loaded.metrics == run.metrics
    assert loaded.summary == json.loads((run.dir / "summary.json").read_text())
    assert loaded.evaluate("test") == pytest.approx(run.evaluate("test"))
    assert "finished, 1/1 epochs, test acc" in repr(loaded)
    with pytest.raises(ValueError, match="split: unknown value 'dev'"):
        loaded.evaluate("dev")
    with pytest.raises(ConfigError, match="train.epochz"):  # bad config: before any folder
        classlab.train(TINY, out=tmp_path / "bad", train__epochz=3)
    assert not (tmp_path / "bad").exists()


def test_resolve_config_sources_and_overrides(tmp_path: Path) -> None:
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("optim:\n  name: sgd\n  lr: 1e-2\ntrain:\n  epochs: 3\n")
    from_path = api.resolve_config(yaml_path, train__batch_size=32)
    assert (from_path.optim.name, from_path.optim.lr, from_path.train.epochs,
            from_path.train.batch_size) == ("sgd", 0.01, 3, 32)
    assert api.resolve_config(str(yaml_path)) == api.resolve_config(yaml_path)
    # a Config is not modified; a nested mapping merges into its section
    base = Config()
    cfg = api.resolve_config(base, {"optim.lr": 0.5}, optim={"momentum": 0.8},
                             data__dir=tmp_path, aug__ops=("flip",))
    assert base.optim.lr == 0.001 and cfg.optim.lr == 0.5 and cfg.optim.momentum == 0.8
    assert cfg.optim.name == "adam" and cfg.data.dir == str(tmp_path)
    assert cfg.aug.ops == ["flip"]
    raw = {"train": {"epochs": 2}}
    assert api.resolve_config(raw, train__epochs=5).train.epochs == 5 and raw["train"] == {
        "epochs": 2}
    with pytest.raises(ConfigError, match="train.epochz: unknown key"):
        api.resolve_config(None, train__epochz=1)
    with pytest.raises(ConfigError, match="optim.lr: 0.0 is out of range"):
        api.resolve_config(None, {"optim.lr": 0.0})
    with pytest.raises(ConfigError, match="^name: is not a section$"):
        api.resolve_config({"name": "a"}, name__x=1)
    with pytest.raises(ConfigError, match="^name: expected a string"):
        api.resolve_config(None, name__x=1)


def test_classlab_train_is_a_plain_function() -> None:
    import inspect

    assert inspect.isfunction(classlab.train) and classlab.train is api.train
    assert list(inspect.signature(classlab.train).parameters)[:2] == ["config_or_path",
                                                                     "data_dir"]


def test_import_classlab_is_light() -> None:
    code = ("import sys, classlab; heavy = [m for m in ('torch', 'numpy', 'matplotlib') "
            "if m in sys.modules]; assert not heavy, heavy; "
            "assert callable(classlab.train) and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
