"""A run's per-image test outputs, and paired tests between runs scored on the same images.

Two runs are compared image by image (McNemar's exact test, :mod:`classlab.stats`): only the
test images one gets right and the other wrong carry information about which is better.
Several seeds are paired seed by seed (seed k of one configuration with seed k of the other)
and pooled into one exact test (:func:`classlab.stats.mcnemar_pooled`).

What the test does and does not cover: McNemar's test accounts for the finite test set (a
different sample of images could reorder two close runs); it treats the seeds' discordant
images as independent, so it does not model seed-to-seed spread of training itself. That
spread is what the table's interval over seeds shows: read both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classlab import stats
from classlab.rundir import RunFiles
from classlab.rundir.checkpoint import read_test_outputs


class CompareError(ValueError):
    """Runs that cannot be compared (no stored test outputs, other test sets); one line."""


@dataclass
class RunOutputs:
    """The last epoch's test outputs of one run, on the CPU as numpy."""

    run_dir: Path
    labels: np.ndarray  # [N] int64 true class of each test image
    probs: np.ndarray  # [N,K] float32 softmax of the evaluated weights (with the run's TTA)

    @property
    def pred(self) -> np.ndarray:  # [N] predicted class
        return self.probs.argmax(1)

    @property
    def correct(self) -> np.ndarray:  # [N] bool
        return self.pred == self.labels

    @property
    def acc(self) -> float:  # percent
        return 100.0 * float(self.correct.mean())


def load_outputs(run_dir: Path) -> RunOutputs:
    """The run's stored test outputs (test_outputs.pt, written after the last epoch of a
    one-process run). CompareError naming the run and what is missing otherwise."""
    files = RunFiles(run_dir)
    state = read_test_outputs(files.test_outputs)
    if state is None:
        raise CompareError(f"{run_dir}: no test outputs ({files.test_outputs.name} is missing "
                           "or unreadable; the run is unfinished, ran under torchrun, or is "
                           "not a run folder); pass --evaluate to score it now")
    if state["labels"] is None:
        raise CompareError(f"{run_dir}: its {files.test_outputs.name} has no test labels "
                           "(written by an older classlab); pass --evaluate to score it now")
    return RunOutputs(Path(run_dir), state["labels"].numpy().astype(np.int64),
                      state["probs"].float().numpy())


def try_outputs(run_dir: Path) -> RunOutputs | None:
    """:func:`load_outputs`, or None when the run has none (the table leaves the cell blank)."""
    try:
        return load_outputs(run_dir)
    except CompareError:
        return None


def check_same_test_set(runs: list[RunOutputs]) -> None:
    """CompareError unless every run was scored on the same test images (same count and the
    same label of every image: a different dataset or split cannot be paired)."""
    first = runs[0]
    for r in runs[1:]:
        if len(r.labels) != len(first.labels) or r.probs.shape[1] != first.probs.shape[1]:
            raise CompareError(f"{r.run_dir}: scored on {len(r.labels)} test images of "
                               f"{r.probs.shape[1]} classes, {first.run_dir} on "
                               f"{len(first.labels)} of {first.probs.shape[1]}: different "
                               "test sets cannot be compared image by image")
        if not np.array_equal(r.labels, first.labels):
            raise CompareError(f"{r.run_dir}: its test labels differ from {first.run_dir}'s: "
                               "different test sets cannot be compared image by image")


@dataclass
class Paired:
    """A against B over one or more seed pairs: discordant counts, pooled exact p."""

    b: int  # images A got right and B wrong, summed over the pairs
    c: int  # images A got wrong and B right
    pairs: int  # seed pairs pooled
    p: float  # two-sided exact McNemar p-value (pooled)
    p_holm: float | None = None  # adjusted for the number of comparisons made with it


def paired_test(pairs: list[tuple[RunOutputs, RunOutputs]]) -> Paired:
    """McNemar's exact test of A vs B, each pair (A seed k, B seed k) one stratum."""
    counts = [stats.mcnemar_counts(a.correct, b.correct) for a, b in pairs]
    return Paired(sum(b for b, _ in counts), sum(c for _, c in counts), len(counts),
                  stats.mcnemar_pooled(counts))
