"""Early stopping (``train.early_stop_patience``): stop a run when its validation metric has
not improved for that many epochs; the run is then finished, with its last epoch's weights.

The state (best value, its epoch, epochs without improvement) is a function of the metrics
rows alone, so a resumed run replays it from metrics.csv (rows up to the checkpoint's epoch)
instead of storing it. Under torchrun every rank sees the same (all-reduced) metrics; rank 0
alone holds the history and decides, and its decision is broadcast, so every rank stops
after the same epoch.

summary.json of a stopped run holds ``stopped_early``: {"epoch": stopped after, "metric",
"best", "best_epoch", "patience", "min_delta"}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from classlab.config import Config
from classlab.engine import EvalResult
from classlab.fmt import as_float, csv_number, is_nan
from classlab.rundir import RunFiles
from classlab.rundir.metrics import read_metrics
from classlab.rundir.summary import read_summary


@dataclass
class EarlyStop:
    """The decision rule, fed one metrics row per finished epoch."""

    metric: str
    patience: int
    min_delta: float
    epochs: int  # the run's length: reaching it is not an early stop
    best: float | None = None
    best_epoch: int = 0
    bad: int = 0  # epochs in a row without an improvement
    stopped: dict | None = None  # the summary's stopped_early once it has stopped

    @classmethod
    def of(cls, cfg: Config, rows: list[dict] = ()) -> EarlyStop | None:
        """The rule of ``cfg`` after ``rows`` (None when early stopping is off)."""
        t = cfg.train
        if t.early_stop_patience <= 0:
            return None
        rule = cls(t.early_stop_metric, t.early_stop_patience, t.early_stop_min_delta,
                   t.epochs)
        for row in rows:
            rule.update(row)
        return rule

    def improves(self, value: float) -> bool:
        if is_nan(value):  # an unscored or diverged epoch never improves
            return False
        if self.best is None:
            return True
        if self.metric == "val_acc":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, row: dict) -> dict | None:
        """Count one epoch's row; the stop record when the run stops after it."""
        # as metrics.csv holds it (6 significant digits): a resumed run, which replays the
        # rows from that file, then decides exactly as an unbroken one
        value = as_float(csv_number(row[self.metric]))
        if self.improves(value):
            self.best, self.best_epoch, self.bad = value, int(row["epoch"]), 0
        else:
            self.bad += 1
        if self.stopped is None and self.bad >= self.patience and row["epoch"] < self.epochs:
            self.stopped = {"epoch": int(row["epoch"]), "metric": self.metric,
                            "best": self.best, "best_epoch": self.best_epoch,
                            "patience": self.patience, "min_delta": self.min_delta}
        return self.stopped


class EarlyStopper:
    """Early stopping inside :func:`classlab.run.fit.fit` (a no-op when it is off)."""

    def __init__(self, s, files: RunFiles, done: int) -> None:
        """``done``: epochs finished before this fit (a resume replays their rows; a run
        whose summary says it stopped after that epoch stays stopped)."""
        self.s = s
        self.on = s.cfg.train.early_stop_patience > 0
        self.external: dict | None = None
        self.rule: EarlyStop | None = None
        if s.dist.main:
            rows = [r for r in read_metrics(files.metrics) if r["epoch"] <= done] \
                if done and files.metrics.is_file() else []
            self.rule = EarlyStop.of(s.cfg, rows)
            before = (read_summary(files.summary) or {}).get("stopped_early") if done else None
            if isinstance(before, dict) and before.get("epoch") == done:
                self.external = before  # it stopped there (a pruned trial too): stays so
        local = self.external is not None or (self.rule is not None
                                              and self.rule.stopped is not None)
        self.stop = self._agree(local)

    def epochs(self, done: int, planned: int) -> range:
        """The epochs still to train (none when the run had already stopped)."""
        return range(0) if self.stop else range(done + 1, planned + 1)

    def after_epoch(self, row: dict, test_eval: EvalResult) -> EvalResult:
        """Count ``row``; when the run stops here, the test evaluation with its per-image
        outputs (kept for the final epoch only, so re-scored: the same weights)."""
        if not self.on:
            return test_eval
        local = self.rule is not None and self.rule.update(row) is not None
        self.stop = self._agree(local)
        if self.stop and test_eval.preds is None and self.s.dist.world == 1:
            test_eval = self.s.evaluate("test", keep_outputs=True)
        return test_eval

    def request(self, record: dict | None) -> None:
        """A stop asked for from outside (``fit``'s ``on_epoch`` returned ``record``: a
        tuning trial's pruner). The caller decides the same on every rank."""
        if isinstance(record, dict):
            self.stop, self.external = True, record

    def mark(self, summary: dict) -> dict:
        """``summary`` with ``stopped_early`` (rank 0; None when it did not stop)."""
        if self.external is not None:
            summary["stopped_early"] = self.external
        elif self.on:
            summary["stopped_early"] = self.rule.stopped if self.rule is not None else None
        return summary

    def _agree(self, local: bool) -> bool:
        """Rank 0's decision, on every rank."""
        if self.s.dist.world == 1:
            return local
        t = torch.tensor([int(local)], device=self.s.device)
        torch.distributed.broadcast(t, src=0)
        return bool(t[0])
