"""A grid file and its points: the Cartesian product of config axes, one deterministic run
folder name per point.

A grid file holds ``base:`` (a config mapping, or the path of a config file relative to the
grid file), ``axes:`` (full key -> list of values, first axis slowest) and an optional
``name:``. Every point is named from its axis values, so a rerun of the same command finds
its folders again.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classlab import config
from classlab.config import Config, ConfigError
from classlab.run.checks import check_environment

GRID_KEYS = ("name", "base", "axes")
COMPARED_KEYS = ("name", "base", "axes", "overrides")  # what makes two grids "the same"


@dataclass
class Point:
    name: str  # folder name inside the grid folder
    values: dict[str, Any]  # axis key -> this point's value
    cfg: Config


@dataclass
class Grid:
    name: str
    source: Path
    base: dict
    axes: dict[str, list]
    overrides: list[str]
    points: list[Point]

    def definition(self) -> dict:
        """What ``<grid_dir>/grid.yaml`` holds: the compared keys plus the point list."""
        return {"name": self.name, "source": str(self.source.resolve()), "base": self.base,
                "axes": self.axes, "overrides": self.overrides,
                "points": [{"name": p.name, "values": p.values} for p in self.points]}


# --------------------------------------------------------------------------- expansion


def load_grid(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """Read a grid file and expand it; every point is validated (one-line ConfigError)."""
    path = Path(path)
    raw = config.read_yaml(path)
    unknown = [k for k in raw if k not in GRID_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown grid key {unknown[0]!r}; allowed: "
                          f"{', '.join(GRID_KEYS)}")
    name = _grid_name(raw.get("name", path.stem), path)
    base = _read_base(raw.get("base"), path)
    axes = _read_axes(raw.get("axes"), path)
    overrides = list(overrides)
    _check_overrides(overrides, axes)
    points = [_make_point(base, overrides, dict(zip(axes, combo)), path)
              for combo in itertools.product(*axes.values())]
    _check_unique(points, path)
    return Grid(name, path, base, axes, overrides, points)


def _grid_name(name: Any, path: Path) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") \
            or name in (".", ".."):
        raise ConfigError(f"{path}: name: {name!r} cannot be a folder name; allowed: a "
                          "non-empty name without / or \\")
    return name


def _read_base(base: Any, path: Path) -> dict:
    if base is None:
        return {}
    if isinstance(base, str):  # a config file, relative to the grid file
        return config.read_yaml(path.parent / base)
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base: expected a config mapping or a file name, got "
                          f"{base!r}")
    return base


def _read_axes(axes: Any, path: Path) -> dict[str, list]:
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{path}: axes: expected a mapping of full keys to lists of values, "
                          "e.g. model.norm: [bn, ln]")
    for key, values in axes.items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"axes {key!r}: expected a full key such as model.norm")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"axes {key}: expected a non-empty list of values, got {values!r}")
        dupes = [v for i, v in enumerate(values) if v in values[:i]]
        if dupes:
            raise ConfigError(f"axes {key}: value {dupes[0]!r} is listed twice")
    return axes


def _override_key(item: str) -> str:
    return item.partition("=")[0].strip()


def _check_overrides(overrides: list[str], axes: dict[str, list]) -> None:
    """An override may not touch an axis key (nor a section above it, nor a key below it):
    the grid would then silently collapse to fewer distinct runs."""
    for item in overrides:
        key = _override_key(item)
        for axis in axes:
            if key == axis or axis.startswith(key + ".") or key.startswith(axis + "."):
                raise ConfigError(f"override {item!r}: {axis} is an axis of this grid; change "
                                  "its values under axes: instead")


def _make_point(base: dict, overrides: list[str], values: dict[str, Any], path: Path) -> Point:
    name = "-".join(_slug(k, v) for k, v in values.items())
    raw = copy.deepcopy(base)
    raw["name"] = name
    # Command-line overrides beat the base; axis values come last (overrides of axis keys
    # were rejected above, so nothing can beat them).
    config.apply_overrides(raw, overrides)
    try:
        for key, value in values.items():
            config.set_key(raw, key, value)
        cfg = config.from_dict(raw)
        check_environment(cfg)
    except ConfigError as e:
        raise ConfigError(_point_error(str(e), values, name, path)) from None
    return Point(name, values, cfg)


def _point_error(msg: str, values: dict[str, Any], name: str, path: Path) -> str:
    if any(msg.startswith(f"{key}:") or key.startswith(msg.split(":")[0] + ".")
           for key in values):
        return f"axes {msg}"
    return f"{path}: point {name}: {msg}"


def _slug(key: str, value: Any) -> str:
    """A folder-name part for one axis value: strings as they are, numbers and booleans with
    the key's last part (``lr0.001``, ``no_channels_last``) so they stay readable."""
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(value, bool):
        text = leaf if value else f"no_{leaf}"
    elif isinstance(value, (int, float)):
        text = f"{leaf}{value:g}" if isinstance(value, float) else f"{leaf}{value}"
    elif isinstance(value, list):
        text = "+".join(str(v) for v in value) or "none"
    else:
        text = str(value)
    text = re.sub(r"[^A-Za-z0-9._+]+", "_", text)
    return text.lstrip(".") or "_"


def _check_unique(points: list[Point], path: Path) -> None:
    seen: dict[str, Point] = {}
    for p in points:
        if p.name in seen:
            raise ConfigError(f"{path}: axes: points {seen[p.name].values} and {p.values} both "
                              f"map to the folder name {p.name!r}")
        seen[p.name] = p
