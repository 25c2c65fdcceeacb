"""A grid file and its points: the Cartesian product of config axes, one deterministic run
folder name per point.

A grid file holds ``base:`` (a config mapping, or the path of a config file relative to the
grid file), ``axes:`` (full key -> list of values, first axis slowest), an optional
``name:``, and optionally ``seeds: [0, 1, 2]`` (or ``repeats: 3``, the seeds ``train.seed``,
``train.seed + 1``, ...): each point then runs once per seed, each (point, seed) in a run
folder of its own. Every folder is named from its axis values (and seed), so a rerun of the
same command finds its folders again. A ``tune:`` section (:mod:`classlab.grid.tunespec`)
makes it a tuned grid: each point is tuned on the same budget, then its final runs use the
best values found.
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
from classlab.config.recipes import locate
from classlab.grid.tunespec import TuneSpec, parse_tune
from classlab.run.checks import check_environment

GRID_KEYS = ("name", "base", "axes", "seeds", "repeats", "tune")
COMPARED_KEYS = ("name", "base", "axes", "overrides", "seeds", "tune")  # "the same" grid
SEED_KEY = "train.seed"


@dataclass
class Point:
    name: str  # folder name inside the grid folder
    values: dict[str, Any]  # axis key -> this point's value
    cfg: Config
    group: str = ""  # the point without its seed: the table's row (= name without seeds)
    seed: int | None = None  # train.seed of this run when the grid has seeds

    def __post_init__(self) -> None:
        self.group = self.group or self.name


@dataclass
class Grid:
    name: str
    source: Path
    base: dict
    axes: dict[str, list]
    overrides: list[str]
    points: list[Point]
    seeds: list[int] | None = None
    tune: TuneSpec | None = None  # a tuned grid (grid/tunespec.py): tune, then the final runs

    def definition(self) -> dict:
        """What ``<grid_dir>/grid.yaml`` holds: the compared keys plus the point list."""
        return {"name": self.name, "source": str(self.source.resolve()), "base": self.base,
                "axes": self.axes, "overrides": self.overrides, "seeds": self.seeds,
                "tune": self.tune.definition() if self.tune is not None else None,
                "points": [{"name": p.name, "values": p.values, "group": p.group,
                            "seed": p.seed} for p in self.points]}


# --------------------------------------------------------------------------- expansion


def load_grid(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """Read a grid file and expand it; every point is validated (one-line ConfigError)."""
    path = locate(path, "grid")  # a bare name that is no file: the shipped grid recipe
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
    seeds = _read_seeds(raw, path, base, overrides, axes)
    tune = parse_tune(raw["tune"], path, base, overrides, axes) if "tune" in raw else None
    points = [p for combo in itertools.product(*axes.values())
              for p in _make_points(base, overrides, dict(zip(axes, combo)), seeds, path)]
    _check_unique(points, path)
    return Grid(name, path, base, axes, overrides, points, seeds, tune)


def _is_whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32


def _read_seeds(raw: dict, path: Path, base: dict, overrides: list[str],
                axes: dict[str, list]) -> list[int] | None:
    """``seeds: [..]`` or ``repeats: N`` (seeds train.seed .. train.seed + N - 1); None when
    the grid has neither (one run per point, with its config's own seed)."""
    if "seeds" in raw and "repeats" in raw:
        raise ConfigError(f"{path}: seeds and repeats: give one of them, not both")
    if "repeats" in raw:
        n = raw["repeats"]
        if not _is_whole(n) or n < 1:
            raise ConfigError(f"{path}: repeats: expected a whole number ≥ 1, got {n!r}")
        first = _lookup_seed(base, overrides)
        seeds = list(range(first, first + n))
    elif "seeds" in raw:
        seeds = raw["seeds"]
        if not isinstance(seeds, list) or not seeds or not all(_is_whole(v) for v in seeds):
            raise ConfigError(f"{path}: seeds: expected a list of whole numbers from 0 to "
                              f"2**32 - 1, e.g. [0, 1, 2]; got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"{path}: seeds: {seeds!r} lists a seed twice")
    else:
        return None
    if SEED_KEY in axes or any(_override_key(o) in (SEED_KEY, "train") for o in overrides):
        raise ConfigError(f"{path}: {SEED_KEY} is set by seeds/repeats; remove it from the "
                          "axes and the overrides")
    return seeds


def _lookup_seed(base: dict, overrides: list[str]) -> int:
    raw = config.apply_overrides(copy.deepcopy(base), overrides)
    seed = (raw.get("train") or {}).get("seed", config.TrainConfig().seed)
    return seed if _is_whole(seed) else config.TrainConfig().seed


def _make_points(base: dict, overrides: list[str], values: dict[str, Any],
                 seeds: list[int] | None, path: Path) -> list[Point]:
    """The run(s) of one combination of axis values: one, or one per seed."""
    if seeds is None:
        return [_make_point(base, overrides, values, path)]
    group = _point_name(values)
    return [_make_point(base, overrides, values, path, seed=s, group=group) for s in seeds]


def _point_name(values: dict[str, Any]) -> str:
    return "-".join(_slug(k, v) for k, v in values.items())


def _grid_name(name: Any, path: Path) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") \
            or name in (".", ".."):
        raise ConfigError(f"{path}: name: {name!r} cannot be a folder name; allowed: a "
                          "non-empty name without / or \\")
    return name


def _read_base(base: Any, path: Path) -> dict:
    if base is None:
        return {}
    if isinstance(base, str):  # a config file, relative to the grid file, else a recipe
        return config.read_yaml(locate(base, "run", base=path.parent))
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


def _make_point(base: dict, overrides: list[str], values: dict[str, Any], path: Path,
                seed: int | None = None, group: str = "") -> Point:
    name = _point_name(values) + ("" if seed is None else f"-seed{seed}")
    raw = copy.deepcopy(base)
    raw["name"] = name
    # Command-line overrides beat the base; axis values come last (overrides of axis keys
    # were rejected above, so nothing can beat them), then the seed.
    config.apply_overrides(raw, overrides)
    try:
        for key, value in values.items():
            config.set_key(raw, key, value)
        if seed is not None:
            config.set_key(raw, SEED_KEY, seed)
        cfg = config.from_dict(raw)
        check_environment(cfg)
    except ConfigError as e:
        raise ConfigError(_point_error(str(e), values, name, path)) from None
    return Point(name, values, cfg, group, seed)


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
