"""Time-to-accuracy of the fast recipe on real CIFAR-10, end to end through the CLI.

For each seed this launches ``classlab train CONFIG [overrides] train.seed=S`` as a fresh
process, stamps every "Epoch N:" line with the wall seconds since that process was launched
(imports, data loading, the whitening init and every per-epoch evaluation included), then
reads the run's metrics.csv and prints test accuracy per epoch. The summary gives the mean
final-epoch test accuracy over seeds (the issue's criterion) and the mean total wall time.

Overrides are passed on, e.g. ``train.eval_every=1`` to score the test set after every
epoch (fast.yaml scores it only after the last one).

``--phases`` instead times the parts of one run in-process (data load, model build and
whitening init, training steps extrapolated to an epoch, evaluation per TTA mode), to show
where the seconds go. ``--tta RUN_DIR`` re-evaluates a finished run's final weights with
every TTA mode (accuracy and seconds each), to price test-time augmentation.

    .venv/bin/python bench/fast_recipe.py --data-dir ../shared/data --seeds 0,1,2
    .venv/bin/python bench/fast_recipe.py --data-dir ../shared/data --phases
    .venv/bin/python bench/fast_recipe.py --data-dir ../shared/data --tta /tmp/fast_runs/RUN
"""

from __future__ import annotations

import argparse
import csv
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load1, machine_line  # noqa: E402

from classlab.engine import evaluate
from classlab.run.session import session_from_run

ROOT = Path(__file__).resolve().parents[1]


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    exe = Path(sys.executable).with_name("classlab")
    cmd = [str(exe), "train", args.config, *args.overrides, f"train.seed={seed}",
           "--data-dir", args.data_dir, "--out", args.out]
    load_start = load1()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    stamps: dict[int, float] = {}
    run_dir = None
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter() - t0
        if line.startswith("Run folder:"):
            run_dir = Path(line.split(":", 1)[1].strip())
        elif line.startswith("Epoch ") and ":" in line:
            stamps[int(line.split()[1].rstrip(":"))] = now
        if args.verbose:
            print(f"  [{now:7.1f}s] {line.rstrip()}", flush=True)
    rc = proc.wait()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if rc != 0 or run_dir is None:
        raise SystemExit(f"seed {seed}: classlab train failed (exit {rc}): {' '.join(cmd)}")
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"seed": seed, "rows": rows, "stamps": stamps, "wall": wall, "run_dir": run_dir,
            "load": (load_start, load1()), "cpu": cpu}


def report_seed(r: dict) -> None:
    print(f"seed {r['seed']}: {r['run_dir']}  (1-min load {r['load'][0]:.2f} at start, "
          f"{r['load'][1]:.2f} at end)")
    print(f"  {'epoch':>5s} {'test acc %':>10s} {'epoch s':>8s} {'wall s since launch':>20s}")
    for row in r["rows"]:
        e = int(row["epoch"])
        acc = float(row["test_acc"]) if row["test_acc"] else float("nan")
        print(f"  {e:5d} {acc:10.2f} {float(row['seconds']):8.1f} "
              f"{r['stamps'].get(e, float('nan')):20.1f}")
    first = int(r["rows"][0]["epoch"])
    startup = r["stamps"][first] - float(r["rows"][0]["seconds"])
    print(f"  startup before epoch 1 (imports, data, init): {startup:.1f} s; total wall "
          f"{r['wall']:.1f} s (CPU {r['cpu']:.0f} s user+sys); final test acc "
          f"{float(r['rows'][-1]['test_acc']):.2f}%")


class _Clock:
    """Wall and CPU seconds since construction (CPU: this process, all threads)."""

    def __init__(self) -> None:
        self.t, self.c = time.perf_counter(), time.process_time()

    def lap(self, scale: float = 1.0) -> tuple[float, float]:
        return (scale * (time.perf_counter() - self.t), scale * (time.process_time() - self.c))


def phases(args: argparse.Namespace) -> None:
    """Time the parts of one run in-process (steps extrapolated to an epoch). Wall and CPU
    seconds are both printed: on a shared machine, with train.threads=1, the CPU seconds are
    what the phase costs and the wall seconds what it took under the current load."""
    clk = _Clock()
    import torch

    from classlab import config
    from classlab.augment import augment
    from classlab.data import load_splits
    from classlab.engine import (
        EpochPlan,
        EpochStart,
        StepRecipe,
        epoch_generator,
        evaluate,
        train_one_epoch,
    )
    from classlab.models import build_model
    from classlab.run.session import build_session

    t_import = clk.lap()
    cfg = config.load(ROOT / args.config if not Path(args.config).is_absolute()
                      else args.config, args.overrides)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    clk = _Clock()
    splits = load_splits(cfg.data, Path(args.data_dir))
    t_data = clk.lap()
    clk = _Clock()
    s = build_session(cfg, splits=splits)  # includes build + init_from_data
    t_session = clk.lap()
    model = build_model(cfg.model, 10)
    x5k = s.normalize(splits.train_x[:5000])
    clk = _Clock()
    if hasattr(model, "init_from_data"):
        model.init_from_data(x5k)
    t_init = clk.lap()
    xs, ys = s.data["train"]
    n = min(args.phase_images, len(xs))
    gen = epoch_generator(cfg.train.seed, 1, s.device)
    aug = (lambda xb, g: augment(xb, g, cfg.aug)) if cfg.aug.ops else (lambda xb, g: xb)
    plan = EpochPlan(s.model, StepRecipe(s.optimizer, s.amp, cfg.train.label_smoothing),
                     s.stepper, s.normalize, aug, cfg.train.batch_size, s.ema)
    b2 = cfg.train.batch_size * 2
    train_one_epoch(plan, xs[:b2], ys[:b2], gen, EpochStart(1), progress=False)  # warm-up
    clk = _Clock()
    train_one_epoch(plan, xs[:n], ys[:n], gen, EpochStart(1), progress=False)
    t_train = clk.lap(len(xs) / n)
    clk = _Clock()
    for idx in torch.arange(n).split(cfg.train.batch_size):
        aug(s.normalize(xs[idx]), gen)
    t_aug = clk.lap(len(xs) / n)
    xt, yt = s.data["test"]
    evals = {}
    for tta in ("none", "flip", "flip_translate"):
        clk = _Clock()
        evaluate(s.eval_model, xt, yt, normalize=s.normalize,
                 batch_size=cfg.train.eval_batch_size, amp=s.amp, tta=tta)
        evals[tta] = clk.lap()
    e = cfg.train.epochs
    print(f"phases of {args.config} ({cfg.model.name} width {cfg.model.width}, batch "
          f"{cfg.train.batch_size}, {len(xs)} train images, {torch.get_num_threads()} threads)")
    print(f"  {'phase':42s} {'wall s':>8s} {'CPU s':>8s}")

    def line(name: str, t: tuple[float, float]) -> None:
        print(f"  {name:42s} {t[0]:8.1f} {t[1]:8.1f}")

    line("import torch + classlab", t_import)
    line("load CIFAR-10 (md5 check + decode)", t_data)
    line("build session (model, init, optimizer)", t_session)
    line("  of which whitening init_from_data", t_init)
    line(f"train one epoch (extrapolated from {n})", t_train)
    line("  of which normalise + augment", t_aug)
    for tta, t in evals.items():
        line(f"eval 10k test, tta={tta}", t)
    for i, what in ((0, "wall"), (1, "CPU")):
        fixed = t_import[i] + t_data[i] + t_session[i]
        every = fixed + e * (t_train[i] + evals[cfg.train.tta][i])
        last = fixed + e * t_train[i] + evals["flip_translate"][i]
        print(f"  => {what}: {every:.0f} s for {e} epochs with tta={cfg.train.tta} after every "
              f"epoch; {last:.0f} s evaluating (tta=flip_translate) only after the last")


def tta_table(args: argparse.Namespace) -> None:
    """Accuracy and time of each TTA mode on a finished run's evaluated (EMA) weights, and of
    flip_translate on only the least confident fraction of each batch (train.tta_fraction).
    Two interleaved rounds; the faster time of each mode is printed (load only adds time),
    with its ratio to scoring every image with all 6 views."""
    s, state = session_from_run(Path(args.tta), Path(args.data_dir))
    xt, yt = s.data["test"]
    print(f"{args.tta} (epoch {state['epoch']}, {s.cfg.model.name} width {s.cfg.model.width})")
    modes = [("none", 1.0), ("flip", 1.0), ("flip_translate", 1.0),
             *(("flip_translate", f) for f in (0.5, 0.25, 0.15, 0.05))]
    best: dict[tuple[str, float], tuple[float, float]] = {}
    for _ in range(2):
        for tta, frac in modes:
            t = time.perf_counter()
            res = evaluate(s.eval_model, xt, yt, normalize=s.normalize,
                           batch_size=s.cfg.train.eval_batch_size, amp=s.amp, tta=tta,
                           tta_fraction=frac)
            sec = time.perf_counter() - t
            best[tta, frac] = (res.acc, min(sec, best.get((tta, frac), (0, sec))[1]))
    full = best["flip_translate", 1.0][1]
    for (tta, frac), (acc, sec) in best.items():
        print(f"  tta={tta:15s} fraction {frac:4.2f}  test acc {acc:6.2f}%  {sec:6.1f} s "
              f"({sec / full:4.2f}x all 6 views)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides for the config")
    ap.add_argument("--config", default="experiments/fast.yaml")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default="/tmp/fast_runs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--phases", action="store_true", help="time the parts of one run instead")
    ap.add_argument("--phase-images", type=int, default=5120,
                    help="--phases: training images timed, extrapolated to the epoch")
    ap.add_argument("--tta", metavar="RUN_DIR", help="price TTA on a finished run instead")
    ap.add_argument("-v", "--verbose", action="store_true", help="echo the runs' output")
    args = ap.parse_args()
    print(machine_line())
    if args.phases:
        phases(args)
        return 0
    if args.tta:
        tta_table(args)
        return 0
    results = []
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        r = run_seed(args, seed)
        report_seed(r)
        results.append(r)
    finals = [float(r["rows"][-1]["test_acc"]) for r in results]
    walls = [r["wall"] for r in results]
    sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
    print(f"summary {args.config} {' '.join(args.overrides)}: final-epoch test acc mean "
          f"{statistics.mean(finals):.2f}% (sd {sd:.2f}, seeds {args.seeds}: "
          f"{', '.join(f'{a:.2f}' for a in finals)}); wall mean {statistics.mean(walls):.0f} s, "
          f"max {max(walls):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
