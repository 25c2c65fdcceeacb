"""Cost of weight-update tracking: ``train_one_epoch`` with ``log.dynamics_every=N`` vs off.

Same model (weights reset before every pass), same uint8 data on the device, same batches;
passes alternate (off, on, on, off, ...) and the ratio of medians of CPU time (robust on a
shared machine with one thread) and wall time is printed. Goal: <= 1.03 at the default
interval (50 steps).

    .venv/bin/python bench/dynamics.py [--model resnet18 --width 16 --every 50 --steps 100]
"""

from __future__ import annotations

import argparse
import copy
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
from classlab.engine.dynamics import DynamicsLogger  # noqa: E402
from classlab.models import build_model  # noqa: E402
from classlab.optim import build_optimizer, build_scheduler  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps per pass")
    ap.add_argument("--every", type=int, default=50, help="log.dynamics_every")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n = a.batch * a.steps
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    model = build_model(ModelConfig(name=a.model, width=a.width), 10)
    init = copy.deepcopy(model.state_dict())
    normalize = Normalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    tmp = Path(tempfile.mkdtemp())

    def one_pass(every: int) -> None:
        model.load_state_dict(init)
        opt = build_optimizer(model, OptimConfig(name="adam"))
        stepper = build_scheduler(opt, SchedConfig(name="onecycle"), 1, a.steps)
        dyn = DynamicsLogger(model, tmp / f"d{every}.csv", every) if every else None
        plan = EpochPlan(model, StepRecipe(opt, Amp("cpu", "fp32"), dynamics=dyn), stepper,
                         normalize, lambda b, g: b, a.batch)
        train_one_epoch(plan, x, y, epoch_generator(1, 1, x.device), EpochStart(1),
                        progress=False)
        if dyn is not None:
            dyn.close()

    times = interleaved({"off": lambda: one_pass(0), "on": lambda: one_pass(a.every)},
                        a.repeats)
    print(machine_line())
    print(f"{a.model} width {a.width}, batch {a.batch}, {a.steps} steps per pass, "
          f"dynamics every {a.every} steps, {a.repeats} passes each")
    for k, i in (("CPU", 1), ("wall", 0)):
        off = median([t[i] for t in times["off"]])
        on = median([t[i] for t in times["on"]])
        print(f"{k:4s}: off {off:.2f} s, on {on:.2f} s, ratio on/off {on / off:.3f} "
              f"(goal <= 1.03)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
