"""Issue 30: every bad input a user makes is one line on stderr, never a traceback, and never
silent damage. Each row of :data:`CASES` is a command line, the exit status it must give and
a piece of its one line; the test also checks that nothing was written (every file under the
test's folder keeps its bytes, and no file appears or goes). The tests after the table cover
what is not an error line: what is listed, what is kept, what a full disk leaves behind.

Everything runs in this process through ``classlab.cli.main`` on copies of the session's
tiny run (tests/conftest.py), so the file takes seconds, not minutes.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch

from classlab import cli
from classlab.models import resnet18
from classlab.rundir.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

IGNORED = {".lock"}  # the run folder's lock file stays by design (classlab.rundir.lock)


# --------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> MD5 of its bytes)."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in IGNORED}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def read_only(monkeypatch, root: Path) -> None:
    """Writes under ``root`` fail with EROFS, as on a read-only mount (chmod does not stop
    root, and a bind mount needs privileges)."""
    root_s = os.path.realpath(root)

    def under(p) -> bool:
        if isinstance(p, int):
            return False
        return os.path.realpath(os.fspath(p)).startswith(root_s)

    def refuse(p):
        return OSError(errno.EROFS, "Read-only file system", os.fspath(p))

    real_open = os.open

    def fake_open(path, flags, *a, **k):
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        if flags & writes and under(path):
            raise refuse(path)
        return real_open(path, flags, *a, **k)

    real_io_open = io.open

    def fake_io_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and under(file):
            raise refuse(file)
        return real_io_open(file, mode, *a, **k)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_io_open)
    monkeypatch.setattr(builtins, "open", fake_io_open)
    for name in ("mkdir", "replace", "rename", "link", "unlink", "rmdir"):
        real = getattr(os, name)

        def fake(p, *a, _real=real, **k):
            if under(p):
                raise refuse(p)
            return _real(p, *a, **k)

        monkeypatch.setattr(os, name, fake)


def disk_full_after(monkeypatch, n: int) -> None:
    """The disk fills after ``n`` files were written: every later fsync of a file fails."""
    real, count = os.fsync, [0]

    def fake(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            count[0] += 1
            if count[0] > n:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fake)


TINY_YAML = """\
name: tiny
data: {name: synthetic, synthetic_size: 300}
model: {width: 4}
train: {epochs: 1, batch_size: 64, progress: false, device: cpu, threads: 1,
        precision: fp32, channels_last: false}
log: {dynamics_every: 1}
diagnose: {enabled: false, count: 2, layers: [layer4]}
"""


# --------------------------------------------------------------------------- the table


@pytest.fixture(scope="module")
def world(tiny_run: Path, tmp_path_factory) -> dict[str, Path]:
    """Inputs for the table: the tiny run, runs damaged in one way each, bad YAML files."""
    root = tmp_path_factory.mktemp("bad_input")

    def _copy_run(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst

    w: dict[str, Path] = {"root": root, "run": _copy_run(tiny_run, root / "good")}
    w["tiny"] = root / "tiny.yaml"
    w["tiny"].write_text(TINY_YAML)
    (root / "binary.yaml").write_bytes(b"name: x\n\0\1\2\xff")
    (root / "latin1.yaml").write_bytes("name: café\n".encode("latin-1"))
    (root / "dup.yaml").write_text("name: a\ntrain:\n  epochs: 2\n  epochs: 3\n")
    (root / "notdir").write_text("a file\n")
    (root / "mine.png").write_text("not a picture: my notes\n")
    w.update({k: root / f"{k}.yaml" for k in ("binary", "latin1", "dup")})
    w["notdir"], w["mine_png"] = root / "notdir", root / "mine.png"

    # last.pt of a width-8 network, in a run whose config.yaml says width 4
    other = _copy_run(tiny_run, root / "other_width")
    state = load_checkpoint(other / "last.pt")
    torch.manual_seed(0)
    state["model"] = resnet18(num_classes=10, norm_layer=torch.nn.BatchNorm2d, width=8).state_dict()
    state["ema"] = None
    state["config"]["model"]["width"] = 8
    save_checkpoint(other / "last.pt", state)
    w["other_width"] = other
    # the same, but the checkpoint's own config still says width 4: only the weights differ
    weights = _copy_run(tiny_run, root / "other_weights")
    state["config"]["model"]["width"] = 4
    save_checkpoint(weights / "last.pt", state)
    w["other_weights"] = weights

    for name, text in (("truncated", None), ("empty", ""), ("list", "[]"),
                       ("wrong_type", None)):
        d = _copy_run(tiny_run, root / f"summary_{name}")
        good = (d / "summary.json").read_text()
        if name == "truncated":
            text = good[: len(good) // 2]
        elif name == "wrong_type":
            text = json.dumps({**json.loads(good), "best_by_val": "x", "final": 3})
        (d / "summary.json").write_text(text)
        w[f"summary_{name}"] = d

    # the last metrics row cut off, and last.pt already holds that epoch
    cut = _copy_run(tiny_run, root / "cut_row")
    text = (cut / "metrics.csv").read_text().rstrip("\r\n")
    (cut / "metrics.csv").write_text(text[:-3])
    w["cut_row"] = cut

    # tuned grids (issue 23): a bad tune: section, each one way
    tune_base = "base: {data: {name: synthetic, synthetic_size: 100}, model: {width: 4}}\n"
    for name, axes, tune in (
            ("unknown_key", "model.norm: [bn, ln]", "space: {optim.lrr: {log_uniform: "
                                                    "[1e-4, 1e-1]}}, trials: 4"),
            ("empty_range", "model.norm: [bn, ln]", "space: {optim.lr: {log_uniform: "
                                                    "[0.1, 0.01]}}, trials: 4"),
            ("zero_trials", "model.norm: [bn, ln]", "space: {optim.lr: {log_uniform: "
                                                    "[1e-4, 1e-1]}}, trials: 0"),
            ("axis_clash", "optim.lr: [0.1, 0.01]", "space: {optim.lr: {log_uniform: "
                                                    "[1e-4, 1e-1]}}, trials: 4"),
            ("good", "model.norm: [bn, ln]", "space: {optim.lr: {log_uniform: "
                                             "[1e-4, 1e-1]}}, trials: 4")):
        w[f"tune_{name}"] = root / f"tune_{name}.yaml"
        w[f"tune_{name}"].write_text(f"{tune_base}axes: {{{axes}}}\ntune: {{{tune}}}\n")

    grid = root / "bad_grid"
    grid.mkdir()
    (grid / "grid.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    w["bad_grid"] = grid
    return w


# (id, argv with {placeholders} from `world`, exit status, a piece of the one line)
CASES = [
    ("resume-other-width", ["train", "--resume", "{other_width}"], 2, "width"),
    ("eval-other-width", ["eval", "{other_width}"], 2, "does not fit the run's model"),
    ("diagnose-other-width", ["diagnose", "{other_width}"], 2, "conv1.weight: [8, 3, 3, 3]"),
    ("resume-other-weights", ["train", "--resume", "{other_weights}"], 2,
     "does not fit the run's model (resnet18/bn, width 4) (conv1.weight: [8, 3, 3, 3]"),
    ("eval-other-weights", ["eval", "{other_weights}"], 2, "does not fit the run's model"),
    ("train-binary-yaml", ["train", "{binary}", "--out", "{root}/out"], 2, "binary file"),
    ("train-latin1-yaml", ["train", "{latin1}", "--out", "{root}/out"], 2, "not UTF-8"),
    ("config-binary-yaml", ["config", "{binary}"], 2, "binary file"),
    ("config-latin1-yaml", ["config", "{latin1}"], 2, "byte 0xe9"),
    ("schedule-latin1-yaml", ["schedule", "{latin1}", "--plot", "{root}/s.png"], 2,
     "not UTF-8"),
    ("lr-find-binary-yaml", ["lr-find", "{binary}", "--plot", "{root}/l.png"], 2,
     "binary file"),
    ("grid-latin1-yaml", ["grid", "{latin1}", "--out", "{root}/out"], 2, "not UTF-8"),
    ("table-latin1-grid-yaml", ["table", "{bad_grid}"], 2, "not UTF-8"),
    ("duplicate-key", ["config", "{dup}"], 2, "epochs: given twice (lines 3 and 4)"),
    ("batch-over-train-set", ["train", "{tiny}", "train.batch_size=1000000", "--out",
                              "{root}/out"], 2, "train.batch_size: 1,000,000 is larger"),
    ("long-name", ["train", "{tiny}", "name=" + "n" * 240, "--out", "{root}/out"], 2,
     "name: 240 characters"),
    ("name-with-slash", ["config", "{tiny}", "name=a/b"], 2, "cannot be a folder name"),
    ("lr-find-plot-dir", ["lr-find", "{tiny}", "--plot", "{root}"], 2, "is a folder"),
    ("lr-find-plot-under-file", ["lr-find", "{tiny}", "--plot", "{notdir}/x.png"], 2,
     "is a file, not a folder"),
    ("lr-find-end-lr", ["lr-find", "{tiny}", "--end-lr", "1e300", "--plot", "{root}/l.png"],
     2, "end_lr=1e+300 is out of range"),
    ("lr-find-plot-checkpoint", ["lr-find", "{tiny}", "--plot", "{run}/last.pt"], 2,
     "must end in .png"),
    ("lr-find-plot-next-to-metrics", ["lr-find", "{tiny}", "--plot", "{run}/metrics.png"],
     2, "metrics.csv: exists and is not a table lr-find wrote"),
    ("lr-find-plot-not-png", ["lr-find", "{tiny}", "--plot", "{mine_png}"], 2,
     "exists and is not a PNG"),
    ("schedule-plot-dir", ["schedule", "{tiny}", "--plot", "{root}"], 2, "is a folder"),
    ("schedule-plot-under-file", ["schedule", "{tiny}", "--plot", "{notdir}/x.png"], 2,
     "is a file, not a folder"),
    ("schedule-plot-checkpoint", ["schedule", "{tiny}", "--plot", "{run}/last.pt"], 2,
     "must end in .png"),
    ("schedule-plot-not-png", ["schedule", "{tiny}", "--plot", "{mine_png}"], 2,
     "exists and is not a PNG"),
    ("schedule-negative-images", ["schedule", "{tiny}", "--train-images", "-10", "--plot",
                                  "{root}/s.png"], 2, "--train-images: -10 is out of range"),
    ("schedule-huge-images", ["schedule", "{tiny}", "--train-images", "99999999999999999999",
                              "--plot", "{root}/s.png"], 2, "at most 1,000,000"),
    ("schedule-huge-epochs", ["schedule", "{tiny}", "train.epochs=1000000000", "--plot",
                              "{root}/s.png"], 2, "at most 1,000,000"),
    ("eval-device-bogus", ["eval", "{run}", "--device", "bogus"], 2,
     "--device: unknown value 'bogus'; allowed: auto, cpu, cuda, cuda:N"),
    ("eval-device-mps", ["eval", "{run}", "--device", "mps"], 2, "allowed: auto, cpu"),
    ("diagnose-device-meta", ["diagnose", "{run}", "--device", "meta"], 2,
     "allowed: auto, cpu"),
    ("report-summary-truncated", ["report", "{summary_truncated}"], 2,
     "damaged summary.json: not valid JSON"),
    ("report-summary-empty", ["report", "{summary_empty}"], 2, "damaged summary.json: empty"),
    ("report-summary-list", ["report", "{summary_list}"], 2, "not a JSON object"),
    ("report-summary-wrong-type", ["report", "{summary_wrong_type}"], 2, "'final' is int"),
    ("resume-cut-row-held", ["train", "--resume", "{cut_row}"], 2,
     "cannot be recomputed"),
    ("compare-same-run", ["compare", "{run}", "{run}"], 2, "the same run given twice"),
    ("grid-dir-is-a-run", ["grid", "{tiny}", "--grid-dir", "{run}"], 2, "is a run folder"),
    ("resume-with-out", ["train", "--resume", "{run}", "--out", "{root}/elsewhere"], 2,
     "drop --out"),
    ("nproc-zero", ["train", "{tiny}", "--nproc", "0", "--out", "{root}/out"], 2,
     "--nproc: 0 is out of range"),
    ("nproc-negative", ["train", "{tiny}", "--nproc", "-2", "--out", "{root}/out"], 2,
     "--nproc: -2 is out of range"),
    ("early-stop-no-val", ["train", "{tiny}", "train.early_stop_patience=3",
                           "data.val_split=0", "--out", "{root}/out"], 2,
     "train.early_stop_patience: 3 watches val_loss, but data.val_split is 0"),
    ("early-stop-test-metric", ["train", "{tiny}", "train.early_stop_metric=test_acc",
                                "--out", "{root}/out"], 2,
     "train.early_stop_metric: unknown value 'test_acc'; allowed: val_acc, val_loss"),
    ("tune-unknown-key", ["grid", "{tune_unknown_key}", "--out", "{root}/out"], 2,
     "tune.space optim.lrr: unknown key; allowed: name, lr"),
    ("tune-empty-range", ["grid", "{tune_empty_range}", "--out", "{root}/out"], 2,
     "tune.space optim.lr: log_uniform: the range [0.1, 0.01] is empty; low must be < high"),
    ("tune-zero-trials", ["grid", "{tune_zero_trials}", "--out", "{root}/out"], 2,
     "tune.trials: expected a whole number ≥ 1, got 0"),
    ("tune-key-is-an-axis", ["grid", "{tune_axis_clash}", "--out", "{root}/out"], 2,
     "tune.space optim.lr: optim.lr is also an axis of this grid"),
    ("tune-print-commands", ["grid", "{tune_good}", "--print-commands", "--out",
                             "{root}/out"], 2, "--print-commands: a tuned grid's trials"),
    ("predict-no-paths", ["predict", "{run}"], 2, "give at least one picture or folder"),
    ("predict-top-zero", ["predict", "{run}", "{root}", "--top", "0"], 2,
     "--top: 0 is out of range"),
    ("predict-not-a-run", ["predict", "{root}/nowhere", "{root}"], 2, "not a run folder"),
    ("predict-other-width", ["predict", "{other_weights}", "{root}"], 2,
     "does not fit its own config (resnet18/bn, width 4)"),
    ("export-other-width", ["export", "{other_weights}", "--format", "torchscript"], 2,
     "does not fit its own config"),
    ("export-format", ["export", "{run}", "--format", "keras"], 2,
     "--format: unknown value 'keras'; allowed: onnx, torchscript"),
    ("export-not-a-run", ["export", "{root}/nowhere"], 2, "not a run folder"),
    ("epochs-without-resume", ["train", "{tiny}", "--epochs", "3", "--out", "{root}/out"], 2,
     "--epochs extends a run"),
    ("resume-epochs-fewer", ["train", "--resume", "{run}", "--epochs", "0"], 2,
     "fewer than the 1 epochs"),
    ("data-issues-not-a-run", ["data-issues", "{root}/nowhere"], 2, "not a run folder"),
    ("data-issues-split", ["data-issues", "{run}", "--split", "val"], 2, "--split"),
    ("data-issues-top", ["data-issues", "{run}", "--top", "0"], 2, "--top"),
    ("label-noise-rate", ["train", "{tiny}", "data.label_noise=1.0", "--out", "{root}/out"],
     2, "data.label_noise"),
    ("label-noise-kind", ["train", "{tiny}", "data.label_noise_kind=flip", "--out",
                          "{root}/out"], 2, "data.label_noise_kind"),
    ("exclude-missing-file", ["train", "{tiny}", "data.exclude={root}/nothing.csv", "--out",
                              "{root}/out"], 2, "nothing.csv"),
    ("compile-maybe", ["train", "{tiny}", "train.compile=maybe", "--out", "{root}/out"], 2,
     "train.compile: expected true, false or auto, got 'maybe'"),
    # augmentation policies (issue 25): an unknown policy, a magnitude out of range, mixup
    # with a non-positive alpha
    ("aug-unknown-policy", ["train", "{tiny}", "aug.ops=[crop,randaugmnt]", "--out",
                            "{root}/out"], 2,
     "aug.ops: unknown value 'randaugmnt'; allowed: autoaugment, colorjitter, crop, cutmix"),
    ("aug-magnitude-range", ["train", "{tiny}", "aug.ops=[randaugment]",
                             "aug.randaugment_m=12", "--out", "{root}/out"], 2,
     "aug.randaugment_m: 12.0 is out of range; must be ≤ 10.0"),
    ("aug-mixup-alpha", ["train", "{tiny}", "aug.ops=[mixup]", "aug.mixup_alpha=0", "--out",
                         "{root}/out"], 2, "aug.mixup_alpha: 0.0 is out of range; must be > 0.0"),
    ("aug-albu-policy-magnitude", ["train", "{tiny}", "aug.backend=albumentations",
                                   "aug.albumentations=[{{name: RandAugment, magnitude: 11}}]",
                                   "--out", "{root}/out"], 2,
     "aug.albumentations[0].magnitude: RandAugment refuses 11; allowed: a number from 0 to 10"),
    # recipes by name (issue 27): a name that is no file and no recipe, the wrong kind
    ("train-unknown-recipe", ["train", "fsat", "--out", "{root}/out"], 2,
     "cannot read config fsat: no such file, and no recipe of that name; recipes: "
     "demo_synthetic, fast"),
    ("grid-unknown-recipe", ["grid", "spce", "--out", "{root}/out"], 2,
     "cannot read config spce: no such file, and no recipe of that name"),
    ("api-style-name-in-config", ["config", "quickstrat"], 2, "no recipe of that name"),
    ("train-a-grid-recipe", ["train", "spec", "--out", "{root}/out"], 2,
     "spec: the recipe seed_grid is a grid file, not a config; run it with `classlab grid "
     "spec`"),
    ("grid-a-config-recipe", ["grid", "fast", "--out", "{root}/out"], 2,
     "fast: the recipe fast is a config, not a grid file"),
    ("recipes-copy-over-a-file", ["recipes", "copy", "fast", "{tiny}"], 2,
     "exists; pass --force to replace it"),
    ("recipes-copy-unknown", ["recipes", "copy", "fsat", "{root}/x.yaml"], 2,
     "recipes copy: no recipe 'fsat'; recipes: demo_synthetic"),
    ("recipes-copy-no-folder", ["recipes", "copy", "fast", "{root}/nowhere/x.yaml"], 2,
     "nowhere: no such folder"),
    ("recipes-copy-no-name", ["recipes", "copy"], 2, "recipes copy: give a recipe name"),
    ("recipes-unknown-action", ["recipes", "cp", "fast"], 2,
     "recipes: unknown action 'cp'; allowed: list, show, copy"),
    ("recipes-show-unknown", ["recipes", "show", "fsat"], 2, "recipes show: no recipe 'fsat'"),
    # MLflow (issue 27)
    ("mlflow-not-a-bool", ["train", "{tiny}", "log.mlflow=maybe", "--out", "{root}/out"], 2,
     "log.mlflow: expected true or false, got 'maybe'"),
    ("mlflow-uri-not-text", ["train", "{tiny}", "log.mlflow_uri=[1]", "--out", "{root}/out"],
     2, "log.mlflow_uri: expected a string"),
    ("mlflow-experiment-not-text", ["config", "{tiny}", "log.mlflow_experiment=[a]"], 2,
     "log.mlflow_experiment: expected a string"),
    ("whiten-bias-without-whitening", ["train", "{tiny}", "optim.whiten_bias_epochs=3",
                                       "--out", "{root}/out"], 2,
     "optim.whiten_bias_epochs: 3 needs a whitening layer, which model.name='resnet18' lacks; "
     "allowed: 0, or model.name=fastnet"),
    ("whiten-bias-negative", ["config", "{tiny}", "optim.whiten_bias_epochs=-1"], 2,
     "optim.whiten_bias_epochs: -1.0 is out of range; must be ≥ 0.0"),
    # model.activation and normjitter (issue 26)
    ("activation-unknown", ["config", "{tiny}", "model.activation=tanh"], 2,
     "model.activation: unknown value 'tanh'; allowed: auto, gelu, relu, silu"),
    ("normjitter-contrast-too-large", ["config", "{tiny}", "aug.norm_contrast=1"], 2,
     "aug.norm_contrast: 1.0 is out of range; must be < 1.0"),
    ("normjitter-brightness-negative", ["config", "{tiny}", "aug.norm_brightness=-0.1"], 2,
     "aug.norm_brightness: -0.1 is out of range; must be ≥ 0.0"),
]


@pytest.mark.parametrize("argv, code, piece", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(world, argv, code, piece, capsys,
                                                  monkeypatch):
    monkeypatch.chdir(world["root"])  # default outputs (schedule.png) would land here
    before = snapshot(world["root"])
    argv = [a.format(**{k: str(v) for k, v in world.items()}) for a in argv]
    got, _, err = run(argv, capsys)
    line = one_line(err)
    assert got == code, line
    assert piece in line, line
    assert snapshot(world["root"]) == before


def test_tuned_grid_without_optuna_names_the_extra(world, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    before = snapshot(world["root"])
    code, _, err = run(["grid", world["tune_good"], "--out", world["root"] / "out"], capsys)
    line = one_line(err)
    assert code == 2 and "pip install 'classlab[tune]'" in line, line
    assert snapshot(world["root"]) == before


def test_policies_without_kornia_name_the_extra(world, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "kornia", None)  # `import kornia` raises ImportError
    monkeypatch.setitem(sys.modules, "kornia.enhance", None)
    before = snapshot(world["root"])
    code, _, err = run(["train", world["tiny"], "aug.ops=[crop,trivialaugment]", "--out",
                        world["root"] / "out"], capsys)
    line = one_line(err)
    assert code == 2 and line.endswith("aug.ops: trivialaugment uses Kornia's image ops and "
                                       "kornia is not installed: pip install "
                                       "'classlab[kornia]'"), line
    assert snapshot(world["root"]) == before


@pytest.mark.parametrize("argv", [["train", "{tiny}"], ["grid", "{tune_good}"]],
                         ids=["train", "grid"])
def test_mlflow_without_the_package_names_the_extra(world, argv, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    monkeypatch.chdir(world["root"])
    before = snapshot(world["root"])
    argv = [a.format(**{k: str(v) for k, v in world.items()}) for a in argv]
    code, _, err = run([*argv, "log.mlflow=true", "--out", world["root"] / "out"], capsys)
    line = one_line(err)
    assert code == 2 and line.startswith(f"classlab {argv[0]}: error: ") and line.endswith(
        "log.mlflow=true needs the mlflow package: pip install 'classlab[mlflow]'"), line
    assert snapshot(world["root"]) == before


# --------------------------------------------------------------------------- read-only


@pytest.mark.parametrize("argv", [["report"], ["diagnose"], ["train", "--resume"]],
                         ids=["report", "diagnose", "resume"])
def test_writing_commands_on_a_read_only_run_say_so(world, argv, capsys, monkeypatch,
                                                     tmp_path, copy_run):
    run_dir = copy_run(world["run"], tmp_path)
    before = snapshot(tmp_path)
    read_only(monkeypatch, run_dir)
    code, _, err = run([*argv, run_dir], capsys)
    line = one_line(err)
    assert code == 2 and "Read-only file system" in line, line
    assert "writable" in line, line  # where to go instead
    monkeypatch.undo()
    assert snapshot(tmp_path) == before


def test_reading_commands_on_a_read_only_run_still_work(world, capsys, monkeypatch):
    read_only(monkeypatch, world["run"])
    code, out, err = run(["eval", world["run"]], capsys)
    assert code == 0 and out.startswith("Test set:"), err
    code, out, err = run(["runs", world["run"].parent], capsys)
    assert code == 0 and "finished" in out, err


def test_compare_into_a_read_only_place_names_out(world, capsys, monkeypatch, tmp_path,
                                                  copy_run):
    a = copy_run(world["run"], tmp_path / "a")
    b = copy_run(world["run"], tmp_path / "b")
    read_only(monkeypatch, tmp_path / "ro")
    code, _, err = run(["compare", a, b, "--out", tmp_path / "ro" / "cmp"], capsys)
    line = one_line(err)
    assert code == 2 and "Read-only file system" in line and "--out" in line, line


# --------------------------------------------------------------------------- disk full


def _full_disk_keeps_previous(argv: list, root: Path, after: int, monkeypatch,
                              capsys) -> None:
    before = snapshot(root)
    disk_full_after(monkeypatch, after)
    code, _, err = run(argv, capsys)
    monkeypatch.undo()
    line = one_line(err)
    assert code == 1 and "No space left on device" in line, line
    assert snapshot(root) == before, "the previous complete output must stay as it was"
    assert not [p for p in root.rglob(".*") if p.name not in IGNORED]  # no temporary left


@pytest.mark.parametrize("after", [0, 2])
def test_report_on_a_full_disk_keeps_the_previous_report(world, after, capsys, monkeypatch,
                                                         tmp_path, copy_run):
    run_dir = copy_run(world["run"], tmp_path)
    assert run(["report", run_dir], capsys)[0] == 0
    _full_disk_keeps_previous(["report", run_dir], tmp_path, after, monkeypatch, capsys)


def test_diagnose_on_a_full_disk_keeps_the_previous_files(tiny_diagnosed, capsys,
                                                          monkeypatch, tmp_path, copy_run):
    run_dir = copy_run(tiny_diagnosed[0], tmp_path)
    assert run(["report", run_dir], capsys)[0] == 0
    _full_disk_keeps_previous(["diagnose", run_dir, "--count", "2", "--layers", "layer4"],
                              tmp_path, 6, monkeypatch, capsys)


def test_compare_on_a_full_disk_keeps_the_previous_report(world, capsys, monkeypatch,
                                                          tmp_path, copy_run):
    a = copy_run(world["run"], tmp_path / "a")
    b = copy_run(world["run"], tmp_path / "b")
    argv = ["compare", a, b, "--out", tmp_path / "cmp"]
    assert run(argv, capsys)[0] == 0
    _full_disk_keeps_previous(argv, tmp_path, 1, monkeypatch, capsys)


def test_full_disk_before_the_first_epoch_says_none_finished(world, capsys, monkeypatch,
                                                             tmp_path):
    import classlab.run.fit as fit

    def full(path, row):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fit, "append_metrics", full)
    code, _, err = run(["train", world["tiny"], "--out", tmp_path], capsys)
    line = one_line(err)
    assert code == 1 and "no epoch finished yet" in line and "last.pt keeps" not in line, line


# --------------------------------------------------------------------------- memory


def test_out_of_memory_in_training_is_one_line_naming_the_batch_sizes(world, capsys,
                                                                      monkeypatch, tmp_path):
    import classlab.run.fit as fit

    def alloc(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                           "not enough memory: you tried to allocate 1099511627776 bytes.")

    monkeypatch.setattr(fit, "train_one_epoch", alloc)
    code, _, err = run(["train", world["tiny"], "--out", tmp_path], capsys)
    line = one_line(err)
    assert code == 1 and "train.batch_size" in line and "train.eval_batch_size" in line, line


# --------------------------------------------------------------------------- listed, not lost


def test_runs_lists_a_damaged_summary_as_damaged_and_the_others(world, capsys):
    code, out, err = run(["runs", world["root"]], capsys)
    assert code == 0 and "Traceback" not in err, err
    rows = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    for name in ("summary_truncated", "summary_empty", "summary_list", "summary_wrong_type"):
        row = next(v for k, v in rows.items() if f"/{name}/" in k + "/")
        assert "damaged summary.json" in row and "not started" not in row, row
    good = next(v for k, v in rows.items() if "/good/" in k + "/")
    assert "finished" in good


def _grid_of(points: dict[str, Path], root: Path) -> Path:
    """A grid folder holding copies of ``points`` (name -> run folder)."""
    import yaml

    root.mkdir()
    for name, src in points.items():
        shutil.copytree(src, root / name)
    (root / "grid.yaml").write_text(yaml.safe_dump(
        {"name": "g", "axes": {}, "points": [{"name": n, "values": {}} for n in points]}))
    return root


def test_table_with_garbage_dynamics_and_a_damaged_summary(world, capsys, tmp_path):
    g = _grid_of({"ok": world["run"], "bad": world["summary_truncated"],
                  "noise": world["run"]}, tmp_path / "g")
    (g / "noise" / "dynamics.csv").write_bytes(os.urandom(400))
    (g / "ok" / "dynamics.csv").write_text("step,epoch,layer\n1,x\n")
    code, out, err = run(["table", g], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert "damaged summary.json" in out
    assert "not started" not in out


def test_report_leaves_out_a_cut_off_metrics_row(world, capsys, tmp_path, copy_run):
    run_dir = copy_run(world["run"], tmp_path)
    metrics = run_dir / "metrics.csv"
    last = metrics.read_text().splitlines()[-1]
    cut = "2," + ",".join(last.split(",")[1:4])[:-1]  # epoch 2, cut inside its 4th cell
    metrics.write_text(metrics.read_text() + cut)  # no line break: a write cut short
    code, _, err = run(["report", run_dir], capsys)
    assert code == 0, err
    md = (run_dir / "report.md").read_text()
    assert "incomplete" in md and "| 2 |" not in md


def test_resume_recomputes_a_cut_off_row_the_checkpoint_does_not_hold(world, capsys,
                                                                      tmp_path, copy_run):
    run_dir = copy_run(world["run"], tmp_path)
    (run_dir / "last.pt").unlink()  # the checkpoint is older than the row (none at all)
    metrics = run_dir / "metrics.csv"
    metrics.write_text(metrics.read_text().rstrip("\r\n")[:-2])
    code, out, err = run(["train", "--resume", run_dir], capsys)
    assert code == 0, err
    assert "is incomplete" in out and "epoch 1 is trained again" in out
    rows = metrics.read_text().splitlines()
    assert len(rows) == 2 and metrics.read_text().endswith("\n")
    assert len(rows[1].split(",")) == len(rows[0].split(","))


def test_too_many_threads_are_lowered_with_a_note(world, capsys, tmp_path):
    cpus = len(os.sched_getaffinity(0))
    code, _, err = run(["train", world["tiny"], "train.threads=10000", "--out", tmp_path],
                       capsys)
    assert code == 0, err
    assert f"train.threads=10000 but this process may use {cpus} CPU" in err
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert "10000 thread" not in summary["device"]


def test_ray_address_with_nothing_listening_is_refused_at_once(world, capsys, monkeypatch):
    import socket
    import time

    from classlab.grid import ray_engine

    monkeypatch.setattr(ray_engine, "import_ray", lambda: None)  # Ray is never started
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        t = time.time()
        code, _, err = run(["grid", world["tiny"], "--engine", "ray", "--address",
                            f"127.0.0.1:{port}"], capsys)
    line = one_line(err)
    assert code == 2 and "no Ray cluster reachable" in line, line
    assert time.time() - t < 10


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_ctrl_c_says_what_this_command_can_do_next(command, capsys, monkeypatch):
    def stop(a):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, command, stop)
    argv = {"train": ["train", "x.yaml"], "runs": ["runs"], "table": ["table", "g"],
            "config": ["config"], "compare": ["compare", "a", "b"],
            "lr-find": ["lr-find"]}.get(command, [command, "x"])
    code, _, err = run(argv, capsys)
    line = one_line(err)
    assert code == 130 and "interrupted" in line, line
    assert ("train --resume" in line) == (command == "train"), line


def test_ctrl_c_while_report_loads_its_modules(world, capsys, monkeypatch):
    real = builtins.__import__

    def interrupted(name, *a, **k):
        if name == "classlab.report":
            raise KeyboardInterrupt
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    code, _, err = run(["report", world["run"]], capsys)
    line = one_line(err)
    assert code == 130 and "previous report is kept" in line, line
