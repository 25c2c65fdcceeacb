"""Suspected label errors of a run folder: the training set from data_dynamics.pt, the test
set from the test predictions (the algorithms and their criteria:
:mod:`classlab.diagnose.dataissues`), written to label_issues.csv; scored against the noise
``data.label_noise`` injected (label_noise.csv). Reads files only: ``classlab data-issues``
needs neither the data nor the model."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classlab.diagnose.cams import DiagnoseError
from classlab.diagnose.dataissues import (
    AUM_THRESHOLD,
    REGIONS,
    TrainDynamics,
    calibrated_joint,
    class_thresholds,
    confident_joint,
    prune_by_noise_rate,
    score_detector,
    summarise,
)
from classlab.fmt import MISSING, csv_number, fixed, pct, text_table
from classlab.rundir import RunFiles, run_folder
from classlab.rundir.checkpoint import read_test_outputs
from classlab.rundir.datadyn import read_data_dynamics
from classlab.rundir.layout import LABEL_ISSUE_FIELDS
from classlab.rundir.lock import hold
from classlab.rundir.metrics import write_csv
from classlab.rundir.summary import read_summary

TRAIN_CRITERION = (f"area under the margin (AUM) < {AUM_THRESHOLD:g}: over the epochs, the "
                   "given label's logit stayed on average below another class's (a fixed "
                   "threshold in place of the AUM paper's threshold samples, which need an extra "
                   "class in training)")
TEST_CRITERION = ("confident learning, prune by noise rate: per-class thresholds, the confident "
                  "joint, and for each given label its estimated number of wrong labels, those "
                  "with the largest margin p(other) - p(given) > 0")


@dataclass
class LabelIssues:
    """The flagged images of both splits and what the report says about them."""

    classes: list[str]
    train: TrainDynamics | None = None
    test: dict | None = None  # flagged [F] test indices, suggested, margin, and the joint
    noise: dict | None = None  # score_detector against label_noise.csv
    summary: dict = field(default_factory=dict)  # for diagnose.json

    def name(self, c: int) -> str:
        return self.classes[c] if 0 <= c < len(self.classes) else str(c)

    def rows(self, split: str | None = None) -> list[dict]:
        """label_issues.csv's rows (LABEL_ISSUE_FIELDS) of ``split`` (None: both), most
        suspect first within each split."""
        out = []
        if self.train is not None and split in (None, "train"):
            t = self.train
            out += [{"split": "train", "index": int(t.index[r]), "given": int(t.labels[r]),
                     "suggested": int(t.suggested[r]), "score": -float(t.aum[r])}
                    for r in t.flagged]
        if self.test is not None and split in (None, "test"):
            d = self.test
            out += [{"split": "test", "index": int(i), "given": int(g), "suggested": int(s),
                     "score": float(m)} for i, g, s, m in
                    zip(d["flagged"], d["given"], d["suggested"], d["margin"], strict=True)]
        for r in out:
            r["given_name"], r["suggested_name"] = self.name(r["given"]), self.name(
                r["suggested"])
        return out

    def suspected_test(self, indices) -> list[bool]:
        """Whether each of the test ``indices`` is a suspected label error."""
        flagged = set(self.test["flagged"].tolist()) if self.test is not None else set()
        return [int(i) in flagged for i in indices]


def test_issues(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Confident learning on the test predictions (see the module docstring)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    t = class_thresholds(probs, labels)
    c = confident_joint(probs, labels, t)
    q = calibrated_joint(c, labels)
    flagged, suggested, margin = prune_by_noise_rate(probs, labels, c)
    return {"flagged": flagged, "given": labels[flagged], "suggested": suggested,
            "margin": margin, "thresholds": t, "joint": c, "noise_rate": 1 - float(np.trace(q))
            if q.sum() > 0 else float("nan"), "images": len(labels)}


def read_noise(files: RunFiles) -> np.ndarray | None:
    """The training-split indices label_noise.csv lists (None: no noise was injected)."""
    try:
        with open(files.label_noise, newline="") as f:
            return np.array([int(r["index"]) for r in csv.DictReader(f)], dtype=np.int64)
    except FileNotFoundError:
        return None


def read_excluded(files: RunFiles) -> int:
    """How many training images the run left out (excluded.csv's rows)."""
    try:
        return max(len(files.excluded.read_text().splitlines()) - 1, 0)
    except FileNotFoundError:
        return 0


def find_label_issues(files: RunFiles, classes: list[str], test_probs=None,
                      test_labels=None) -> LabelIssues:
    """The suspected label errors of the run folder ``files``: the training set's when it
    recorded its dynamics, the test set's when its test predictions are given."""
    out = LabelIssues(list(classes))
    rec = read_data_dynamics(files.data_dynamics)
    if rec is not None and rec["margin"].shape[0] > 0:
        out.train = summarise(rec)
        noisy = read_noise(files)
        if noisy is not None:
            t = out.train
            flagged = np.zeros(len(t.index), dtype=bool)
            flagged[t.flagged] = True
            out.noise = score_detector(-t.aum, flagged, np.isin(t.index, noisy))
            out.noise["injected"] = len(noisy)
    if test_probs is not None:
        out.test = test_issues(test_probs, test_labels)
    out.summary = _summary(out, read_excluded(files))
    return out


def _summary(li: LabelIssues, excluded: int) -> dict:
    out: dict = {"excluded": excluded, "train": None, "test": None, "noise": li.noise}
    t = li.train
    if t is not None:
        out["train"] = {
            "images": len(t.index), "epochs": t.epochs, "flagged": len(t.flagged),
            "criterion": TRAIN_CRITERION, "threshold": AUM_THRESHOLD,
            "forgotten": int((t.forgetting > 0).sum()),
            "forgetting_events": int(t.forgetting.sum()),
            "never_learned": int((t.correctness == 0).sum()),
            "regions": {r: int((t.region == r).sum()) for r in REGIONS}}
    d = li.test
    if d is not None:
        out["test"] = {"images": d["images"], "flagged": len(d["flagged"]),
                       "criterion": TEST_CRITERION, "noise_rate": d["noise_rate"],
                       "thresholds": [float(v) for v in d["thresholds"]]}
    return out


def write_label_issues(path: Path, rows: list[dict]) -> None:
    """label_issues.csv (or an export of some of its rows), atomically."""
    write_csv(path, LABEL_ISSUE_FIELDS,
              [[r["split"], r["index"], r["given"], r["suggested"], csv_number(r["score"]),
                r["given_name"], r["suggested_name"]] for r in rows])


# --------------------------------------------------------------------------- classlab data-issues

SPLITS = ("train", "test")


def check_command(split: str | None, top: int | None) -> None:
    """One-line DiagnoseError for a bad ``--split`` or ``--top``."""
    if split is not None and split not in SPLITS:
        raise DiagnoseError(f"--split: unknown value {split!r}; allowed: {', '.join(SPLITS)}")
    if top is not None and top < 1:
        raise DiagnoseError(f"--top: {top} is out of range; must be ≥ 1")


def main_data_issues(run_dir: Path, split: str | None = None, top: int | None = None,
                     out: Path | None = None) -> int:
    """``classlab data-issues``: find the run's suspected label errors from its files
    (data_dynamics.pt, test_outputs.pt), rewrite label_issues.csv, print the ``top`` (20
    unless given) of ``split`` (both unless given) and export them (every one of the split
    unless ``top`` is given) to ``out``."""
    check_command(split, top)
    run_dir = run_folder(run_dir)
    files = RunFiles(run_dir)
    summary = read_summary(files.summary) or {}
    saved = read_test_outputs(files.test_outputs)
    probs = saved["probs"].float().numpy() if saved and saved["labels"] is not None else None
    labels = saved["labels"].numpy() if probs is not None else None
    classes = summary.get("classes") or [str(i) for i in range(
        probs.shape[1] if probs is not None else 0)]
    li = find_label_issues(files, classes, probs, labels)
    _check_has(run_dir, li, split)
    with hold(run_dir):
        write_label_issues(files.label_issues, li.rows())
    rows = li.rows(split)
    _print_issues(li, rows[:top or 20], split)
    if out is not None:
        write_label_issues(Path(out), rows[:top] if top else rows)
        print(f"{len(rows[:top] if top else rows):,} rows -> {out}")
    return 0


def _check_has(run_dir: Path, li: LabelIssues, split: str | None) -> None:
    why = {"train": f"{run_dir}: no per-image training dynamics (data_dynamics.pt; "
                    "log.data_dynamics was off, or no epoch finished)",
           "test": f"{run_dir}: no stored test predictions (test_outputs.pt); run classlab "
                   f"diagnose {run_dir} first, or train to the end"}
    missing_splits = [s for s in SPLITS if (li.train if s == "train" else li.test) is None
                      and split in (None, s)]
    if split is not None and missing_splits:
        raise DiagnoseError(why[split])
    if len(missing_splits) == len(SPLITS):
        raise DiagnoseError(f"{why['train']}; and {why['test'].split(': ', 1)[1]}")
    for s in missing_splits:
        print(f"note: {why[s]}")


def _print_issues(li: LabelIssues, rows: list[dict], split: str | None) -> None:
    s = li.summary
    if s.get("train") and split in (None, "train"):
        t = s["train"]
        print(f"train: {t['flagged']:,} of {t['images']:,} images flagged over {t['epochs']} "
              f"epochs ({t['criterion']})")
        if li.noise:
            n = li.noise
            print(f"  against the injected noise ({n['injected']:,} labels changed): precision "
                  f"{pct(100 * n['precision']) if n['flagged'] else MISSING}, recall "
                  f"{pct(100 * n['recall'])}, AUROC {fixed(n['auroc'], 3)}")
    if s.get("test") and split in (None, "test"):
        t = s["test"]
        print(f"test: {t['flagged']:,} of {t['images']:,} images flagged ({t['criterion']})")
    if rows:
        print(text_table(["split", "index", "given", "suggested", "score"],
                         [[r["split"], r["index"], r["given_name"], r["suggested_name"],
                           fixed(r["score"], 3)] for r in rows]))
