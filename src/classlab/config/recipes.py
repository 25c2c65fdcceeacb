"""Recipes: the configs and grids that ship inside the package, found by name.

The YAML files live in ``src/classlab/recipes/`` (package data, so ``pip install classlab``
brings them); the repository's ``experiments/`` is a symbolic link to that folder, so
``classlab train experiments/fast.yaml`` and ``classlab train fast`` read the same file.

Each file says what it is in its first comment lines (one source: the file itself)::

    # trains: what it trains, in one line
    # expect: the accuracy and time to expect
    # measured: where those were measured
    # alias: spec                (optional: other names it answers to)

:func:`locate` is the one place where a name becomes a path: ``config.load``, the notebook
API's ``classlab.train("quickstart")`` and the grid loader all call it. A path that exists
always wins; a bare name (no folder part) that is no file is looked up among the recipes.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from classlab.config.errors import ConfigError

FOLDER = Path(__file__).resolve().parent.parent / "recipes"
KINDS = ("run", "grid")  # a config for `classlab train`, a grid file for `classlab grid`
_COMMAND = {"run": "classlab train", "grid": "classlab grid"}
_HEADER = re.compile(r"^#\s*(trains|expect|measured|alias):\s*(.*?)\s*$")


@dataclass
class Recipe:
    name: str  # the file name without .yaml
    path: Path
    kind: str  # one of KINDS
    trains: str = ""
    expect: str = ""
    measured: str = ""
    aliases: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The name, with its aliases in brackets: ``seed_grid (spec)``."""
        return self.name + (f" ({', '.join(self.aliases)})" if self.aliases else "")

    def line(self, width: int = 0) -> str:
        """One line for ``classlab recipes``: name, kind, what, expected (where measured)."""
        what = self.trains or "(no '# trains:' line)"
        expect = f" | {self.expect}" if self.expect else ""
        where = f" [{self.measured}]" if self.measured else ""
        return f"{self.label:<{width}}  {self.kind:<4}  {what}{expect}{where}"


def _header(path: Path) -> dict[str, str]:
    """The ``# key: value`` lines of the file's leading comment block."""
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        m = _HEADER.match(line)
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2)
    return found


def _read(path: Path) -> Recipe:
    head = _header(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # our own files: no checks needed
    kind = "grid" if isinstance(raw, dict) and "axes" in raw else "run"
    aliases = [a for a in re.split(r"[,\s]+", head.get("alias", "")) if a]
    return Recipe(path.stem, path, kind, head.get("trains", ""), head.get("expect", ""),
                  head.get("measured", ""), aliases)


def recipes() -> list[Recipe]:
    """Every shipped recipe, configs first, then grids, each by name."""
    found = [_read(p) for p in sorted(FOLDER.glob("*.yaml"))]
    return sorted(found, key=lambda r: (KINDS.index(r.kind), r.name))


def names() -> list[str]:
    """The names a recipe answers to (file names, then aliases), as the error lines list."""
    all_ = recipes()
    return [r.name for r in all_] + [a for r in all_ for a in r.aliases]


def find(name: str) -> Recipe | None:
    """The recipe called ``name`` (its file name, with or without .yaml, or an alias)."""
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix in (".yaml", ".yml") else name
    for r in recipes():
        if stem == r.name or stem in r.aliases:
            return r
    return None


def _is_bare_name(text: str) -> bool:
    return bool(text) and "/" not in text and os.sep not in text and text not in (".", "..")


def unknown(text: str) -> ConfigError:
    """The one line for a name that is neither a file nor a recipe."""
    return ConfigError(f"cannot read config {text}: no such file, and no recipe of that name; "
                       f"recipes: {', '.join(names())} (classlab recipes lists them)")


def locate(path: str | os.PathLike, kind: str = "run", base: Path | None = None) -> Path:
    """The file ``path`` names: itself when it exists (relative to ``base`` when given),
    else the shipped recipe of that name. ``kind`` ("run" or "grid") is what the caller
    reads: a recipe of the other kind is one line saying which command takes it. A path
    with a folder part that does not exist is returned as is (its reader says so)."""
    text = os.fspath(path)
    p = Path(text) if base is None else Path(base) / text
    if p.exists() or not _is_bare_name(text):
        return p
    r = find(text)
    if r is None:
        raise unknown(text)
    if r.kind != kind:
        what = {"run": "a config", "grid": "a grid file"}
        raise ConfigError(f"{text}: the recipe {r.name} is {what[r.kind]}, not "
                          f"{what[kind]}; run it with `{_COMMAND[r.kind]} {text}`")
    return r.path


def copy(name: str, dest: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Write the recipe ``name`` to ``dest`` (default ``./<name>.yaml``; a folder: the file
    goes into it) as an editable copy, comments and all; an existing file is refused unless
    ``force``. (A grid's ``base: norm_proxy.yaml`` keeps working in the copy: a base file
    that is not next to it is the recipe of that name, see :func:`locate`.)"""
    r = find(name)
    if r is None:
        raise ConfigError(f"recipes copy: no recipe {name!r}; recipes: {', '.join(names())}")
    out = Path(dest) if dest is not None else Path(f"{r.name}.yaml")
    if out.is_dir():
        out = out / f"{r.name}.yaml"
    if out.exists() and not force:
        raise ConfigError(f"{out}: exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise ConfigError(f"{out.parent}: no such folder")
    shutil.copyfile(r.path, out)
    return out
