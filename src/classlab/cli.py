"""Command line: ``classlab train | eval | diagnose | data-issues | report | runs | grid | table
| compare | schedule | lr-find | config | recipes | predict | export``.

Every user-facing failure (bad config, missing data, bad run folder, corrupt checkpoint) ends
as one line on stderr and a non-zero exit status: 2 for bad input, 1 for a run that failed,
143 / 130 for a run stopped by SIGTERM / Ctrl-C (after writing its checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import sys
from pathlib import Path

# Plots are written to files only; never try to open a window.
os.environ.setdefault("MPLBACKEND", "Agg")


def _add_data_out(p: argparse.ArgumentParser, out: bool = True) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data folder, as data.dir: holding cifar-10-batches-py or "
                   "cifar-10-batches-bin (cifar100: cifar-100-python or cifar-100-binary; "
                   "imagefolder: train/ and test/ class folders)")
    if out:
        p.add_argument("--out", type=Path, default=Path("runs"), help="where run folders go")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one run from a YAML config")
    p.add_argument("config", nargs="?", help="YAML config (omit with --resume)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--resume", type=Path, default=None, help="continue this run folder")
    p.add_argument("--epochs", type=int, default=None,
                   help="with --resume: train until this many epochs (extends a finished or "
                   "stopped run whose LR schedule allows it exactly: none, step, plateau)")
    p.add_argument("--nproc", type=int, default=None,
                   help="launch N processes with torchrun (DDP; one per GPU, or gloo on CPU)")
    _add_data_out(p)
    p.set_defaults(out=None)  # runs; told apart from an --out given with --resume


def _add_run_commands(sub) -> None:
    """eval, diagnose, report: commands on an existing run folder."""
    p = sub.add_parser("eval", help="re-evaluate a run's checkpoint on the test set")
    p.add_argument("run", type=Path)
    p.add_argument("--device", default=None)
    _add_data_out(p, out=False)

    p = sub.add_parser("diagnose", help="predictions, mistakes, confusion, CAMs, report")
    p.add_argument("run", type=Path)
    p.add_argument("--layers", default=None, help="comma-separated module names")
    p.add_argument("--method", default=None,
                   help="CAM method (see classlab config: diagnose.method), or all")
    p.add_argument("--count", type=int, default=None, help="misclassified images to show")
    p.add_argument("--target", default=None, choices=["pred", "true"])
    p.add_argument("--device", default=None)
    _add_data_out(p, out=False)

    p = sub.add_parser("data-issues", help="a run's suspected label errors (training set: "
                       "area under the margin; test set: confident learning): print, export")
    p.add_argument("run", type=Path)
    p.add_argument("--split", default=None, help="train or test (default: both)")
    p.add_argument("--top", type=int, default=None,
                   help="the N most doubtful (printed: 20 unless given; --out: all unless given)")
    p.add_argument("--out", type=Path, default=None,
                   help="also write them to this CSV (what data.exclude reads)")

    p = sub.add_parser("report", help="(re)build report.md and report.html of a run")
    p.add_argument("run", type=Path)

    p = sub.add_parser("runs", help="list the run folders under DIR, newest first")
    p.add_argument("dir", nargs="?", type=Path, default=Path("runs"),
                   help="folder holding run folders (default: runs)")


def _add_grid_commands(sub) -> None:
    p = sub.add_parser("grid", help="run every point of a grid file")
    p.add_argument("grid", type=Path)
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides for every point")
    p.add_argument("--jobs", type=int, default=1, help="points run at once (--engine local)")
    p.add_argument("--engine", default="local",
                   help="local (this machine; default) or ray (a Ray cluster: "
                   "pip install 'classlab[ray]')")
    p.add_argument("--address", default=None,
                   help="--engine ray: the cluster, auto or HOST:PORT (default: RAY_ADDRESS, "
                   "else a new local one)")
    p.add_argument("--print-commands", action="store_true",
                   help="print one self-contained shell line per point and exit")
    p.add_argument("--grid-dir", type=Path, default=None,
                   help="grid folder (default: <out>/<grid file name>)")
    _add_data_out(p)

    p = sub.add_parser("table", help="tabulate the finished runs of a grid folder")
    p.add_argument("grid_dir", type=Path)

    p = sub.add_parser("compare", help="one report comparing two or more runs (or grid "
                       "points): config differences, paired test, curves, disagreements")
    p.add_argument("runs", type=Path, nargs="*", metavar="RUN")
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default: next to the first run, compare-A-vs-B)")
    p.add_argument("--evaluate", action="store_true",
                   help="score runs without stored test outputs now (loads their data)")
    _add_data_out(p, out=False)


def _add_tools(sub) -> None:
    """schedule, lr-find, config: nothing is trained or kept."""
    p = sub.add_parser("schedule", help="print and plot the LR of every step, without training")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--train-images", type=int, default=None,
                   help="training images per epoch (default: from the config's dataset)")
    p.add_argument("--plot", type=Path, default=Path("schedule.png"),
                   help="plot file (.png; an existing file that is not a PNG is refused)")
    p.add_argument("--force", action="store_true", help="replace --plot whatever it holds")
    _add_data_out(p, out=False)

    p = sub.add_parser("lr-find", help="LR range test: train briefly with an exponentially "
                       "growing LR, plot the loss and suggest an LR (nothing is kept)")
    p.add_argument("config", nargs="?", help="YAML config (optional: overrides only)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="first LR (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last LR (default 10)")
    p.add_argument("--plot", type=Path, default=Path("lr_find.png"),
                   help="plot file (.png); the per-step values go next to it as .csv "
                   "(existing files this command did not write are refused)")
    p.add_argument("--force", action="store_true",
                   help="replace --plot and its .csv whatever they hold")
    _add_data_out(p, out=False)

    p = sub.add_parser("config", help="print the config reference, or a resolved config")
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")

    p = sub.add_parser("recipes", help="the shipped configs and grids, trained by name "
                       "(classlab train fast, classlab grid spec): list, show or copy one")
    p.add_argument("action", nargs="?", default="list", help="list (default), show or copy")
    p.add_argument("name", nargs="?", help="show, copy: the recipe")
    p.add_argument("dest", nargs="?", type=Path,
                   help="copy: the file (or folder) to write (default ./NAME.yaml)")
    p.add_argument("--force", action="store_true", help="copy: replace an existing file")


def _add_use(sub) -> None:
    """predict, export: the trained model outside its run."""
    p = sub.add_parser("predict", help="the run's model on your own pictures: top classes "
                       "with probabilities, a table and a CSV")
    p.add_argument("run", type=Path)
    p.add_argument("paths", nargs="*", metavar="PATH", help="pictures and folders of pictures")
    p.add_argument("--top", type=int, default=3, help="classes shown per picture (default 3)")
    p.add_argument("--out", type=Path, default=None, help="CSV file (default predict.csv)")
    p.add_argument("--cam", default=None, metavar="METHOD",
                   help="also write a class-activation overlay per picture (e.g. gradcam)")
    p.add_argument("--device", default=None)

    p = sub.add_parser("export", help="the run's model as one ONNX or TorchScript file (raw "
                       "RGB in [0, 1] in, logits out), checked against classlab")
    p.add_argument("run", type=Path)
    p.add_argument("--format", default="onnx", help="onnx (needs classlab[export]) or "
                   "torchscript")
    p.add_argument("--out", type=Path, default=None,
                   help="file (default: RUN/model.onnx or RUN/model.pt)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="classlab", description="Train CIFAR-10-sized classifiers "
                                 "from YAML and look inside them.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_run_commands(sub)
    _add_grid_commands(sub)
    _add_tools(sub)
    _add_use(sub)
    return ap


# --------------------------------------------------------------------------- commands


def _launch_torchrun(nproc: int, argv: list[str]) -> int:
    """``classlab train --nproc N ...`` is ``torchrun --nproc_per_node=N -m classlab train ...``."""
    import subprocess

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "classlab", *rest]
    return subprocess.call(cmd)


def _check_before_launch(a: argparse.Namespace) -> None:
    from classlab import config
    from classlab.run.checks import check_environment
    from classlab.rundir import RunFiles, run_folder

    if a.resume is not None:
        cfg = config.load(RunFiles(run_folder(a.resume)).config)
    else:
        overrides = _config_and_overrides(a)  # first: it may move a.config into them
        cfg = config.load(a.config, overrides)
    check_environment(cfg)


def cmd_train(a: argparse.Namespace) -> int:
    if a.nproc is not None and a.nproc < 1:
        from classlab.config import ConfigError

        raise ConfigError(f"--nproc: {a.nproc} is out of range; must be ≥ 1")
    if a.nproc is not None and a.nproc > 1 and "WORLD_SIZE" not in os.environ:
        _check_before_launch(a)  # one line here, not one per process under torchrun
        return _launch_torchrun(a.nproc, a.argv)
    try:
        return _train(a)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _config_and_overrides(a: argparse.Namespace) -> list[str]:
    """Overrides, with a first positional ``key=value`` that is not a file moved into them."""
    overrides = list(a.overrides)
    if a.config and "=" in a.config and not Path(a.config).exists():
        overrides.insert(0, a.config)
        a.config = None
    return overrides


def _train(a: argparse.Namespace) -> int:
    from classlab import config
    from classlab.run.flow import train_run

    overrides = _config_and_overrides(a)
    if a.resume is not None:
        if a.config or overrides:
            raise config.ConfigError("--resume continues a run with its own config.yaml; "
                                     "drop the config file and overrides")
        if a.out is not None:
            raise config.ConfigError(f"--out: --resume continues {a.resume} in its own "
                                     "folder; drop --out")
        train_run(run_dir=a.resume, data_root=a.data_dir, epochs=a.epochs)
    elif a.epochs is not None:
        raise config.ConfigError("--epochs extends a run: use it with --resume RUN (a new "
                                 "run takes train.epochs=N)")
    else:
        train_run(config.load(a.config, overrides), out=a.out or Path("runs"),
                  data_root=a.data_dir)
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from classlab.run.session import session_from_run

    s, state = session_from_run(a.run, a.data_dir, a.device)  # last.pt is enough
    res = s.evaluate("test")
    print(f"Test set: Average loss: {res.loss:.4f}, Accuracy: {round(res.acc * res.n / 100)}/"
          f"{res.n} ({res.acc:.2f}%)  [checkpoint epoch {state['epoch']}]")
    return 0


def cmd_diagnose(a: argparse.Namespace) -> int:
    from classlab.run.flow import diagnose_and_report

    layers = [x for x in a.layers.split(",") if x] if a.layers else None
    diagnose_and_report(a.run, data_root=a.data_dir, layers=layers, method=a.method,
                        count=a.count, target=a.target, device=a.device)
    return 0


def cmd_data_issues(a: argparse.Namespace) -> int:
    from classlab.diagnose.labelissues import main_data_issues

    return main_data_issues(a.run, a.split, a.top, a.out)


def cmd_predict(a: argparse.Namespace) -> int:
    from classlab.tools.predict import main_predict

    return main_predict(a.run, a.paths, top=a.top, out=a.out, cam=a.cam, device=a.device)


def cmd_export(a: argparse.Namespace) -> int:
    from classlab.tools.export import main_export

    return main_export(a.run, a.format, a.out)


def cmd_runs(a: argparse.Namespace) -> int:
    from classlab.rundir import RunDirError
    from classlab.rundir.listing import describe, format_table, run_folders

    if not a.dir.is_dir():
        raise RunDirError(f"{a.dir}: no such folder")
    folders = run_folders(a.dir)
    if not folders:
        print(f"no run folders in {a.dir}")
        return 0
    print(format_table([describe(f) for f in folders]))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from classlab.report import build_report

    md, html = build_report(a.run)
    print(f"Report: {md} and {html}")
    return 0


def cmd_grid(a: argparse.Namespace) -> int:
    from classlab import grid

    return grid.main_grid(a.grid, a.overrides, out=a.out, data_dir=a.data_dir, jobs=a.jobs,
                          print_commands=a.print_commands, grid_dir=a.grid_dir,
                          engine=a.engine, address=a.address)


def cmd_table(a: argparse.Namespace) -> int:
    from classlab import grid

    return grid.main_table(a.grid_dir)


def cmd_compare(a: argparse.Namespace) -> int:
    from classlab.compare.report import compare_runs

    md, html = compare_runs(a.runs, out=a.out, evaluate=a.evaluate, data_root=a.data_dir)
    print(f"Compare: {md} and {html}")
    return 0


def cmd_schedule(a: argparse.Namespace) -> int:
    from classlab import config
    from classlab.tools.schedule import main_schedule

    cfg = config.load(a.config, a.overrides)
    return main_schedule(cfg, a.train_images, a.plot, a.data_dir, force=a.force)


def cmd_lr_find(a: argparse.Namespace) -> int:
    from classlab import config
    from classlab.tools.lr_find import main_lr_find

    overrides = _config_and_overrides(a)
    cfg = config.load(a.config, overrides)
    return main_lr_find(cfg, a.data_dir, steps=a.steps, start_lr=a.start_lr,
                        end_lr=a.end_lr, plot=a.plot, force=a.force)


def cmd_config(a: argparse.Namespace) -> int:
    from classlab import config
    from classlab.run.checks import check_environment

    if a.config is None and not a.overrides:
        print(config.reference())
    else:  # `classlab config train.epochs=3`: the defaults with overrides, as train takes it
        overrides = _config_and_overrides(a)  # first: it may move a.config into them
        cfg = config.load(a.config, overrides)
        check_environment(cfg)  # what `classlab train` would refuse, refused here too
        print(config.dump(cfg), end="")
    return 0


def cmd_recipes(a: argparse.Namespace) -> int:
    from classlab.config import ConfigError, recipes

    actions = ("list", "show", "copy")
    if a.action not in actions:
        raise ConfigError(f"recipes: unknown action {a.action!r}; allowed: {', '.join(actions)}")
    if a.action == "list":
        if a.name is not None:
            raise ConfigError("recipes list takes no name; classlab recipes show NAME prints one")
        found = recipes.recipes()
        width = max(len(r.label) for r in found)
        print(f"{'name':<{width}}  kind  what it trains | what to expect [where measured]")
        for r in found:
            print(r.line(width))
        print("train one: classlab train NAME (a grid: classlab grid NAME); "
              "edit one: classlab recipes copy NAME [FILE]")
        return 0
    if a.name is None:
        raise ConfigError(f"recipes {a.action}: give a recipe name; recipes: "
                          f"{', '.join(recipes.names())}")
    if a.action == "show":
        r = recipes.find(a.name)
        if r is None:
            raise ConfigError(f"recipes show: no recipe {a.name!r}; recipes: "
                              f"{', '.join(recipes.names())}")
        print(r.path.read_text(encoding="utf-8"), end="")
        return 0
    out = recipes.copy(a.name, a.dest, force=a.force)
    kind = recipes.find(a.name).kind
    print(f"Wrote {out} (recipe {a.name}); edit it, then: "
          f"classlab {'grid' if kind == 'grid' else 'train'} {out}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "diagnose": cmd_diagnose,
            "report": cmd_report, "runs": cmd_runs, "grid": cmd_grid, "table": cmd_table,
            "compare": cmd_compare, "data-issues": cmd_data_issues,
            "predict": cmd_predict, "export": cmd_export,
            "schedule": cmd_schedule, "lr-find": cmd_lr_find, "config": cmd_config,
            "recipes": cmd_recipes}


# Exceptions that mean "bad input" (one line, exit 2) and "the run failed" (one line, exit
# 1), by defining module: an instance of one can only exist once its module is imported, so
# telling them apart imports nothing (a Ctrl-C while torch or matplotlib load stays a Ctrl-C).
_USER_ERRORS = (("classlab.config.errors", "ConfigError"), ("classlab.data.base", "DataError"),
                ("classlab.rundir.checkpoint", "CheckpointError"),
                ("classlab.rundir.files", "RunDirError"), ("classlab.diagnose.cams",
                                                           "DiagnoseError"),
                ("classlab.compare.paired", "CompareError"))
_RUN_ERRORS = (("classlab.engine.errors", "TrainingError"),)


def _loaded(names: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[m], n) for m, n in names if m in sys.modules)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input": shown as one line, exit status 2."""
    return _loaded(_USER_ERRORS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    # Overrides may come after options (`classlab train cfg.yaml --out r train.epochs=2`);
    # argparse stops collecting a positional list at the first option, so gather the rest.
    args, extra = parser.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except (KeyboardInterrupt, Exception) as e:  # SystemExit passes
        return _failed(args.command, e)


def _say(command: str, text: str) -> None:
    """One line on stderr, whatever the message holds."""
    print(f"classlab {command}: {' '.join(str(text).split())}", file=sys.stderr, flush=True)


def _failed(command: str, e: BaseException) -> int:
    """The exit status of a command that raised ``e``, after its one line; an exception
    that is none of these is a bug in classlab and keeps its traceback."""
    if isinstance(e, KeyboardInterrupt):
        return _interrupted(command, e)
    if isinstance(e, _user_errors()):
        cause = e.__cause__ or e.__context__  # a place that cannot be written: say where to
        advice = f"; {_WRITABLE.get(command, _FOLDER_ADVICE)}" if isinstance(cause, OSError) \
            and cause.errno in (errno.EROFS, errno.EACCES, errno.EPERM) \
            and "writable" not in str(e) else ""
        _say(command, f"error: {e}{advice}")
        return 2
    if isinstance(e, _loaded(_RUN_ERRORS)):
        _say(command, f"training stopped: {e}")
        return 1
    if isinstance(e, OSError):
        return _os_error(command, e)
    if _out_of_memory(e):
        _say(command, f"error: out of memory ({_first_line(e)}); lower train.batch_size (and "
                      "train.eval_batch_size), or free memory on the device")
        return 1
    raise e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def _out_of_memory(e: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError, or an allocator's RuntimeError."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
        isinstance(e, RuntimeError) and any(k in text for k in (
            "out of memory", "can't allocate memory", "cannot allocate memory",
            "defaultcpuallocator")))


_WRITABLE = {"train": "pass --out with a writable folder (to resume: copy the run folder "
                      "somewhere writable and resume the copy)",
             "grid": "pass --out or --grid-dir with a writable folder",
             "compare": "pass --out with a writable folder",
             "schedule": "pass --plot with a writable path",
             "lr-find": "pass --plot with a writable path",
             "table": "copy the grid folder somewhere writable and run table there"}
_FOLDER_ADVICE = "copy the run folder somewhere writable and run the command on the copy"
_TEMP = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}\.(tmp|bak)$")  # atomic writes' temporary names


def _os_error(command: str, e: OSError) -> int:
    """A file the command could not read or write: one line naming it and what to do. A
    full disk or quota is exit 1 (the previous complete files are kept); a read-only or
    forbidden place, or a name too long, is exit 2 (bad input)."""
    if isinstance(e, BrokenPipeError):  # `classlab config | head`: the reader has gone
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        return 141  # 128 + SIGPIPE, as a shell tool killed by it
    where = e.filename if e.filename is not None else e.filename2
    path = Path(where) if where is not None else None
    if path is not None and (m := _TEMP.match(path.name)):
        path = path.with_name(m.group(1))  # the file being written, not its temporary
    what = e.strerror or _first_line(e)
    named = f"{path}: {what}" if path is not None else what
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        _say(command, f"error: {named}; free some space and rerun (the previous complete "
                      "files are kept)")
        return 1
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        _say(command, f"error: {named} (a read-only or protected place); "
                      f"{_WRITABLE.get(command, _FOLDER_ADVICE)}")
        return 2
    if e.errno == errno.ENAMETOOLONG:
        _say(command, f"error: {named}; use a shorter name or path")
        return 2
    _say(command, f"error: {named}")
    return 1


_NEXT = {"train": "continue with: classlab train --resume RUN_FOLDER, if the run folder was "
                  "made; else rerun the same command",
         "grid": "continue with: rerun the same command",
         "diagnose": "the previous diagnose files and report are kept; rerun the same command",
         "report": "the previous report is kept; rerun the same command",
         "compare": "the previous compare report is kept; rerun the same command",
         "table": "the previous table is kept; rerun the same command",
         "lr-find": "nothing is kept; rerun the same command"}
_NOTHING_WRITTEN = "nothing was written; rerun the same command"


def _interrupted(command: str, e: KeyboardInterrupt) -> int:
    """One line and 128 + the signal: 143 for SIGTERM, 130 for Ctrl-C. A run stopped after
    writing its checkpoint (RunInterrupted) says where and how to continue; anything else
    says what this command can do next."""
    code = getattr(e, "exit_code", 130)
    if getattr(e, "silent", False):
        return code
    if str(e) and command != "grid":
        _say(command, str(e))
    else:
        _say(command, f"interrupted ({_NEXT.get(command, _NOTHING_WRITTEN)})")
    return code


if __name__ == "__main__":
    sys.exit(main())
