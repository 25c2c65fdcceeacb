"""From YAML text, mappings and ``key.sub=value`` overrides to a validated :class:`Config`.

Every key is set through :func:`set_key` (the command line's overrides, the notebook API's
keywords and a grid's axis values alike); every problem is one :class:`ConfigError` line.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from classlab.config.errors import ConfigError, show, show_key
from classlab.config.recipes import locate
from classlab.config.schema import Config
from classlab.config.validate import validate

_MAPPINGS = list[dict[str, Any]]  # the type of aug.albumentations
_AUTO_BOOL = bool | str  # true, false or "auto" (train.channels_last, train.compile)
_MATRIX = list[list[float]]  # data.label_noise_matrix
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            _MAPPINGS: "a list of mappings", _AUTO_BOOL: "true, false or auto",
            _MATRIX: "a list of rows of numbers"}.get(tp, "a list of strings")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp``; ints are accepted for floats."""
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp == _AUTO_BOOL:
        ok = isinstance(value, bool) or value == "auto"
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        # PyYAML (YAML 1.1) reads "1e-3" as a string; users write it that way all the time.
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp == _MATRIX:
        ok = isinstance(value, list) and all(
            isinstance(r, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                        for v in r) for r in value)
        if ok:
            value = [[float(v) for v in r] for r in value]
    elif tp == _MAPPINGS:
        # The entries' own checks (names, arguments) are aug.albumentations' (see validate).
        ok = isinstance(value, list) and all(isinstance(v, dict) for v in value)
    else:  # list[str]
        if isinstance(value, str):  # "a,b,c" from the command line
            value = [v for v in value.split(",") if v]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {show(value)}")
    return value


def _section_from_dict(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{where}: expected a mapping of keys, got {show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}{show_key(k)}"
        if not isinstance(k, str) or k not in fields:
            raise ConfigError(f"{key}: unknown key; allowed: {', '.join(fields)}")
        tp = hints[k]
        kwargs[k] = _section_from_dict(tp, v, key + ".") if _is_section(tp) else _coerce(
            key, v, tp
        )
    return cls(**kwargs)


def from_dict(raw: Any) -> Config:
    """Build and validate a :class:`Config` from a plain (YAML-loaded) mapping."""
    cfg = _section_from_dict(Config, raw, "")
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------- setting keys


def plain(value: Any) -> Any:
    """Python values as a YAML file would give them (paths -> str, tuples -> lists)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def set_key(raw: dict, key: str, value: Any, *, merge: bool = False) -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``, creating sections on the way.

    ``merge``: a mapping given for a key that holds a section is merged into it key by key
    (the notebook API's ``overrides={"train": {"epochs": 2}}``) instead of replacing it.
    The value is copied, so later changes to either side do not leak into the other.
    """
    parts = key.split(".") if isinstance(key, str) else []
    if not parts or any(not p for p in parts):
        raise ConfigError(f"override {key!r}: expected a key like train.epochs")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{show_key('.'.join(parts[: depth + 1]))}: is not a section")
        node = child
    leaf, value = parts[-1], plain(value)
    if merge and isinstance(value, dict) and isinstance(node.get(leaf), dict):
        for k, v in value.items():
            set_key(node[leaf], str(k), v, merge=True)
    else:
        node[leaf] = copy.deepcopy(value)


def parse_override(item: str) -> tuple[str, Any]:
    """``"key.sub=value"`` -> (key, value read as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.sub=value")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except Exception:  # noqa: BLE001 - YAMLError, or what PyYAML's constructors raise for
        # '2001-13-45', '!!int', '!!bool x', '!!timestamp x' and deep nesting (ValueError,
        # IndexError, KeyError, AttributeError, RecursionError): all mean "not a YAML scalar"
        value = text  # e.g. an unbalanced bracket: let the type check report it as a string
    return key, value


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Set ``key.sub=value`` items (values parsed as YAML scalars) into a raw mapping."""
    for item in overrides:
        set_key(raw, *parse_override(item))
    return raw


# --------------------------------------------------------------------------- files


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (SafeLoader keeps
    the last one silently, so a typo'd second ``lr:`` would win unseen)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # <<: *base, overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader itself reports it
                continue
            if first is not None:
                where = f"lines {first} and {line}" if first != line else f"line {line}"
                raise ConfigError(f"{show_key(key)}: given twice ({where}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _text(path: Path) -> str:
    """The file as UTF-8 text; a binary or otherwise encoded file is one ConfigError line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    if b"\0" in data:
        raise ConfigError(f"{path}: a binary file, not YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                          f"{e.start}); save it as UTF-8") from None


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with a ``yaml.SafeLoader`` that refuses duplicate keys
    (:class:`UniqueKeyLoader`); errors become one-line ConfigErrors."""
    path = Path(path)
    text = _text(path)
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:  # a key given twice
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    except Exception as e:  # noqa: BLE001 - PyYAML constructors: '2001-13-45', '!!int', ...
        raise ConfigError(f"{path}: not valid YAML (a value YAML cannot construct: "
                          f"{type(e).__name__})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return raw


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML file (or the defaults when ``path`` is None) and apply overrides. A bare
    name that is no file is a shipped recipe (``load("fast")``; :func:`recipes.locate`)."""
    raw = read_yaml(locate(path)) if path is not None else {}
    return from_dict(apply_overrides(raw, list(overrides)))


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    """The resolved config as YAML; ``load`` of it gives back an equal Config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
