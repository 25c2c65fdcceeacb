"""Diagnose's "Is it the data?" step: label_issues.csv, diagnose/train_dynamics.csv, the
galleries of suspected label errors (train and test), the data map and a few images of each
of its regions; and the badge of the flagged images among the most confident mistakes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from classlab.diagnose.dataissues import REGIONS
from classlab.diagnose.datamap import plot_data_map
from classlab.diagnose.figures import plot_gallery_rows, plot_mistakes, to_hwc
from classlab.diagnose.labelissues import LabelIssues, find_label_issues, write_label_issues
from classlab.fmt import csv_number, fixed
from classlab.rundir import RunFiles
from classlab.rundir.layout import TRAIN_DYNAMICS_FIELDS
from classlab.rundir.metrics import write_csv

BADGE = "[label suspected]"
REGION_IMAGES = 6  # images shown per data map region
REGION_TITLES = {"easy": "easy to learn\n(most confident)",
                 "ambiguous": "ambiguous\n(most variable)",
                 "hard": "hard to learn\n(least confident)"}


def label_issues_of(s, files: RunFiles, probs: torch.Tensor, labels: torch.Tensor
                    ) -> LabelIssues:
    """The run's suspected label errors, the test set's from these test predictions."""
    return find_label_issues(files, list(s.splits.classes), probs.numpy(), labels.numpy())


def badge(titles: list[str], suspected: list[bool]) -> list[str]:
    """The titles, with :data:`BADGE` on those of suspected label errors."""
    return [f"{t} {BADGE}" if bad else t for t, bad in zip(titles, suspected, strict=True)]


def data_step(s, files: RunFiles, li: LabelIssues, shown: torch.Tensor,
              count: int) -> tuple[dict, dict[str, Path]]:
    """Write the step's files; returns (diagnose.json's ``data_issues``, files written)."""
    write_label_issues(files.label_issues, li.rows())
    written: dict[str, Path] = {"label_issues": files.label_issues}
    summary = dict(li.summary)
    suspected = li.suspected_test(shown.tolist())
    summary.update(shown=len(shown), shown_suspected=int(sum(suspected)),
                   shown_suspected_images=[int(i) for i, b in zip(shown.tolist(), suspected,
                                                                  strict=True) if b])
    t = li.train
    if t is not None and len(t.index) == len(s.data["train"][0]):
        _train_files(s, files, li, count)
        written.update(train_dynamics_csv=files.train_dynamics_csv,
                       label_issues_train=files.label_issues_train, data_map=files.data_map,
                       data_map_examples=files.data_map_examples)
    elif t is not None:
        summary["note"] = ("data_dynamics.pt does not match this training set: no training "
                           "images shown")
    if li.test is not None:
        d = li.test
        rows = d["flagged"][:count]
        titles = [_title(li, int(d["given"][k]), int(d["suggested"][k]),
                         fixed(d["margin"][k], 2)) for k in range(len(rows))]
        plot_mistakes(to_hwc(s.data["test"][0][torch.as_tensor(rows).to(s.device)]), titles,
                      files.label_issues_test, title="Suspected label errors in the test set: "
                      "given → suggested (p(suggested) − p(given))",
                      empty="no suspected label error in the test set")
        written["label_issues_test"] = files.label_issues_test
    return summary, written


def _title(li: LabelIssues, given: int, suggested: int, score: str) -> str:
    return f"{li.name(given)} → {li.name(suggested)} ({score})"


def _train_files(s, files: RunFiles, li: LabelIssues, count: int) -> None:
    t = li.train
    x = s.data["train"][0]
    flagged = t.flagged
    is_flagged = np.zeros(len(t.index), dtype=bool)
    is_flagged[flagged] = True
    write_csv(files.train_dynamics_csv, TRAIN_DYNAMICS_FIELDS, [
        [int(t.index[r]), int(t.labels[r]), csv_number(t.aum[r]), csv_number(t.confidence[r]),
         csv_number(t.variability[r]), csv_number(t.correctness[r]), int(t.forgetting[r]),
         t.region[r], int(is_flagged[r])] for r in range(len(t.index))])
    rows = flagged[:count]
    plot_mistakes(to_hwc(x[torch.as_tensor(rows, dtype=torch.long).to(x.device)]),
                  [_title(li, int(t.labels[r]), int(t.suggested[r]),
                          f"AUM {fixed(t.aum[r], 2)}") for r in rows], files.label_issues_train,
                  title="Suspected label errors in the training set: given → suggested (area "
                  "under the margin)", empty="no suspected label error in the training set")
    plot_data_map(t.confidence, t.variability, t.correctness, t.region, files.data_map,
                  t.epochs)
    examples = []
    for name in REGIONS:
        members = np.flatnonzero(t.region == name)
        key = {"easy": -t.confidence, "ambiguous": -t.variability,
               "hard": t.confidence}[name][members]
        rows = members[np.lexsort((members, key))][:REGION_IMAGES]
        examples.append((to_hwc(x[torch.as_tensor(rows, dtype=torch.long).to(x.device)]),
                         [f"{li.name(int(t.labels[r]))} ({fixed(t.confidence[r], 2)}"
                          f"±{fixed(t.variability[r], 2)})" for r in rows]))
    plot_gallery_rows(examples, [REGION_TITLES[n] for n in REGIONS], files.data_map_examples,
                      title="Data map regions: given label (confidence ± variability)")
