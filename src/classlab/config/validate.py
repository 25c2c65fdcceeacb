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


def _check_device(cfg: Config) -> None:
    device = cfg.train.device
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]+", device)):
        raise ConfigError(f"train.device: unknown value {show(device)}; allowed: auto, cpu, "
                          "cuda, cuda:N")


def _check_name(cfg: Config) -> None:
    if not cfg.name or any(c in cfg.name for c in "/\\\0") or cfg.name in (".", ".."):
        raise ConfigError(f"name: {cfg.name!r} cannot be a folder name; allowed: a non-empty "
                          "name without / or \\")


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


def validate(cfg: Config) -> None:
    """Raise ConfigError for the first invalid field or inconsistent combination."""
    for key, value, meta in walk(cfg):
        _check_field(key, value, meta)
    _check_plateau_monitor(cfg)
    check_albumentations_shape(cfg.aug.albumentations)
    _check_device(cfg)
    _check_name(cfg)
