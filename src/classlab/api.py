"""Notebook API: ``classlab.train(...)``, ``classlab.load_run(...)`` and :class:`Run`.

    import classlab

    run = classlab.train("experiments/demo_synthetic.yaml", train__epochs=2)
    run.metrics[-1]["test_acc"], run.evaluate("val"), run.diagnose(count=8), run.report()
    run = classlab.load_run("runs/demo_synthetic-20250101-120000")

Importing this module (and ``classlab``) stays light: torch and everything built on it is
imported inside the functions that need it. :func:`train` runs the same run flow as
``classlab train`` (:func:`classlab.run.flow.train_run`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from classlab import config
from classlab.config import Config, ConfigError
from classlab.config.recipes import locate
from classlab.fmt import missing, pct
from classlab.rundir.files import read_json, run_folder
from classlab.rundir.layout import RunFiles

__all__ = ["Run", "callable_package", "load_grid", "load_run", "lr_find", "resolve_config",
           "train"]

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- configs


def resolve_config(config_or_path: Config | Mapping[str, Any] | str | os.PathLike | None = None,
                   overrides: Mapping[str, Any] | None = None, **kw: Any) -> Config:
    """A validated :class:`Config` from a Config, a mapping (as in YAML) or a YAML path
    (a bare name that is no file: the shipped recipe, ``"quickstart"``; None: the
    defaults), with ``overrides`` ({"train.epochs": 2}) and keyword overrides
    (``train__epochs=2``; ``__`` stands for the dot) applied in that order."""
    if config_or_path is None:
        raw: dict = {}
    elif isinstance(config_or_path, Config):
        raw = config.to_dict(config_or_path)
    elif isinstance(config_or_path, Mapping):
        raw = copy.deepcopy(config.plain(config_or_path))
    elif isinstance(config_or_path, (str, os.PathLike)):  # a file, else a recipe's name
        raw = config.read_yaml(locate(config_or_path))
    else:
        raise ConfigError(f"expected a Config, a mapping or a YAML path, got "
                          f"{type(config_or_path).__name__}")
    for key, value in (overrides or {}).items():
        config.set_key(raw, str(key), value, merge=True)
    for key, value in kw.items():
        config.set_key(raw, key.replace("__", "."), value, merge=True)
    return config.from_dict(raw)


# --------------------------------------------------------------------------- runs


class Run:
    """A run folder: its config, metrics and summary, plus evaluation, diagnostics and the
    report. The model and data are loaded on first use (from ``last.pt``) and kept."""

    def __init__(self, run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                 device: str | None = None, session: Any = None) -> None:
        self.dir = run_folder(run_dir)
        self.files = RunFiles(self.dir)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.device = device
        self._session = session
        self._epoch: int | None = None  # the epoch last.pt's weights are from, once loaded
        self._config: Config | None = None

    def __repr__(self) -> str:
        s = self.summary
        acc = (s.get("final") or {}).get("test_acc")
        more = f", test acc {pct(acc)}" if not missing(acc) else ""
        return f"Run({str(self.dir)!r}: {s.get('status', '?')}, " \
               f"{s.get('epochs_done', 0)}/{s.get('epochs', '?')} epochs{more})"

    @property
    def config(self) -> Config:
        """The run's resolved config (config.yaml)."""
        if self._config is None:
            self._config = config.load(self.files.config)
        return self._config

    @property
    def metrics(self) -> list[dict]:
        """One dict per finished epoch, read from metrics.csv now."""
        from classlab.rundir.metrics import read_metrics

        return read_metrics(self.files.metrics)

    @property
    def summary(self) -> dict:
        """summary.json, read now ({} while there is none)."""
        try:
            return read_json(self.files.summary)
        except (OSError, ValueError):
            return {}

    def session(self) -> Any:
        """The :class:`classlab.run.session.Session` of the run (the training session after
        :func:`train`; else built from ``last.pt``, once); its ``eval_model`` holds the
        weights that count and its ``evaluate(split)`` scores them."""
        if self._session is None:
            from classlab.run.session import session_from_run

            self._session, state = session_from_run(self.dir, self.data_dir, self.device)
            self._epoch = int(state["epoch"])
        return self._session

    def evaluate(self, split: str = "test") -> dict:
        """``{"loss", "acc", "n", "epoch"}`` of the run's model on ``split`` (train, val or
        test), without augmentation and with the run's ``train.tta``: for the last epoch's
        checkpoint, the numbers in metrics.csv (train: the clean-image equivalent). ``epoch``:
        the finished epochs the evaluated weights hold."""
        if split not in SPLITS:
            raise ValueError(f"split: unknown value {split!r}; allowed: {', '.join(SPLITS)}")
        res = self.session().evaluate(split)
        epoch = self._epoch if self._epoch is not None else self.summary.get("epochs_done")
        return {"loss": res.loss, "acc": res.acc, "n": res.n, "epoch": epoch}

    def diagnose(self, **kw: Any) -> dict:
        """:func:`classlab.run.diagnosis.diagnose_run` on this run (keywords: layers,
        method, count, target; ``device``/``data_root`` load the checkpoint afresh instead)."""
        from classlab.run.diagnosis import diagnose_run

        if "device" not in kw and "data_root" not in kw and "session" not in kw:
            kw["session"] = self.session()
        return diagnose_run(self.dir, **kw)

    def predict(self, paths: Any, top: int = 3) -> list[dict]:
        """The run's model on pictures (files or folders; one path or a list): per picture
        ``{"path", "top": [(class, probability), ...], "scale"}``, as ``classlab predict``
        makes them (:mod:`classlab.tools.predict`). Unreadable files raise a DataError
        naming them."""
        from classlab.data import DataError
        from classlab.tools.predict import load_model, predict

        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        preds, bad = predict(load_model(self.dir, self.device), paths, top)
        if bad:
            raise DataError("; ".join(f"{p}: {why}" for p, why in bad))
        return [{"path": p.path, "top": p.top, "scale": p.factor} for p in preds]

    def export(self, fmt: str = "onnx", out: str | os.PathLike | None = None) -> Path:
        """The model as one ONNX or TorchScript file (see :mod:`classlab.tools.export`)."""
        from classlab.tools.export import export

        return export(self.dir, fmt, Path(out) if out is not None else None)[0]

    def report(self) -> Path:
        """(Re)build report.md and report.html; returns the path of report.html."""
        from classlab.report import build_report

        return Path(build_report(self.dir)[1])

    # ------------------------------------------------------------------- in a notebook

    def _repr_html_(self) -> str:
        """The run's card: status, key numbers, a small curves picture, the run folder."""
        from classlab.notebook.runview import card

        return card(self.dir, self.summary)

    def show(self, section: str | None = None) -> None:
        """The report inline in a notebook, built now from the run folder; ``section``:
        one part of it (mistakes, cams, calibration, weights, data, curves, confusion,
        per_class, epochs, summary, config). Outside a notebook: where report.html is."""
        from classlab.notebook.runview import show_report

        show_report(self.dir, section)

    def html(self, section: str | None = None) -> str:
        """What :meth:`show` draws, as an HTML fragment."""
        from classlab.notebook.runview import report_html

        return report_html(self.dir, section)

    def plot_curves(self) -> Any:
        """Loss and accuracy per epoch and the LR, as a matplotlib Figure."""
        from classlab.notebook.runview import figure

        return figure(self.dir, "curves")

    def plot_confusion(self) -> Any:
        """The test set's confusion matrix (after :meth:`diagnose`), as a Figure."""
        from classlab.notebook.runview import figure

        return figure(self.dir, "confusion")

    def plot_per_class(self) -> Any:
        """Test accuracy per class (after :meth:`diagnose`), as a Figure."""
        from classlab.notebook.runview import figure

        return figure(self.dir, "per_class")

    def plot_calibration(self) -> Any:
        """The reliability diagram (after :meth:`diagnose`), as a Figure."""
        from classlab.notebook.runview import figure

        return figure(self.dir, "calibration")

    def plot_mistakes(self) -> Any:
        """The most confident mistakes (after :meth:`diagnose`), as a Figure."""
        from classlab.notebook.runview import figure

        return figure(self.dir, "mistakes")

    def plot_cams(self) -> Any:
        """The CAMs of those mistakes per layer (after :meth:`diagnose`), as a Figure."""
        from classlab.notebook.runview import figure

        return figure(self.dir, "cams")


def load_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
             device: str | None = None) -> Run:
    """A finished (or interrupted) run folder as a :class:`Run`. ``data_dir`` and ``device``
    are used when the model is loaded for evaluate/diagnose; without ``data_dir`` the data
    is read from where the run folder's data.json says it was trained from (and must still
    be the same files: a one-line DataError otherwise)."""
    return Run(run_dir, data_dir=data_dir, device=device)


def train(config_or_path: Config | Mapping[str, Any] | str | os.PathLike | None = None, *,
          data_dir: str | os.PathLike | None = None, out: str | os.PathLike = "runs",
          overrides: Mapping[str, Any] | None = None, **kw: Any) -> Run:
    """Train one run, as ``classlab train`` does, and return it as a :class:`Run`.

    ``config_or_path``: a :class:`~classlab.config.Config`, a mapping shaped like the YAML
    file, or a YAML path or a shipped recipe's name (``"quickstart"``, ``"fast"``: see
    ``classlab recipes``; a file of that name wins) (None: the defaults). ``overrides``:
    ``{"train.epochs": 2, ...}``; keyword arguments are overrides too, with ``__`` for the
    dot (``train__epochs=2``, ``optim__lr=3e-3``). The run folder goes under ``out``; with
    ``diagnose.enabled`` the diagnostics and report are written at the end, as on the command
    line.
    """
    from classlab.notebook.live import live_run
    from classlab.run.flow import train_run

    cfg = resolve_config(config_or_path, overrides, **kw)
    root = Path(data_dir) if data_dir is not None else None
    with live_run():  # in a notebook: the epoch table and bar, in place
        result = train_run(cfg, out=Path(out), data_root=root)
    return Run(result.run_dir, data_dir=root, session=result.session)


# --------------------------------------------------------------------------- grids, lr-find


def callable_package(name: str) -> Any:
    """``classlab.grid`` / ``classlab.compare``: the subpackage, which is also callable
    (``classlab.grid("grid.yaml", ...)`` runs a grid, :func:`classlab.grid.call.run_grid`;
    ``classlab.compare(a, b)`` compares runs, :func:`classlab.compare.call.compare`).
    Imported on first use: it imports torch."""
    if name == "grid":
        import classlab.grid as package
    elif name == "compare":
        import classlab.compare as package
    else:
        raise AttributeError(f"module 'classlab' has no attribute {name!r}")
    return package


def load_grid(grid_dir: str | os.PathLike) -> Any:
    """A grid folder as a :class:`classlab.notebook.grids.Grid`: ``.table`` (a pandas
    DataFrame), ``.findings``, ``.points``; a notebook shows its findings and table."""
    from classlab.grid.call import open_grid

    return open_grid(grid_dir)


def lr_find(config_or_path: Config | Mapping[str, Any] | str | os.PathLike | None = None, *,
            data_dir: str | os.PathLike | None = None, steps: int = 200,
            start_lr: float = 1e-7, end_lr: float = 10.0,
            overrides: Mapping[str, Any] | None = None, **kw: Any) -> Any:
    """The LR range test of ``classlab lr-find`` on the config's model, optimizer and
    training batches (overrides as in :func:`train`); returns its
    :class:`~classlab.tools.lr_find.LRFindResult` (``suggestion``, ``describe()``,
    ``figure()``). In a notebook its bar runs in place and its plot is shown at the end."""
    from classlab.notebook.lrfind import run_lr_find
    from classlab.run.session import build_session, torch_threads
    from classlab.tools.lr_find import lr_find as sweep

    cfg = resolve_config(config_or_path, overrides, **kw)
    with torch_threads(cfg.train.threads):
        s = build_session(cfg, Path(data_dir) if data_dir is not None else None)
        return run_lr_find(lambda: sweep(s, start_lr=start_lr, end_lr=end_lr, steps=steps,
                                         progress=cfg.train.progress))
