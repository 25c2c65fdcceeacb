"""Recipes travel with the package (issue 27): the shipped configs and grids are package data
(``src/classlab/recipes/``, which the repository's ``experiments/`` links to), listed by
``classlab recipes``, trained by name (``classlab train fast``, ``classlab grid spec``,
``classlab.train("quickstart")``) when no file of that name exists, and copied to edit.

The last test builds a wheel from the repository's files, installs it into a fresh virtual
environment outside the repository and trains a recipe by name from there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import classlab
from classlab import config, grid
from classlab.api import resolve_config
from classlab.cli import main
from classlab.config import ConfigError, recipes

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
# what makes any recipe a few-second run on generated data
TINY = {"data.name": "synthetic", "data.synthetic_size": 300, "train.epochs": 1,
        "train.batch_size": 64, "train.eval_batch_size": 150, "train.progress": False,
        "train.device": "cpu", "train.threads": 1, "train.precision": "fp32",
        "train.channels_last": False, "diagnose.enabled": False, "log.dynamics_every": 0}
TINY_ARGS = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY.items()]


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()  # train.threads=1 sets it process-wide
    yield
    torch.set_num_threads(threads)


def test_experiments_is_the_package_folder_one_copy_of_each_file():
    assert EXPERIMENTS.is_symlink()
    assert EXPERIMENTS.resolve() == recipes.FOLDER == \
        Path(classlab.__file__).resolve().parent / "recipes"
    assert sorted(p.name for p in EXPERIMENTS.glob("*.yaml")) == \
        sorted(r.path.name for r in recipes.recipes())


def test_recipes_lists_every_file_on_one_line_from_its_own_header(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    files = sorted(EXPERIMENTS.glob("*.yaml"))
    assert len(lines) == len(files) + 2  # a heading, one line per recipe, how to use them
    assert lines[0].split() == ["name", "kind", "what", "it", "trains", "|", "what", "to",
                                "expect", "[where", "measured]"]
    by_name = {line.split()[0]: line for line in lines[1:-1]}
    assert set(by_name) == {f.stem for f in files}
    for f in files:
        head = f.read_text().splitlines()[:3]
        # every shipped recipe says what it trains, what to expect and where that was measured
        assert [h.split(":")[0] for h in head] == ["# trains", "# expect", "# measured"], f.name
        for h in head:
            assert h.split(": ", 1)[1] in by_name[f.stem], f.name
    assert by_name["seed_grid"].startswith("seed_grid (spec)")
    assert by_name["seed_grid"].split()[2] == "grid" and by_name["fast"].split()[1] == "run"
    assert "classlab recipes copy NAME" in lines[-1]


def test_a_name_resolves_to_the_recipe_and_a_file_of_that_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fast = config.load(EXPERIMENTS / "fast.yaml")
    assert config.load("fast") == config.load("fast.yaml") == fast
    assert config.load("fast", ["train.epochs=2"]).train.epochs == 2
    assert resolve_config("quickstart", train__epochs=1).name == "quickstart"
    assert config.load("demo").name == "demo_synthetic"  # an alias
    (tmp_path / "fast.yaml").write_text("name: mine\n")
    (tmp_path / "fast").write_text("name: mine_too\n")
    assert config.load("fast.yaml").name == "mine"
    assert config.load("fast").name == "mine_too"
    assert resolve_config("fast").name == "mine_too"


def test_grids_by_name_and_a_copied_grid_finds_its_base_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = grid.load_grid("spec")
    assert spec.name == "seed_grid" and len(spec.points) == 12
    assert spec.points[0].cfg == grid.load_grid(EXPERIMENTS / "seed_grid.yaml").points[0].cfg
    # norm_grid's base is norm_proxy.yaml next to it; a lone copy finds the recipe instead
    shutil.copy(EXPERIMENTS / "norm_grid.yaml", tmp_path / "mine.yaml")
    g = grid.load_grid(tmp_path / "mine.yaml")
    assert [p.cfg.data.subset for p in g.points] == [10000] * 4


@pytest.mark.parametrize("call, piece", [
    (lambda: config.load("fsat"), "cannot read config fsat: no such file, and no recipe of "
                                  "that name; recipes: demo_synthetic, fast, fast94"),
    (lambda: config.load("spec"), "spec: the recipe seed_grid is a grid file, not a config; "
                                  "run it with `classlab grid spec`"),
    (lambda: grid.load_grid("fast"), "fast: the recipe fast is a config, not a grid file; "
                                     "run it with `classlab train fast`"),
    (lambda: resolve_config("quickstrat"), "no recipe of that name"),
])
def test_unknown_names_and_the_wrong_kind_are_one_line(call, piece, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        call()
    assert piece in str(e.value) and "\n" not in str(e.value)
    if "no recipe" in piece:
        assert "seed_grid, demo, spec (classlab recipes lists them)" in str(e.value)


def test_recipes_copy_writes_an_editable_copy_and_keeps_an_existing_file(tmp_path,
                                                                        monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["recipes", "copy", "fast", "my.yaml"]) == 0
    assert (tmp_path / "my.yaml").read_bytes() == (EXPERIMENTS / "fast.yaml").read_bytes()
    assert capsys.readouterr().out == ("Wrote my.yaml (recipe fast); edit it, then: "
                                       "classlab train my.yaml\n")
    (tmp_path / "my.yaml").write_text("name: edited\n")
    assert main(["recipes", "copy", "fast94", "my.yaml"]) == 2
    assert capsys.readouterr().err == ("classlab recipes: error: my.yaml: exists; pass --force "
                                       "to replace it\n")
    assert (tmp_path / "my.yaml").read_text() == "name: edited\n"
    assert main(["recipes", "copy", "fast94", "my.yaml", "--force"]) == 0
    assert (tmp_path / "my.yaml").read_bytes() == (EXPERIMENTS / "fast94.yaml").read_bytes()
    # default name, a folder as the destination, an alias; the copy runs as the recipe does
    assert main(["recipes", "copy", "quickstart"]) == 0
    assert config.load(tmp_path / "quickstart.yaml") == config.load(EXPERIMENTS /
                                                                   "quickstart.yaml")
    (tmp_path / "grids").mkdir()
    assert main(["recipes", "copy", "spec", "grids"]) == 0
    assert "classlab grid grids/seed_grid.yaml" in capsys.readouterr().out
    assert len(grid.load_grid(tmp_path / "grids" / "seed_grid.yaml").points) == 12


def test_recipes_show_prints_the_file(capsys):
    assert main(["recipes", "show", "spec"]) == 0
    assert capsys.readouterr().out == (EXPERIMENTS / "seed_grid.yaml").read_text()


def test_train_by_name_from_the_api(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no demo file here: the recipe
    run = classlab.train("demo", out="runs", overrides=TINY, model__width=4)
    assert run.summary["status"] == "finished"
    assert run.config.name == "demo_synthetic" and run.dir.parent == Path("runs")
    assert run.config.optim.lr == config.load(EXPERIMENTS / "demo_synthetic.yaml").optim.lr


# --------------------------------------------------------------------------- a wheel


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def test_a_wheel_in_a_fresh_venv_lists_and_trains_recipes_by_name(tmp_path):
    # Build from a copy of the files the wheel is made of: nothing is written into the
    # repository (setuptools leaves build/ and *.egg-info next to pyproject.toml).
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "src", tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", tmp_path / "dist", tree])
    (wheel,) = (tmp_path / "dist").glob("classlab-*.whl")

    # A fresh venv: classlab from the wheel; torch and the other dependencies from this
    # environment's site-packages (a .pth line adds the folder, not its .pth files, so this
    # environment's editable classlab stays out of it).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    purelib = Path(_run([venv / "bin" / "python", "-c", "import sysconfig; "
                         "print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
          "--no-deps", "--no-index", wheel])

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run([venv / "bin" / "python", "-c", "import classlab; from classlab.config "
                  "import recipes; print(classlab.__file__); print(recipes.FOLDER)"],
                 cwd=cwd, env=env).stdout.split()
    assert all(Path(w).resolve().is_relative_to(purelib.resolve()) for w in where), where

    listed = _run([venv / "bin" / "classlab", "recipes"], cwd=cwd, env=env).stdout
    assert {line.split()[0] for line in listed.splitlines()[1:-1]} == \
        {r.name for r in recipes.recipes()}
    _run([venv / "bin" / "classlab", "train", "quickstart", *TINY_ARGS, "model.width=8", "--out",
          "runs"], cwd=cwd, env=env)
    (run_dir,) = (cwd / "runs").iterdir()
    summary = classlab.load_run(run_dir).summary
    assert summary["status"] == "finished" and summary["model"] == "fastnet"
    assert run_dir.name.startswith("quickstart-")
