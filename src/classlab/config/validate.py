"""Checks of a built :class:`Config`: bounds, allowed values, and combinations that cannot
work. Everything here is plain values; checks that need an optional package (building the
albumentations transforms, TensorBoard) run where the run is built
(:mod:`classlab.run.checks`), still before anything is written."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from typing import Any

from classlab.config.errors import ConfigError, show
from classlab.config.schema import Config

ALBUMENTATIONS_KEY = "aug.albumentations"
MAX_NAME = 100  # characters of ``name``


def walk(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Yield (full key, value, field metadata) for every leaf field."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, f.metadata


_BOUNDS = (("ge", "≥", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b),
           ("le", "≤", lambda a, b: a <= b), ("lt", "<", lambda a, b: a < b))


def _check_field(key: str, value: Any, meta: Any) -> None:
    choices = meta.get("choices")
    if choices is not None:
        for v in value if isinstance(value, list) else [value]:
            if v not in choices:
                raise ConfigError(f"{key}: unknown value {show(v)}; allowed: {', '.join(choices)}")
    for name, sym, ok in _BOUNDS:
        if name in meta and not ok(value, meta[name]):
            raise ConfigError(f"{key}: {show(value)} is out of range; must be {sym} {meta[name]}")


def _check_plateau_monitor(cfg: Config) -> None:
    """ReduceLROnPlateau on a validation metric needs that metric after every epoch."""
    if cfg.sched.name != "plateau" or not cfg.sched.monitor.startswith("val_"):
        return
    if cfg.data.val_split == 0:
        raise ConfigError(
            f"sched.monitor: {cfg.sched.monitor!r} needs a validation split but data.val_split "
            "is 0; allowed: set data.val_split > 0 or sched.monitor=train_loss"
        )
    if cfg.train.eval_every != 1:
        raise ConfigError(
            f"train.eval_every: {cfg.train.eval_every} leaves epochs without the validation "
            f"metric that sched.monitor={cfg.sched.monitor!r} needs; allowed: 1, or "
            "sched.monitor=train_loss"
        )


def _check_early_stop(cfg: Config) -> None:
    """Early stopping watches a validation metric after every epoch."""
    t = cfg.train
    if t.early_stop_patience == 0:
        return
    if cfg.data.val_split == 0:
        raise ConfigError(f"train.early_stop_patience: {t.early_stop_patience} watches "
                          f"{t.early_stop_metric}, but data.val_split is 0; allowed: set "
                          "data.val_split > 0, or train.early_stop_patience=0")
    if t.eval_every != 1:
        raise ConfigError(f"train.eval_every: {t.eval_every} leaves epochs without the "
                          f"{t.early_stop_metric} that train.early_stop_patience watches; "
                          "allowed: 1, or train.early_stop_patience=0")


def _check_device(cfg: Config) -> None:
    device = cfg.train.device
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]+", device)):
        raise ConfigError(f"train.device: unknown value {show(device)}; allowed: auto, cpu, "
                          "cuda, cuda:N")


def _check_name(cfg: Config) -> None:
    if not cfg.name or any(c in cfg.name for c in "/\\\0") or cfg.name in (".", ".."):
        raise ConfigError(f"name: {cfg.name!r} cannot be a folder name; allowed: a non-empty "
                          "name without / or \\")
    if len(cfg.name) > MAX_NAME:  # the folder adds "-YYYYmmdd-HHMMSS-N"; file names stop at 255
        raise ConfigError(f"name: {len(cfg.name)} characters ({show(cfg.name)}) is too long "
                          f"for a folder name; must be ≤ {MAX_NAME}")


def _check_plain_value(key: str, value: Any) -> None:
    """YAML scalars or flat lists of them only: what a constructor argument can sensibly be,
    and what round-trips through config.yaml to an equal config (NaN is never equal)."""
    items = value if isinstance(value, list) else [value]
    for v in items:
        if v is not None and not isinstance(v, (bool, int, float, str)):
            raise ConfigError(f"{key}: expected a number, string, true/false or a list of "
                              f"them, got {show(value)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key}: {show(value)} is not a finite number")


def check_albumentations_shape(specs: Any) -> list[dict]:
    """The structure of ``aug.albumentations`` that every backend accepts (no albumentations
    needed): a list of mappings, each with a string ``name`` and identifier argument names
    holding plain values."""
    if not isinstance(specs, list):
        raise ConfigError(f"{ALBUMENTATIONS_KEY}: expected a list of mappings {{name: "
                          f"<transform>, <argument>: <value>, ...}}, got {show(specs)}")
    for i, spec in enumerate(specs):
        key = f"{ALBUMENTATIONS_KEY}[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{key}: expected a mapping {{name: <transform>, <argument>: "
                              f"<value>, ...}}, got {show(spec)}")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key}.name: expected the name of an albumentations transform, "
                              f"got {show(name)}")
        for arg, value in spec.items():
            if not isinstance(arg, str) or not arg.isidentifier():
                raise ConfigError(f"{key}: argument names are identifiers, got {show(arg)}")
            if arg != "name":
                _check_plain_value(f"{key}.{arg}", value)
    return specs


def _check_label_noise(cfg: Config) -> None:
    """data.label_noise_matrix: square, entries in [0, 1], rows summing to 1, and given
    exactly when data.label_noise_kind is matrix (which then sets the rates alone). Its size
    against the dataset's classes is checked where the data is loaded."""
    d, key = cfg.data, "data.label_noise_matrix"
    if d.label_noise_kind != "matrix":
        if d.label_noise_matrix:
            raise ConfigError(f"{key}: given, but data.label_noise_kind is "
                              f"{d.label_noise_kind!r}; allowed: set data.label_noise_kind="
                              "matrix, or leave the matrix empty")
        return
    m = d.label_noise_matrix
    if not m:
        raise ConfigError(f"{key}: empty, but data.label_noise_kind is 'matrix'; allowed: one "
                          "row per class, row i = the fractions of class i given label j")
    if d.label_noise > 0:
        raise ConfigError(f"data.label_noise: {d.label_noise} with data.label_noise_kind="
                          "matrix; the matrix sets the rates: leave data.label_noise at 0")
    for i, row in enumerate(m):
        if len(row) != len(m):
            raise ConfigError(f"{key}: row {i} has {len(row)} entries, but the matrix has "
                              f"{len(m)} rows; must be square (one row and column per class)")
        if any(not math.isfinite(v) or v < 0 or v > 1 for v in row):
            raise ConfigError(f"{key}: row {i} {show(row)} has an entry outside [0, 1]")
        if abs(math.fsum(row) - 1.0) > 1e-6:
            raise ConfigError(f"{key}: row {i} sums to {math.fsum(row):g}; each row must sum "
                              "to 1")


def _check_whiten_bias(cfg: Config) -> None:
    """Only fastnet has a whitening layer whose bias optim.whiten_bias_epochs could train."""
    if cfg.optim.whiten_bias_epochs > 0 and cfg.model.name != "fastnet":
        raise ConfigError(f"optim.whiten_bias_epochs: {cfg.optim.whiten_bias_epochs:g} needs a "
                          f"whitening layer, which model.name={cfg.model.name!r} lacks; "
                          "allowed: 0, or model.name=fastnet")


def validate(cfg: Config) -> None:
    """Raise ConfigError for the first invalid field or inconsistent combination."""
    for key, value, meta in walk(cfg):
        _check_field(key, value, meta)
    _check_plateau_monitor(cfg)
    _check_early_stop(cfg)
    check_albumentations_shape(cfg.aug.albumentations)
    _check_device(cfg)
    _check_name(cfg)
    _check_label_noise(cfg)
    _check_whiten_bias(cfg)
