"""Notebook API: ``classlab.train(...)``, ``classlab.load_run(...)`` and :class:`Run`.

    import classlab

    run = classlab.train("experiments/demo_synthetic.yaml", train__epochs=2)
    run.metrics[-1]["test_acc"], run.evaluate("val"), run.diagnose(count=8), run.report()
    run = classlab.load_run("runs/demo_synthetic-20250101-120000")

Importing this module (and ``classlab``) stays light: torch and everything built on it is
imported inside the functions that need it.

``classlab.train`` is also the name of the training module (``from classlab import train;
train.fit(...)``). Python gives a package attribute and a submodule of the same name one
slot, so the module itself is made callable (:func:`make_callable`): calling it runs
:func:`train` below, and attribute access reaches the module as before.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import importlib
import json
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from classlab import config
from classlab.config import Config, ConfigError

__all__ = ["Run", "load_run", "make_callable", "resolve_config", "train"]

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- classlab.train


class _CallableModule(types.ModuleType):
    """The class of the ``classlab.train`` module: calling it is :func:`classlab.api.train`."""

    def __call__(self, config_or_path: Any = None, **kwargs: Any) -> Run:
        return train(config_or_path, **kwargs)


def make_callable(module: types.ModuleType) -> types.ModuleType:
    """Make ``module`` (``classlab.train``) callable as the notebook's ``classlab.train``."""
    if not isinstance(module, _CallableModule):
        module.__class__ = _CallableModule
    return module


def _train_module() -> Any:
    """``classlab.train`` (the module), imported on first use and made callable."""
    return make_callable(importlib.import_module("classlab.train"))


# --------------------------------------------------------------------------- configs


def _plain(value: Any) -> Any:
    """Python values as a YAML file would give them (paths -> str, tuples -> lists)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _set(raw: dict, key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``; mappings merge into sections."""
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {key!r}: expected a key like train.epochs")
    node = config.section(raw, parts)
    last, value = parts[-1], _plain(value)
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        for k, v in value.items():
            _set(node[last], str(k), v)
    else:
        node[last] = value


def resolve_config(config_or_path: Config | Mapping[str, Any] | str | os.PathLike | None = None,
                   overrides: Mapping[str, Any] | None = None, **kw: Any) -> Config:
    """A validated :class:`Config` from a Config, a mapping (as in YAML) or a YAML path
    (None: the defaults), with ``overrides`` ({"train.epochs": 2}) and keyword overrides
    (``train__epochs=2``; ``__`` stands for the dot) applied in that order."""
    if config_or_path is None:
        raw: dict = {}
    elif isinstance(config_or_path, Config):
        raw = config.to_dict(config_or_path)
    elif isinstance(config_or_path, Mapping):
        raw = copy.deepcopy(_plain(config_or_path))
    elif isinstance(config_or_path, (str, os.PathLike)):
        raw = config.read_yaml(config_or_path)
    else:
        raise ConfigError(f"expected a Config, a mapping or a YAML path, got "
                          f"{type(config_or_path).__name__}")
    for key, value in (overrides or {}).items():
        _set(raw, str(key), value)
    for key, value in kw.items():
        _set(raw, key.replace("__", "."), value)
    return config.from_dict(raw)


# --------------------------------------------------------------------------- runs


def _read_metrics(path: Path) -> list[dict]:
    """metrics.csv rows: ``epoch`` an int, the rest floats (an empty cell is NaN)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else (float(v) if v else float("nan")))
                 for k, v in r.items()} for r in csv.DictReader(f)]


class Run:
    """A run folder: its config, metrics and summary, plus evaluation, diagnostics and the
    report. The model and data are loaded on first use (from ``last.pt``) and kept."""

    def __init__(self, run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                 device: str | None = None, session: Any = None) -> None:
        from classlab._io import RunDirError

        self.dir = Path(run_dir)
        if not (self.dir / "config.yaml").is_file():
            raise RunDirError(f"{self.dir}: not a run folder (no config.yaml)")
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.device = device
        self._session = session
        self._config: Config | None = None

    def __repr__(self) -> str:
        s = self.summary
        acc = (s.get("final") or {}).get("test_acc")
        more = f", test acc {acc:.2f}%" if isinstance(acc, (int, float)) else ""
        return f"Run({str(self.dir)!r}: {s.get('status', '?')}, " \
               f"{s.get('epochs_done', 0)}/{s.get('epochs', '?')} epochs{more})"

    @property
    def config(self) -> Config:
        """The run's resolved config (config.yaml)."""
        if self._config is None:
            self._config = config.load(self.dir / "config.yaml")
        return self._config

    @property
    def metrics(self) -> list[dict]:
        """One dict per finished epoch, read from metrics.csv now."""
        return _read_metrics(self.dir / "metrics.csv")

    @property
    def summary(self) -> dict:
        """summary.json, read now ({} while there is none)."""
        try:
            return json.loads((self.dir / "summary.json").read_text())
        except (OSError, ValueError):
            return {}

    def session(self) -> Any:
        """The :class:`classlab.train.Session` whose model holds the evaluated weights (the
        training session after :func:`train`; else built from ``last.pt``, once)."""
        if self._session is None:
            self._session, _ = _train_module().session_from_run(self.dir, self.data_dir,
                                                                self.device)
        s = self._session
        if s.ema is not None:  # metrics were measured on the EMA weights: use those
            s = dataclasses.replace(s, model=s.ema.model, ema=None, net=None)
        return s

    def evaluate(self, split: str = "test") -> dict:
        """``{"loss", "acc", "n"}`` of the run's model on ``split`` (train, val or test),
        without augmentation and with the run's ``train.tta``: for the last epoch's
        checkpoint, the numbers in metrics.csv (train: the clean-image equivalent)."""
        if split not in SPLITS:
            raise ValueError(f"split: unknown value {split!r}; allowed: {', '.join(SPLITS)}")
        t = _train_module()
        s = self.session()
        x, y = s.data[split]
        res = t.evaluate(s.model, x, y, normalize=s.normalize,
                         batch_size=s.cfg.train.eval_batch_size, amp=s.amp, tta=s.cfg.train.tta)
        return {"loss": res.loss, "acc": res.acc, "n": res.n}

    def diagnose(self, **kw: Any) -> dict:
        """:func:`classlab.diagnose.diagnose_run` on this run (keywords: layers, method,
        count, target; ``device``/``data_root`` load the checkpoint afresh instead)."""
        from classlab import diagnose

        if "device" not in kw and "data_root" not in kw and "session" not in kw:
            kw["session"] = self.session()
        return diagnose.diagnose_run(self.dir, **kw)

    def report(self) -> Path:
        """(Re)build report.md and report.html; returns the path of report.html."""
        from classlab import report

        return Path(report.build_report(self.dir)[1])


def load_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
             device: str | None = None) -> Run:
    """A finished (or interrupted) run folder as a :class:`Run`. ``data_dir`` and ``device``
    are used when the model is loaded for evaluate/diagnose."""
    return Run(run_dir, data_dir=data_dir, device=device)


def train(config_or_path: Config | Mapping[str, Any] | str | os.PathLike | None = None, *,
          data_dir: str | os.PathLike | None = None, out: str | os.PathLike = "runs",
          overrides: Mapping[str, Any] | None = None, **kw: Any) -> Run:
    """Train one run, as ``classlab train`` does, and return it as a :class:`Run`.

    ``config_or_path``: a :class:`~classlab.config.Config`, a mapping shaped like the YAML
    file, or a YAML path (None: the defaults). ``overrides``: ``{"train.epochs": 2, ...}``;
    keyword arguments are overrides too, with ``__`` for the dot (``train__epochs=2``,
    ``optim__lr=3e-3``). The run folder goes under ``out``; with ``diagnose.enabled`` the
    diagnostics and report are written at the end, as on the command line.
    """
    from classlab import tblog

    cfg = resolve_config(config_or_path, overrides, **kw)
    tblog.check_config(cfg)  # before the run folder exists
    t = _train_module()
    root = Path(data_dir) if data_dir is not None else None
    s, run_dir = t.start_run(cfg, Path(out), root)
    print(f"Run folder: {run_dir}\nModel: {cfg.model.name}/{cfg.model.norm}, {s.params:,} "
          f"params, device {s.device}, precision {s.amp.precision}", flush=True)
    with tblog.epoch_logger(cfg, run_dir, main=s.dist.main) as on_epoch:
        t.fit(s, run_dir, on_epoch=on_epoch)
    run = Run(run_dir, data_dir=root, session=s)
    if cfg.diagnose.enabled:
        run.diagnose()
        md, html = run.dir / "report.md", run.report()
        print(f"Report: {md} and {html}", flush=True)
    return run
