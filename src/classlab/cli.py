"""Command line: ``classlab train | eval | diagnose | report | runs | grid | table | compare
| schedule | lr-find | config``.

Every user-facing failure (bad config, missing data, bad run folder, corrupt checkpoint) ends
as one line on stderr and a non-zero exit status: 2 for bad input, 1 for a run that failed,
143 / 130 for a run stopped by SIGTERM / Ctrl-C (after writing its checkpoint).
"""

from __future__ import annotations

import argparse
import os
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
    p.add_argument("--nproc", type=int, default=0,
                   help="launch N processes with torchrun (DDP; one per GPU, or gloo on CPU)")
    _add_data_out(p)


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
    p.add_argument("--plot", type=Path, default=Path("schedule.png"))
    _add_data_out(p, out=False)

    p = sub.add_parser("lr-find", help="LR range test: train briefly with an exponentially "
                       "growing LR, plot the loss and suggest an LR (nothing is kept)")
    p.add_argument("config", nargs="?", help="YAML config (optional: overrides only)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="first LR (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last LR (default 10)")
    p.add_argument("--plot", type=Path, default=Path("lr_find.png"),
                   help="plot file; the per-step values go next to it as .csv")
    _add_data_out(p, out=False)

    p = sub.add_parser("config", help="print the config reference, or a resolved config")
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="classlab", description="Train CIFAR-10-sized classifiers "
                                 "from YAML and look inside them.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_run_commands(sub)
    _add_grid_commands(sub)
    _add_tools(sub)
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


def cmd_train(a: argparse.Namespace) -> int:
    if a.nproc > 1 and "WORLD_SIZE" not in os.environ:
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
        train_run(run_dir=a.resume, data_root=a.data_dir)
    else:
        train_run(config.load(a.config, overrides), out=a.out, data_root=a.data_dir)
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
    return main_schedule(cfg, a.train_images, a.plot, a.data_dir)


def cmd_lr_find(a: argparse.Namespace) -> int:
    from classlab import config
    from classlab.tools.lr_find import main_lr_find

    overrides = _config_and_overrides(a)
    cfg = config.load(a.config, overrides)
    return main_lr_find(cfg, a.data_dir, steps=a.steps, start_lr=a.start_lr,
                                end_lr=a.end_lr, plot=a.plot)


def cmd_config(a: argparse.Namespace) -> int:
    from classlab import config
    from classlab.run.checks import check_environment

    if a.config is None and not a.overrides:
        print(config.reference())
    else:
        cfg = config.load(a.config, a.overrides)
        check_environment(cfg)  # what `classlab train` would refuse, refused here too
        print(config.dump(cfg), end="")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "diagnose": cmd_diagnose,
            "report": cmd_report, "runs": cmd_runs, "grid": cmd_grid, "table": cmd_table,
            "compare": cmd_compare,
            "schedule": cmd_schedule, "lr-find": cmd_lr_find, "config": cmd_config}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input": shown as one line, exit status 2."""
    from classlab.compare.paired import CompareError
    from classlab.config import ConfigError
    from classlab.data import DataError
    from classlab.diagnose import DiagnoseError
    from classlab.rundir import RunDirError
    from classlab.rundir.checkpoint import CheckpointError

    return ConfigError, DataError, CheckpointError, RunDirError, DiagnoseError, CompareError


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
    from classlab.engine import TrainingError

    try:
        return COMMANDS[args.command](args)
    except _user_errors() as e:
        print(f"classlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"classlab {args.command}: training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        return _interrupted(args.command, e)


def _interrupted(command: str, e: KeyboardInterrupt) -> int:
    """One line and 128 + the signal: 143 for SIGTERM, 130 for Ctrl-C. A run stopped after
    writing its checkpoint (RunInterrupted) says where and how to continue."""
    code = getattr(e, "exit_code", 130)
    if getattr(e, "silent", False):
        return code
    if command == "grid":
        print("classlab grid: interrupted (continue with: rerun the same command)",
              file=sys.stderr)
    elif str(e):
        print(f"classlab {command}: {e}", file=sys.stderr)
    else:
        print(f"classlab {command}: interrupted (continue with: classlab train --resume)",
              file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
