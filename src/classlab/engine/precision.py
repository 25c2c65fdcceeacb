"""A run's precision and memory format: what the config fixes, else what is fastest here.

``train.precision`` / ``train.channels_last`` set to a value are used as they are. ``auto``:

- on CUDA the precision is bf16 where the card supports it, else fp16 with a gradient scaler
  (T4, V100: no bf16, and fp16 tensor cores beat fp32 there);
- on CPU it is measured (:mod:`classlab.engine.probe`): fp32 vs bf16 autocast, and the memory
  format (contiguous vs channels_last) on every device.

A measured decision is cached in the user cache folder (``$CLASSLAB_CACHE``, else
``$XDG_CACHE_HOME/classlab``, else ``~/.cache/classlab``; file ``speed.json``), keyed by what
decides the speed: CPU model and its vector/matrix flags, torch version, device, threads,
model, norm, width, per-process batch and image shape. A grid probes once per distinct model
and batch; a new torch version measures again (its entries replace the old version's).
Delete the file to measure again. A resumed, evaluated or diagnosed run uses the choice its
run folder recorded (summary.json ``speed``), so its numerics stay those it trained with.

``train.compile: auto`` is decided here too, after the precision and layout (it is measured in
them): :mod:`classlab.engine.compiling` says how, and its measurements share the cache file.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from classlab.config import Config
from classlab.engine import compiling
from classlab.engine.batches import steps_per_epoch
from classlab.engine.compiling import (
    CompileChoice,
    batch_shapes,
    bound,
    configured,
    decide,
    measure,
)
from classlab.engine.distributed import Dist
from classlab.engine.probe import (
    Candidate,
    StepMaker,
    Timer,
    TrainSample,
    isolated,
    probe,
    training_step_maker,
    wall_timer,
)
from classlab.optim import build_optimizer
from classlab.rundir import write_json

CACHE_VERSION = 1
# torch 2.13's CPU convolutions in channels_last crashed the process (segfault / heap
# corruption) for 4- and 8-channel layers at odd batch sizes with 2 threads (resnet18 width
# 4 and 8 at batch 3, 5, 7, ...; width 16 and 64 did not): ``auto`` does not try the layout
# on models that narrow.
NARROW_CHANNELS_LAST = 16
# /proc/cpuinfo flags that decide which kernels oneDNN can use for fp32 / bf16 / fp16
_SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16",
                "amx_tile")


@dataclass
class Speed:
    """How a run trains and evaluates: autocast precision and memory format, and why."""

    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    how: str  # config | cuda | probe | cache | recorded
    why: str  # one sentence for the run's first lines and the report
    rates: dict[str, float] = field(default_factory=dict)  # candidate -> images/s measured
    probe_seconds: float = 0.0
    # train.compile and why (None only in a run folder's record from before train.compile:
    # auto existed, and in a Speed being built)
    compile: CompileChoice | None = None

    @property
    def name(self) -> str:
        return Candidate(self.precision, self.channels_last).name

    @property
    def compiled(self) -> bool:
        return self.compile is not None and self.compile.use

    def line(self) -> str:
        tail = f"; {self.compile.line()}" if self.compile is not None else ""
        return f"Speed: {self.name} ({self.why}){tail}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Speed:
        comp = d.get("compile")
        return cls(str(d["precision"]), bool(d["channels_last"]), str(d.get("how", "recorded")),
                   str(d.get("why", "")), {str(k): float(v) for k, v in d.get("rates", {}).items()},
                   float(d.get("probe_seconds", 0.0)),
                   CompileChoice.from_dict(comp) if isinstance(comp, dict) else None)


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """E.g. "AMD EPYC" (Linux names the model in /proc/cpuinfo; platform.processor() is often
    empty there)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Those of :data:`_SPEED_FLAGS` this CPU has (empty where /proc/cpuinfo is absent)."""
    have = set(_cpuinfo("flags").split())
    return [f for f in _SPEED_FLAGS if f in have]


def _cpuinfo(field_name: str) -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field_name:
                    return line.split(":", 1)[1].strip()
    return ""


def cache_file() -> Path:
    root = os.environ.get("CLASSLAB_CACHE") or ""
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or ""
        root = str(Path(xdg) / "classlab") if xdg else str(Path.home() / ".cache" / "classlab")
    return Path(root).expanduser() / "speed.json"


# --------------------------------------------------------------------------- candidates


def _precisions(cfg: Config, device: torch.device) -> tuple[list[str], str]:
    """The precisions to consider, and why when the rule (not a measurement) decides."""
    if cfg.train.precision != "auto":
        return [cfg.train.precision], "train.precision"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return ["bf16"], "auto on CUDA: this card supports bfloat16"
        return ["fp16"], ("auto on CUDA: this card has no bfloat16 support, so float16 "
                          "autocast with a gradient scaler")
    if device.type == "cpu":
        return ["fp32", "bf16"], ""
    return ["fp32"], f"auto on {device.type}: fp32"


def candidates(cfg: Config, device: torch.device) -> tuple[list[Candidate], str]:
    """What ``auto`` leaves open, and (when only one candidate is left) why it is that one."""
    precisions, why = _precisions(cfg, device)
    layout = cfg.train.channels_last
    layouts = [False, True] if layout == "auto" else [bool(layout)]
    if layout == "auto" and device.type == "cpu" and cfg.model.width < NARROW_CHANNELS_LAST:
        layouts = [False]
        why = (why + "; " if why else "") + (f"contiguous: channels_last is not tried below "
                                             f"model.width {NARROW_CHANNELS_LAST} on CPU")
    out = [Candidate(p, cl) for cl in layouts for p in precisions]
    if len(out) == 1 and layout != "auto":
        why = f"{why}; train.channels_last set" if why != "train.precision" else \
            "train.precision and train.channels_last set"
    return out, why


def cache_key(cfg: Config, device: torch.device, batch: int, image: tuple[int, ...],
              cands: list[Candidate]) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    key = {"device": device.type, "model_of_device": where, "flags": cpu_flags(),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "model": cfg.model.name, "norm": cfg.model.norm, "width": cfg.model.width,
           "activation": cfg.model.activation, "batch": batch, "image": list(image),
           "candidates": [c.name for c in cands]}
    return json.dumps(key, sort_keys=True)


def read_cache(path: Path) -> dict:
    """The cache's entries, {} when it is absent, unreadable or of another format."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION \
            or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def write_cache(path: Path, key: str, entry: dict) -> None:
    """Add ``entry``; entries measured with another torch version are dropped (invalid now).
    A cache that cannot be written costs a probe next time, never the run."""
    entries = read_cache(path)
    entries = {k: v for k, v in entries.items() if _torch_of(k) == torch.__version__}
    entries[key] = entry
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"version": CACHE_VERSION, "entries": entries})


def _torch_of(key: str) -> str | None:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return json.loads(key).get("torch")
    return None


# --------------------------------------------------------------------------- choosing


def choose_speed(cfg: Config, model: torch.nn.Module, sample: TrainSample, device: torch.device,
                 *, dist: Dist | None = None, recorded: dict | None = None,
                 timer: Timer | None = None, cache: Path | None = None,
                 compiler: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                 steps: int | None = None) -> Speed:
    """The run's :class:`Speed`, its compile choice included. ``model`` is the freshly built
    model (probe steps train deep copies of it) on ``device``, ``sample`` the run's training
    images there; ``recorded``: the ``speed`` a run folder already recorded, used when still
    allowed. ``timer`` times one probe step (called with a Candidate for the precision probe,
    with "eager" / "compile" / "compiled" for the compile probe); ``compiler`` compiles a
    network (default :func:`classlab.engine.compiling.compile_module`); ``steps``: the
    training steps the network will take (default: train.epochs x steps per epoch)."""
    dist = dist or Dist()
    speed = None
    if dist.main:  # rank 0 measures; every rank trains the same way
        p = _ProbeInputs(cfg, model, sample, device, timer or wall_timer(device),
                         cache or cache_file(), max(1, cfg.train.batch_size // dist.world))
        speed = _precision_and_layout(p, recorded)
        speed.compile = _compile_choice(p, speed, recorded, steps,
                                        compiler or compiling.compile_module)
    if dist.world > 1:
        box = [speed.to_dict() if speed is not None else None]
        torch.distributed.broadcast_object_list(box, src=0)
        speed = Speed.from_dict(box[0])
    return speed


@dataclass
class _ProbeInputs:
    """What a probe trains on: the run's model, optimizer recipe, images and batch."""

    cfg: Config
    model: torch.nn.Module
    sample: TrainSample  # the whole training split on the device
    device: torch.device
    timer: Timer
    cache: Path
    batch: int  # images per step in this process

    def step_maker(self) -> StepMaker:
        s = self.sample
        return training_step_maker(
            self.model, lambda net: build_optimizer(net, self.cfg.optim),
            TrainSample(s.x[:self.batch], s.y[:self.batch], s.mean, s.std), self.device,
            self.cfg.train.label_smoothing)


def _precision_and_layout(p: _ProbeInputs, recorded: dict | None) -> Speed:
    cfg, device = p.cfg, p.device
    cands, why = candidates(cfg, device)
    if recorded is not None:
        rec = Speed.from_dict(recorded)
        if Candidate(rec.precision, rec.channels_last) in cands:
            rec.how = "recorded"
            return rec
    if len(cands) == 1:  # nothing to measure: the config or the CUDA rule decided
        how = "cuda" if cfg.train.precision == "auto" and device.type == "cuda" else "config"
        return Speed(cands[0].precision, cands[0].channels_last, how, why)
    return _measure_or_cached(p, cands)


def _measure_or_cached(p: _ProbeInputs, cands: list[Candidate]) -> Speed:
    key = cache_key(p.cfg, p.device, p.batch, tuple(p.sample.x.shape[1:]), cands)
    hit = read_cache(p.cache).get(key)
    if isinstance(hit, dict):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            speed = Speed.from_dict(hit)
            speed.how, speed.compile = "cache", None
            speed.why = f"{speed.why}; measured earlier on this machine, cached in {p.cache}"
            return speed
    with isolated([p.device]):
        result = probe(cands, p.step_maker(), p.batch, timer=p.timer)
    best = result.best
    why = (f"fastest of {len(cands)} measured in {result.seconds:.1f} s, images/s: "
           f"{_rates(result.rates, result.stopped)}")
    speed = Speed(best.precision, best.channels_last, "probe", why, result.rates,
                  result.seconds)
    write_cache(p.cache, key, speed.to_dict())
    return speed


# --------------------------------------------------------------------------- compile: auto


def compile_cache_key(cfg: Config, device: torch.device, batch: int, image: tuple[int, ...],
                      cand: Candidate) -> str:
    """The compile measurement's key: the machine, torch, threads and batch as for the
    precision choice, the whole model section (any of its settings changes the compiled
    graph), and the precision and layout the run trains in."""
    key = json.loads(cache_key(cfg, device, batch, image, [cand]))
    del key["candidates"]
    key.update(what="compile", model_config=asdict(cfg.model), precision=cand.precision,
               channels_last=cand.channels_last)
    return json.dumps(key, sort_keys=True)


def _compile_choice(p: _ProbeInputs, speed: Speed, recorded: dict | None, steps: int | None,
                    compiler: Callable[[torch.nn.Module], torch.nn.Module]) -> CompileChoice:
    """train.compile as set; else the run folder's record; else cache, bound or probe
    (:mod:`classlab.engine.compiling`)."""
    setting = p.cfg.train.compile
    if setting != "auto":
        return configured(bool(setting))
    if recorded is not None:  # resume / eval / diagnose: what the run trained with
        rec = recorded.get("compile")
        if isinstance(rec, dict):
            choice = CompileChoice.from_dict(rec)
            choice.how = "recorded"
            return choice
        return CompileChoice(False, "recorded", "the run folder records no compile choice "
                             "(it trained before train.compile: auto); eager")
    n, batch = len(p.sample.x), p.cfg.train.batch_size
    steps = steps if steps is not None else p.cfg.train.epochs * steps_per_epoch(n, batch)
    shapes = batch_shapes(n, batch)
    cand = Candidate(speed.precision, speed.channels_last)
    key = compile_cache_key(p.cfg, p.device, p.batch, tuple(p.sample.x.shape[1:]), cand)
    hit = read_cache(p.cache).get(key)
    if isinstance(hit, dict):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            choice = decide(float(hit["eager_s"]), float(hit["compiled_s"]),
                            float(hit["compile_s"]), steps, shapes, how="cache")
            choice.why += f"; measured earlier on this machine, cached in {p.cache}"
            return choice
    choice = _probe_compile(p, speed, cand, steps, shapes, compiler)
    if choice.how == "probe":  # a failure is not cached: a compiler installed later counts
        write_cache(p.cache, key, choice.measured())
    return choice


def _probe_compile(p: _ProbeInputs, speed: Speed, cand: Candidate, steps: int, shapes: int,
                   compiler: Callable[[torch.nn.Module], torch.nn.Module]) -> CompileChoice:
    """The bound from the eager step time (the precision probe's, else two eager steps
    timed), then, only when it cannot say no, the compile probe."""
    t0 = time.perf_counter()
    make_step = p.step_maker()
    with isolated([p.device]):
        rate = speed.rates.get(speed.name)
        if rate:
            eager_s = p.batch / rate
        else:
            step = make_step(cand, p.batch)
            p.timer("eager", step)  # warm-up: first use of the kernels at this shape
            eager_s = p.timer("eager", step)
        no = bound(eager_s, steps, shapes)
        if no is not None:
            no.probe_seconds = time.perf_counter() - t0
            return no
        choice = measure(make_step(cand, p.batch), make_step(cand, p.batch, compiler),
                         p.timer, steps, shapes)
    choice.probe_seconds = time.perf_counter() - t0
    return choice


def _rates(rates: dict[str, float], stopped: dict[str, str] | None = None) -> str:
    """"bf16 1,969, fp32 760 (screened out)": fastest first."""
    stopped = stopped or {}
    mark = {k: " (screened out)" if "screening" in why else " (warm-up only)" if "warm-up"
            in why else " (stopped early)" for k, why in stopped.items()}
    order = sorted(rates, key=rates.get, reverse=True)
    return ", ".join(f"{k} {rates[k]:,.0f}{mark.get(k, '')}" for k in order)
