"""The one run flow, called by ``classlab train``, ``classlab.train(...)`` and each grid
point: check, open the run folder (new, or continue one), announce, fit, diagnose, report.

    result = train_run(cfg, out=Path("runs"))          # a new run
    result = train_run(run_dir=Path("runs/x-2025..."))  # continue it (or start a prepared one)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from classlab import config
from classlab.config import Config
from classlab.fmt import is_nan, pct
from classlab.run.checks import check_environment
from classlab.run.control import Progress
from classlab.run.fit import fit
from classlab.run.loggers import run_loggers
from classlab.run.resume import resume_run
from classlab.run.session import Session, torch_threads
from classlab.run.start import start_run
from classlab.rundir import RunFiles, all_or_nothing, run_folder
from classlab.rundir.lock import hold, network_filesystem
from classlab.rundir.summary import stop_sentence, stopped_early


@dataclass
class RunResult:
    run_dir: Path
    session: Session  # its model holds the final weights (diagnose, evaluate reuse it)
    summary: dict  # what summary.json says at the end


def train_run(cfg: Config | None = None, *, out: Path = Path("runs"),
              run_dir: Path | None = None, data_root: Path | None = None,
              diagnose_errors: str = "raise", epochs: int | None = None,
              on_epoch: Callable[[dict], dict | None] | None = None) -> RunResult:
    """Train one run and, when ``diagnose.enabled``, diagnose it and write its report.

    ``cfg`` starts a new run folder under ``out``; ``run_dir`` instead continues an existing
    one from its config.yaml and last.pt (a prepared folder without a checkpoint starts from
    scratch), to ``epochs`` epochs when given (see :func:`classlab.run.resume.extend`).
    The process holds the run folder's lock throughout (:mod:`classlab.rundir.lock`; rank 0
    under torchrun): a second writer is refused with one line before it touches anything.
    ``diagnose_errors="warn"`` prints a failed diagnosis instead of raising it (a grid point
    whose training finished is not failed by its report). ``on_epoch(row)``: called after
    each epoch's files are written; a dict it returns stops the run there, finished (see
    :func:`classlab.run.fit.fit`: a tuning trial's pruner)."""
    if (cfg is None) == (run_dir is None):
        raise ValueError("train_run takes a config or a run folder, not both")
    if run_dir is not None:
        cfg = _config_of(run_dir)
    check_environment(cfg)  # before the run folder exists
    with torch_threads(cfg.train.threads), contextlib.ExitStack() as held:
        if run_dir is None:
            s, run_dir = start_run(cfg, Path(out), data_root, held=held)
            progress = Progress()
        else:
            if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 writes, and holds it
                held.enter_context(hold(run_dir))
                _warn_network_fs(run_dir)
            resumed = resume_run(run_dir, data_root, epochs)
            s, progress = resumed.session, resumed.progress
        if s.dist.main:
            _announce(s, run_dir, progress)
        # TensorBoard, MLflow: open through the report (MLflow uploads it at the end)
        with run_loggers(s.cfg, run_dir, start_epoch=progress.epoch,
                         main=s.dist.main) as logs:
            summary = fit(s, run_dir, progress, on_epoch=_chain(logs.epoch, on_epoch))
            if s.dist.main:
                _print_final(summary)
                if s.cfg.diagnose.enabled:
                    _diagnose_and_report(run_dir, s, diagnose_errors)
            logs.finish(summary)
    return RunResult(Path(run_dir), s, summary)


def _chain(log_epoch: Callable[[dict], None],
           on_epoch: Callable[[dict], dict | None] | None) -> Callable[[dict], dict | None]:
    """The run's loggers (TensorBoard, MLflow), then the caller's callback (whose answer
    counts)."""
    def both(row: dict) -> dict | None:
        log_epoch(row)
        return on_epoch(row) if on_epoch is not None else None
    return both


def _warn_network_fs(run_dir: Path) -> None:
    kind = network_filesystem(run_dir)
    if kind is not None:
        print(f"note: {run_dir} is on a {kind} file system, where its lock may not keep a "
              "process on another machine from writing it too", flush=True)


def _config_of(run_dir: Path) -> Config:
    return config.load(RunFiles(run_folder(run_dir)).config)


def _announce(s: Session, run_dir: Path, progress: Progress) -> None:
    pos = progress.position
    if pos is not None:
        print(f"Resuming {run_dir} at epoch {pos.epoch}, step {pos.step} of {pos.steps}",
              flush=True)
    elif progress.epoch:
        print(f"Resuming {run_dir} after epoch {progress.epoch}", flush=True)
    print(f"Run folder: {run_dir}\nModel: {s.cfg.model.name}/{s.cfg.model.norm}, "
          f"{s.params:,} params, device {s.device}, precision {s.amp.precision}"
          + (f", {s.dist.world} processes" if s.dist.world > 1 else ""), flush=True)
    print(s.speed.line(), flush=True)
    if s.cfg.data.name != "synthetic":
        print(f"Data: {s.cfg.data.name} from {s.data_root}", flush=True)


def _print_final(summary: dict) -> None:
    f, b = summary["final"], summary["best_by_val"]
    if not f:
        return
    parts = [f"{k} acc {pct(f[f'{k}_acc'])}" for k in ("train", "val", "test")
             if not is_nan(f[f"{k}_acc"])]  # a split that is absent / unscored
    best = ""
    if b and b.get("by") == "val_acc":  # without a validation split no epoch is "best"
        best = f"  (best by val: epoch {b['epoch']}, test acc {pct(b['test_acc'])})"
    print(f"Final: {', '.join(parts)}{best}", flush=True)
    if stopped_early(summary):
        print(stop_sentence(stopped_early(summary)).capitalize(), flush=True)


def diagnose_and_report(run_dir: Path, **kw) -> tuple[Path, Path]:
    """Diagnose a run (see :func:`classlab.run.diagnosis.diagnose_run` for ``kw``), then
    build its report; prints where the report is."""
    from classlab.report import build_report
    from classlab.run.diagnosis import diagnose_run

    # re-entrant: a training process already holds it; diagnose's files and the report
    # appear together or not at all (a full disk or Ctrl-C leaves the previous ones)
    with hold(run_dir), all_or_nothing():
        diagnose_run(run_dir, **kw)
        md, html = build_report(run_dir)
    print(f"Report: {md} and {html}", flush=True)
    return md, html


def _diagnose_and_report(run_dir: Path, s: Session, errors: str) -> None:
    try:
        diagnose_and_report(run_dir, session=s)
    except Exception as e:
        if errors == "raise":
            raise
        text = str(e).strip().splitlines()
        print(f"{run_dir}: diagnose skipped: {type(e).__name__}: {text[0] if text else ''}",
              file=sys.stderr, flush=True)
