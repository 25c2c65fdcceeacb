"""The ``tune:`` section of a grid file: a search space over config keys and one budget that
every point of the grid gets, by construction.

    tune:
      space:                            # full config key -> one distribution
        optim.lr: {log_uniform: [1e-4, 1e-1]}
        optim.weight_decay: {uniform: [0, 1e-3]}
        train.batch_size: {int: [64, 256]}
        model.norm: {choice: [bn, gn]}
      trials: 12                        # trials per point (the budget), ≥ 1
      trial: {train.epochs: 3, data.subset: 5000}   # what a trial trains: the same for all
      metric: val_acc                   # or val_loss: never a test metric
      pruner: asha                      # asha (successive halving) | median | none
      sampler: tpe                      # tpe | random | qmc
      seed: 0                           # the sampler's seed (the same for every point)
      baseline: true                    # trial 0 = the point's own values of the tuned keys
      untuned: seed_grid                # optional: the same grid run without tune:, a grid
                                        # folder next to this one (or an absolute path)

Nothing here needs Optuna: the file is checked (one-line ConfigError) before anything is
written; :mod:`classlab.grid.tune` builds the study.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classlab import config
from classlab.config import ConfigError, show

TUNE_KEYS = ("space", "trials", "trial", "metric", "pruner", "sampler", "seed", "baseline",
             "untuned")
KINDS = ("log_uniform", "uniform", "int", "choice")
METRICS = ("val_acc", "val_loss")
PRUNERS = ("asha", "median", "none")
SAMPLERS = ("tpe", "random", "qmc")
EDGE = 0.1  # a best value within this fraction of the range's ends (log scale: log_uniform)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class Param:
    """One tuned key and its distribution."""

    key: str
    kind: str  # one of KINDS
    low: float | int | None = None
    high: float | int | None = None
    choices: list | None = None

    def values_to_check(self) -> list:
        """Values that every valid point of the distribution lies between (or among)."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and value != int(value):
            return False
        return self.low <= value <= self.high

    def edge(self, value: Any) -> str | None:
        """"low" / "high" when ``value`` lies in the outer :data:`EDGE` of the range (in log
        space for log_uniform): the range may be too narrow on that side. None for choices."""
        if self.kind == "choice" or not isinstance(value, (int, float)):
            return None
        lo, hi, v = float(self.low), float(self.high), float(value)
        if self.kind == "log_uniform":
            lo, hi, v = math.log(lo), math.log(hi), math.log(v)
        width = hi - lo
        if self.kind == "int":
            width = max(width, 1.0)
            return "low" if v <= lo else "high" if v >= hi else None
        if v <= lo + EDGE * width:
            return "low"
        return "high" if v >= hi - EDGE * width else None

    def definition(self) -> dict:
        return {self.kind: self.choices if self.kind == "choice" else [self.low, self.high]}


@dataclass
class TuneSpec:
    space: dict[str, Param]
    trials: int
    trial: dict[str, Any] = field(default_factory=dict)
    metric: str = "val_acc"
    pruner: str = "asha"
    sampler: str = "tpe"
    seed: int = 0
    baseline: bool = True
    untuned: str | None = None

    @property
    def direction(self) -> str:
        return "maximize" if self.metric == "val_acc" else "minimize"

    def definition(self) -> dict:
        """What grid.yaml records (a rerun with another budget is another grid)."""
        return {"space": {k: p.definition() for k, p in self.space.items()},
                "trials": self.trials, "trial": self.trial, "metric": self.metric,
                "pruner": self.pruner, "sampler": self.sampler, "seed": self.seed,
                "baseline": self.baseline, "untuned": self.untuned}

    def untuned_dir(self, grid_dir: Path) -> Path | None:
        """The untuned grid folder: ``untuned`` next to ``grid_dir`` (or absolute)."""
        if not self.untuned:
            return None
        p = Path(self.untuned)
        return p if p.is_absolute() else Path(grid_dir).parent / p


# --------------------------------------------------------------------------- parsing


def _number(key: str, v: Any) -> float | int:
    if isinstance(v, str) and _NUMBER.match(v.strip()):  # YAML 1.1 reads 1e-4 as a string
        v = float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"tune.space {key}: expected numbers in the range, got {show(v)}")
    return v


def parse_param(key: Any, spec: Any) -> Param:
    """One entry of ``tune.space``: ``{log_uniform|uniform|int: [low, high]}`` or
    ``{choice: [a, b, ...]}``."""
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"tune.space {show(key)}: expected a full key such as optim.lr")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"tune.space {key}: expected one of {{log_uniform: [low, high]}}, "
                          "{uniform: [low, high]}, {int: [low, high]}, {choice: [a, b, ...]}; "
                          f"got {show(spec)}")
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(values, list) or len(values) < 2:
            raise ConfigError(f"tune.space {key}: choice: expected a list of at least two "
                              f"values, got {show(values)}")
        if any(v is not None and not isinstance(v, (bool, int, float, str)) for v in values):
            raise ConfigError(f"tune.space {key}: choice: expected numbers, strings or "
                              f"true/false, got {show(values)}")
        if any(v in values[:i] for i, v in enumerate(values)):
            raise ConfigError(f"tune.space {key}: choice: {show(values)} lists a value twice")
        return Param(key, kind, choices=list(values))
    if not isinstance(values, list) or len(values) != 2:
        raise ConfigError(f"tune.space {key}: {kind}: expected [low, high], got {show(values)}")
    low, high = (_number(key, v) for v in values)
    if kind == "int" and not all(float(v).is_integer() for v in (low, high)):
        raise ConfigError(f"tune.space {key}: int: expected whole numbers, got {show(values)}")
    if not low < high:
        raise ConfigError(f"tune.space {key}: {kind}: the range [{low}, {high}] is empty; "
                          "low must be < high")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"tune.space {key}: log_uniform: low {low} must be > 0")
    if kind == "int":
        low, high = int(low), int(high)
    return Param(key, kind, low, high)


def _whole(key: str, v: Any, least: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise ConfigError(f"tune.{key}: expected a whole number ≥ {least}, got {show(v)}")
    return v


def _choice(key: str, v: Any, allowed: tuple[str, ...]) -> str:
    if v not in allowed:
        raise ConfigError(f"tune.{key}: unknown value {show(v)}; allowed: {', '.join(allowed)}")
    return v


def _clashes(key: str, other: str) -> bool:
    return key == other or key.startswith(other + ".") or other.startswith(key + ".")


def parse_tune(raw: Any, path: Path, base: dict, overrides: list[str],
               axes: dict[str, list]) -> TuneSpec:
    """The grid file's ``tune:`` mapping, checked against the grid: a tuned key is no axis
    and no command-line override, every key and range end is a valid config value, the
    budget is at least one trial, and a trial has a validation metric after every epoch."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: tune: expected a mapping with space:, trials:, ...; got "
                          f"{show(raw)}")
    unknown = [k for k in raw if k not in TUNE_KEYS]
    if unknown:
        raise ConfigError(f"tune.{unknown[0]}: unknown key; allowed: {', '.join(TUNE_KEYS)}")
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError("tune.space: expected a mapping of full keys to distributions, e.g. "
                          "optim.lr: {log_uniform: [1e-4, 1e-1]}")
    if "trials" not in raw:
        raise ConfigError("tune.trials: missing; give the trials each point gets, e.g. 12")
    spec = TuneSpec(space={k: parse_param(k, v) for k, v in space.items()},
                    trials=_whole("trials", raw["trials"], 1),
                    trial=_trial_overrides(raw.get("trial")),
                    metric=_choice("metric", raw.get("metric", "val_acc"), METRICS),
                    pruner=_choice("pruner", raw.get("pruner", "asha"), PRUNERS),
                    sampler=_choice("sampler", raw.get("sampler", "tpe"), SAMPLERS),
                    seed=_whole("seed", raw.get("seed", 0), 0),
                    baseline=_flag("baseline", raw.get("baseline", True)),
                    untuned=_untuned(raw.get("untuned")))
    _check_against_grid(spec, axes, overrides)
    _check_values(spec, base, overrides)
    return spec


def _flag(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"tune.{key}: expected true or false, got {show(v)}")
    return v


def _untuned(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(f"tune.untuned: expected the name of a grid folder, got {show(v)}")
    return v


def _trial_overrides(v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"tune.trial: expected a mapping of full keys to values, e.g. "
                          f"{{train.epochs: 3, data.subset: 5000}}; got {show(v)}")
    for k in v:
        if not isinstance(k, str) or not k or any(not p for p in k.split(".")):
            raise ConfigError(f"tune.trial {show(k)}: expected a full key such as train.epochs")
    return dict(v)


def _check_against_grid(spec: TuneSpec, axes: dict[str, list], overrides: list[str]) -> None:
    """A tuned key is neither an axis nor overridden (the grid would silently hold one of
    them fixed), and a trial's budget does not touch an axis or a tuned key."""
    for key in spec.space:
        for axis in axes:
            if _clashes(key, axis):
                raise ConfigError(f"tune.space {key}: {axis} is also an axis of this grid; "
                                  "tune a key or list it under axes:, not both")
        for item in overrides:
            if _clashes(key, item.partition("=")[0].strip()):
                raise ConfigError(f"override {item!r}: {key} is tuned by this grid; change its "
                                  "range under tune.space: instead")
    for key in spec.trial:
        for other in [*axes, *spec.space]:
            if _clashes(key, other):
                raise ConfigError(f"tune.trial {key}: {other} is an axis or a tuned key of "
                                  "this grid; a trial's budget may not change it")


def _check_values(spec: TuneSpec, base: dict, overrides: list[str]) -> None:
    """Every tuned key is a config key, and both ends of its range (every choice) are valid
    values of it; the trials' config scores ``metric`` after every epoch."""
    raw = config.apply_overrides(copy.deepcopy(base), overrides)
    for key, p in spec.space.items():
        for value in p.values_to_check():
            trial = copy.deepcopy(raw)
            try:
                config.set_key(trial, key, value)
                config.from_dict(trial)
            except ConfigError as e:
                raise ConfigError(f"tune.space {e}") from None
    trial = copy.deepcopy(raw)
    try:
        for key, value in spec.trial.items():
            config.set_key(trial, key, value)
        cfg = config.from_dict(trial)
    except ConfigError as e:
        raise ConfigError(f"tune.trial {e}") from None
    if cfg.data.val_split == 0 or cfg.train.eval_every != 1:
        raise ConfigError(f"tune.metric: {spec.metric} after every epoch of a trial needs "
                          "data.val_split > 0 and train.eval_every=1 (in base: or tune.trial:)")
