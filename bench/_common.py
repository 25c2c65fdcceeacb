"""Shared bits of the benchmarks: machine description and timing helpers (not a test)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

from classlab.engine.precision import cpu_model  # the one description of the CPU


def machine_line() -> str:
    """One line: CPU model, logical CPUs, torch threads, 1/5/15-minute load averages."""
    load = "/".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads, load average {load}")


# CIFAR-10's training images left for training by data.val_split (the exact counts of the
# splits the recipes use; others approximately)
_TRAIN_IMAGES = {0.0: 50_000, 0.1: 45_000}


def cifar10_train_images(val_split: float) -> int:
    return _TRAIN_IMAGES.get(val_split, round(50_000 * (1 - val_split)))


def load1() -> float:
    return os.getloadavg()[0]


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call of ``fn``. With one torch
    thread the CPU seconds are the work done, whatever else the machine is running; the
    wall seconds also count the time other processes held the cores."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def interleaved(fns: dict[str, Callable[[], object]], repeats: int
                ) -> dict[str, list[tuple[float, float]]]:
    """Call every ``fn`` once per round, ``repeats`` rounds, alternating the order, so that a
    change of machine load hits all of them alike; returns name -> [(wall s, CPU s)]."""
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names if r % 2 == 0 else names[::-1]:
            times[k].append(timed(fns[k]))
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def wall(ts: list[tuple[float, float]]) -> float:
    """Median wall seconds of ``interleaved`` results."""
    return statistics.median(t[0] for t in ts)


def cpu(ts: list[tuple[float, float]]) -> float:
    """Median CPU seconds of ``interleaved`` results."""
    return statistics.median(t[1] for t in ts)
