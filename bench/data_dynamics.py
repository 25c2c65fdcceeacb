"""Cost of recording per-image training dynamics (``log.data_dynamics``): one epoch of
``train_one_epoch`` with the recorder vs without, same model (weights reset before every
pass), same uint8 data, same batches, in this process; passes alternate (off, on, on, off,
...) and the ratio of medians of CPU time (robust on a shared machine) and wall time is
printed. Goal: <= 1.03.

The "on" pass also pays everything recording costs once per epoch, at the size of a full
CIFAR-10 epoch whatever ``--steps`` is: gathering the epoch (``--images`` entries), turning
it into float16 rows, and writing data_dynamics.pt holding ``--epochs`` epochs of
``--images`` images. With fewer steps than a real epoch that charge weighs more than it would
in a real run: the ratio is an upper bound.

    .venv/bin/python bench/data_dynamics.py [--model fastnet --width 24 --batch 512 --steps 25]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine_line, median  # noqa: E402

from classlab.config import ModelConfig, OptimConfig, SchedConfig  # noqa: E402
from classlab.engine import (  # noqa: E402
    Amp,
    EpochPlan,
    EpochStart,
    Normalizer,
    StepRecipe,
    epoch_generator,
    train_one_epoch,
)
from classlab.engine.margins import ImageDynamics  # noqa: E402
from classlab.models import build_model  # noqa: E402
from classlab.optim import build_optimizer, build_scheduler  # noqa: E402
from classlab.rundir.datadyn import save_data_dynamics  # noqa: E402


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return " ".join(f"{k.strip()}: {fields[k].strip()}" for k in
                    ("Model name", "CPU family", "Model", "CPU(s)") if k in fields)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fastnet")
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=25, help="optimizer steps per pass")
    ap.add_argument("--images", type=int, default=50_000, help="recorded images per epoch")
    ap.add_argument("--epochs", type=int, default=8, help="epochs in data_dynamics.pt")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n = a.batch * a.steps
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    model = build_model(ModelConfig(name=a.model, width=a.width, norm="bn"), 10)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    init = copy.deepcopy(model.state_dict())
    normalize = Normalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu"), a.channels_last)
    tmp = Path(tempfile.mkdtemp())
    labels = torch.randint(0, 10, (a.images,))

    def one_pass(record: bool) -> None:
        model.load_state_dict(init)
        opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1))
        stepper = build_scheduler(opt, SchedConfig(name="none"), 1, a.steps)
        marks = ImageDynamics(a.images, torch.device("cpu")) if record else None
        if marks is not None:
            marks.load_history(None, a.epochs - 1)  # the file then holds --epochs epochs
        plan = EpochPlan(model, StepRecipe(opt, Amp("cpu", a.precision)), stepper, normalize,
                         lambda b, g: b, a.batch, margins=marks)
        train_one_epoch(plan, x, y, epoch_generator(1, 1, x.device), EpochStart(1),
                        progress=False)
        if marks is not None:
            marks.end_epoch()
            save_data_dynamics(tmp / "data_dynamics.pt",
                               marks.record(torch.arange(a.images), labels))

    one_pass(True)  # warm-up (allocations, first-call overheads), not timed
    load_before = os.getloadavg()
    times = interleaved({"off": lambda: one_pass(False), "on": lambda: one_pass(True)},
                        a.repeats)
    print(machine_line())
    print(f"lscpu: {_lscpu_model()}; load average before the timed passes "
          f"{'/'.join(f'{v:.2f}' for v in load_before)}")
    print(f"{a.model} width {a.width}, batch {a.batch}, {a.precision}"
          f"{' channels_last' if a.channels_last else ''}, {a.steps} steps per pass; recorder "
          f"and file sized for {a.images:,} images x {a.epochs} epochs "
          f"({(tmp / 'data_dynamics.pt').stat().st_size / 1e6:.1f} MB); {a.repeats} passes each")
    for k, i in (("CPU", 1), ("wall", 0)):
        off = median([t[i] for t in times["off"]])
        on = median([t[i] for t in times["on"]])
        print(f"{k:4s}: off {off:.2f} s, on {on:.2f} s, ratio on/off {on / off:.4f} "
              f"(goal <= 1.03)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
