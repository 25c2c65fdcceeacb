"""``train.compile: auto`` (engine.compiling, engine.precision): the choice follows the measured
numbers (a fake timer and a fake compiler, as tests/test_speed.py fakes the precision probe),
a run too short to gain is not compiled to check, measurements are cached per machine / torch /
model / batch / precision / layout, a failing compile means eager with the reason, and
summary.json and the Speed line say what was decided and why. One real torch.compile (of a
width-4 ResNet18, shared by the whole file through torch's in-process compiled-code cache):
a compiled run resumes bit-identically to the same compiled run uninterrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from classlab import config
from classlab.config import ConfigError
from classlab.engine import compiling
from classlab.engine import precision as speed_mod
from classlab.engine.compiling import COMPILE_ESTIMATE_S, COMPILE_MARGIN, TIMED_PAIRS
from classlab.engine.precision import choose_speed
from classlab.engine.probe import Candidate, TrainSample
from classlab.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
# seconds per step: saving 1 s/step, compile 53 - 3 = 50 s (one batch shape)
PAYS = {"eager": 4.0, "compile": 53.0, "compiled": 3.0}


def _cfg(*overrides: str):
    # 180 training images (synthetic 200 less the 10% validation split) in batches of 36:
    # 5 steps per epoch, no smaller last batch
    return config.load(None, ["data.name=synthetic", "data.synthetic_size=200", "model.width=4",
                              "train.batch_size=36", "train.device=cpu", "train.threads=1",
                              "train.precision=fp32", "train.channels_last=false",
                              "train.progress=false", "train.epochs=1", "log.dynamics_every=0",
                              "diagnose.enabled=false", *overrides])


def fake_timer(seconds: dict, calls: list | None = None):
    """Runs the step (so it is a real step) and reports ``seconds[what]``; a precision probe
    step (``what`` a Candidate) takes 0.36 s in fp32 contiguous, 0.72 s in the others."""
    def timer(what, step):
        step()
        if calls is not None:
            calls.append(what)
        if isinstance(what, Candidate):
            return 0.36 if what == Candidate("fp32", False) else 0.72
        return seconds[what]
    return timer


def counting_compiler(made: list, fail: Exception | None = None):
    """A stand-in for torch.compile: the network itself (or one whose call raises ``fail``,
    as a compile without a C++ compiler does at its first call)."""
    def compiler(net):
        made.append(net)
        if fail is None:
            return net

        def broken(*a, **k):
            raise fail
        return broken
    return compiler


def choose(cfg, tmp_path: Path, seconds=PAYS, *, steps: int, images: int = 72, calls=None,
           made=None, compiler=None):
    torch.manual_seed(0)
    model = build_model(cfg.model, 10)
    x = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (images,))
    return choose_speed(cfg, model, TrainSample(x, y, (0.5,) * 3, (0.25,) * 3), CPU,
                        timer=fake_timer(seconds, calls), cache=tmp_path / "speed.json",
                        compiler=compiler or counting_compiler([] if made is None else made),
                        steps=steps)


# --------------------------------------------------------------------------- the choice


@pytest.mark.parametrize("steps, use", [(100, True), (40, False)])
def test_the_choice_follows_the_measured_saving_and_compile_time(tmp_path, steps, use):
    calls, made = [], []
    c = choose(_cfg(), tmp_path, steps=steps, calls=calls, made=made).compile
    # saving 1 s/step x 100 = 100 s > 1.25 x 50 s; x 40 = 40 s < 62.5 s
    assert (c.use, c.how) == (use, "probe")
    assert (c.eager_s, c.compiled_s, c.compile_s, c.steps, c.shapes) == (4.0, 3.0, 50.0, steps, 1)
    gain = "1 min 40 s >" if use else "40.0 s <"
    assert c.why == f"saves 1 s/step x {steps} steps = {gain} 1.25 x 50.0 s to compile"
    # two eager steps for the bound, the compiling step, then eager and compiled alternately
    assert calls == ["eager", "eager", "compile"] + ["eager", "compiled"] * TIMED_PAIRS
    assert len(made) == 1


def test_a_compiled_step_that_is_not_faster_is_no(tmp_path):
    c = choose(_cfg(), tmp_path, {"eager": 4.0, "compile": 9.0, "compiled": 4.5},
               steps=10_000).compile
    assert not c.use and c.why == "a compiled step is not faster: 4.5 s vs 4 s eager"


def test_a_smaller_last_batch_counts_a_second_compile(tmp_path):
    # 80 images in batches of 36: 36, 36, 8 -> two shapes, 100 s to compile; 100 s saved
    c = choose(_cfg(), tmp_path, steps=100, images=80).compile
    assert (c.use, c.shapes) == (False, 2)
    assert "< 1.25 x 1 min 40 s to compile (2 batch shapes, the last batch is smaller)" in c.why


def test_a_run_too_short_to_gain_is_not_compiled_to_check(tmp_path):
    """The bound: 0.1 s x 100 steps = 10 s could not pay for a compile even if it made the
    steps free, so nothing is compiled; only the two eager steps that measured it ran."""
    calls, made = [], []
    c = choose(_cfg(), tmp_path, {"eager": 0.1}, steps=100, calls=calls, made=made).compile
    assert (c.use, c.how, c.eager_s) == (False, "bound", 0.1)
    assert c.why == (f"even a 100% saving of the 0.1 s eager step x 100 steps = 10.0 s < "
                     f"{COMPILE_MARGIN:g} x ~{COMPILE_ESTIMATE_S:.1f} s to compile; not "
                     "compiled to check")
    assert made == [] and calls == ["eager", "eager"]
    assert not (tmp_path / "speed.json").exists()  # nothing measured, nothing cached
    # just long enough for a 100% saving to pay: measured
    steps = int(COMPILE_MARGIN * COMPILE_ESTIMATE_S / 0.1) + 1
    c = choose(_cfg(), tmp_path, {"eager": 0.1, "compile": 20.05, "compiled": 0.05},
               steps=steps, made=made).compile
    assert c.how == "probe" and len(made) == 1


def test_the_bound_uses_the_precision_probes_step_time(tmp_path):
    """With train.precision / channels_last measured, the eager step time is the probe's:
    no eager step is timed again before the bound says no."""
    calls = []
    s = choose(_cfg("train.precision=auto"), tmp_path, {}, steps=3, calls=calls)
    assert s.name == "fp32" and s.compile.how == "bound"
    assert s.compile.eager_s == pytest.approx(0.36)  # the probe's median fp32 step
    assert "eager" not in calls and all(isinstance(c, Candidate) for c in calls)


def test_measurements_are_cached_per_model_batch_precision_layout_and_torch(tmp_path,
                                                                            monkeypatch):
    calls, made = [], []
    assert choose(_cfg(), tmp_path, steps=100, calls=calls, made=made).compile.use
    n = len(calls)
    # the same numbers decide a shorter run: no step timed, nothing compiled
    again = choose(_cfg(), tmp_path, steps=40, calls=calls, made=made).compile
    assert (again.use, again.how, len(calls), len(made)) == (False, "cache", n, 1)
    assert again.why.startswith("saves 1 s/step x 40 steps = 40.0 s < 1.25 x 50.0 s")
    assert str(tmp_path / "speed.json") in again.why
    entries = json.loads((tmp_path / "speed.json").read_text())["entries"]
    (key, entry), = entries.items()
    assert entry == {"eager_s": 4.0, "compiled_s": 3.0, "compile_s": 50.0}
    key = json.loads(key)
    assert (key["what"], key["precision"], key["channels_last"], key["batch"]) == \
        ("compile", "fp32", False, 36)
    assert {"model_of_device", "flags", "torch", "threads", "model_config"} <= key.keys()
    assert key["model_config"]["width"] == 4
    for other in (["train.channels_last=true"], ["train.precision=bf16"],
                  ["train.batch_size=24"], ["model.norm=ln"]):
        n = len(made)
        choose(_cfg(*other), tmp_path, steps=100, made=made)
        assert len(made) == n + 1, other  # measured again
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    n = len(made)
    choose(_cfg(), tmp_path, steps=100, made=made)
    assert len(made) == n + 1


def test_a_failing_compile_is_eager_with_the_reason_and_not_cached(tmp_path):
    made = []
    error = RuntimeError("C++ compile error: g++: not found\n  (and 40 more lines)")
    c = choose(_cfg(), tmp_path, steps=100, made=made,
               compiler=counting_compiler(made, fail=error)).compile
    assert (c.use, c.how) == (False, "failed")
    assert c.why == ("torch.compile failed in the probe (RuntimeError: C++ compile error: g++: "
                     "not found); training eagerly")
    entries = json.loads((tmp_path / "speed.json").read_text())["entries"] \
        if (tmp_path / "speed.json").exists() else {}
    assert not any(json.loads(k).get("what") == "compile" for k in entries)


def test_set_values_are_used_without_measuring(tmp_path):
    def timer(what, step):
        raise AssertionError("measured")
    for value, use in (("true", True), ("false", False)):
        model = build_model(_cfg().model, 10)
        x = torch.zeros(36, 3, 32, 32, dtype=torch.uint8)
        s = choose_speed(_cfg(f"train.compile={value}"), model,
                         TrainSample(x, torch.zeros(36, dtype=torch.long), (0.5,) * 3,
                                     (0.25,) * 3), CPU, timer=timer, cache=tmp_path / "c.json")
        assert (s.compile.use, s.compile.how) == (use, "config")
        assert s.line().endswith(f"; compile: {'yes' if use else 'no'} (train.compile: {value})")


def test_a_run_folder_from_before_compile_auto_trains_eagerly(tmp_path):
    s = choose_speed(_cfg(), build_model(_cfg().model, 10),
                     TrainSample(torch.zeros(36, 3, 32, 32, dtype=torch.uint8),
                                 torch.zeros(36, dtype=torch.long), (0.5,) * 3, (0.25,) * 3),
                     CPU, recorded={"precision": "fp32", "channels_last": False},
                     cache=tmp_path / "c.json")
    assert (s.compile.use, s.compile.how) == (False, "recorded")
    assert "records no compile choice" in s.compile.why


def test_compile_accepts_true_false_and_auto():
    assert config.load(None).train.compile == "auto"
    assert config.load(None, ["train.compile=true"]).train.compile is True
    assert config.load(None, ["train.compile=false"]).train.compile is False
    with pytest.raises(ConfigError) as e:
        config.load(None, ["train.compile=maybe"])
    assert str(e.value) == "train.compile: expected true, false or auto, got 'maybe'"


# --------------------------------------------------------------------------- in a run


def test_summary_and_speed_line_record_the_choice(tmp_path, monkeypatch, capsys):
    from classlab.run.flow import train_run
    from classlab.run.session import session_from_run

    made = []
    monkeypatch.setenv("CLASSLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(speed_mod, "wall_timer",
                        lambda device: fake_timer({"eager": 10.0, "compile": 20.0,
                                                   "compiled": 5.0}))
    monkeypatch.setattr(compiling, "compile_module", counting_compiler(made))
    run = train_run(_cfg(), out=tmp_path / "runs")
    # the probe compiled a copy, the run its own model: what it trained through
    assert len(made) == 2 and made[1] is run.session.model is run.session.net
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Speed:"))
    assert line.endswith("; compile: yes (saves 5 s/step x 5 steps = 25.0 s > 1.25 x 15.0 s "
                         "to compile)")
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["compile"] is True
    c = summary["speed"]["compile"]
    assert {k: c[k] for k in ("use", "how", "eager_s", "compiled_s", "compile_s", "steps",
                              "shapes")} == {"use": True, "how": "probe", "eager_s": 10.0,
                                             "compiled_s": 5.0, "compile_s": 15.0, "steps": 5,
                                             "shapes": 1}
    assert c["why"] in line and c["probe_seconds"] > 0
    # eval / diagnose / resume keep what the run trained with, whatever a probe says now
    monkeypatch.setattr(speed_mod, "wall_timer", lambda device: fake_timer({"eager": 0.001}))
    s, _ = session_from_run(run.run_dir)
    assert (s.speed.compile.use, s.speed.compile.how) == (True, "recorded")


def test_a_failing_compile_in_a_run_is_one_reason_not_a_traceback(tmp_path, monkeypatch,
                                                                  capsys):
    from classlab.run.flow import train_run

    monkeypatch.setenv("CLASSLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(speed_mod, "wall_timer",
                        lambda device: fake_timer({"eager": 10.0, "compile": 20.0,
                                                   "compiled": 5.0}))
    made = []
    monkeypatch.setattr(compiling, "compile_module",
                        counting_compiler(made, fail=RuntimeError("no C++ compiler")))
    run = train_run(_cfg(), out=tmp_path / "runs")
    out, err = capsys.readouterr()
    assert "compile: no (torch.compile failed in the probe (RuntimeError: no C++ compiler); " \
           "training eagerly)" in out
    assert "Traceback" not in out + err and len(made) == 1  # the run did not try again
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["compile"] is False and summary["speed"]["compile"]["how"] == "failed"
    assert summary["status"] == "finished"


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_compiled_run_resumes_bit_identically(tmp_path, monkeypatch):
    """The one real torch.compile of this file: the probe compiles a copy, the run reuses
    that compiled code, and so does the resumed session. A compiled run killed after epoch 1
    and resumed ends with exactly the weights of the same run uninterrupted.

    Compiled and eager training are not bit-identical on this machine (torch 2.13, CPU
    inductor): the first step's loss agreed, but the next forward differed by ~1e-6 and every
    gradient by up to ~1e-6 (fused kernels round differently; torch promises closeness, not
    equality), so the eager run is checked for closeness only."""
    from classlab.run.fit import fit
    from classlab.run.flow import train_run
    from classlab.run.resume import resume_run
    from classlab.run.start import start_run
    from classlab.rundir.checkpoint import load_checkpoint
    from classlab.rundir.metrics import read_metrics

    monkeypatch.setenv("CLASSLAB_CACHE", str(tmp_path / "cache"))
    # 2 epochs x 5 steps: 4.5 s/step x 10 = 45 s saved > 1.25 x 15 s to compile
    monkeypatch.setattr(speed_mod, "wall_timer",
                        lambda device: fake_timer({"eager": 10.0, "compile": 20.5,
                                                   "compiled": 5.5}))
    full = train_run(_cfg("train.epochs=2"), out=tmp_path / "full")
    assert full.session.speed.compile.how == "probe"
    assert type(full.session.net).__name__ == "OptimizedModule"  # torch.compile's wrapper

    class Stop(Exception):
        pass

    def stop(row):
        if row["epoch"] == 1:
            raise Stop

    s, part = start_run(_cfg("train.epochs=2"), tmp_path / "part")
    assert s.speed.compile.how == "cache" and s.speed.compile.use
    with pytest.raises(Stop):
        fit(s, part, on_epoch=stop)
    resumed = resume_run(part)
    assert resumed.session.speed.compile.how == "recorded" and resumed.session.speed.compiled
    fit(resumed.session, part, resumed.progress)
    wf, wp = (load_checkpoint(d / "last.pt")["model"] for d in (full.run_dir, part))
    assert all(torch.equal(wf[k], wp[k]) for k in wf)

    eager = train_run(_cfg("train.epochs=2", "train.compile=false"), out=tmp_path / "eager")
    assert eager.session.net is eager.session.model
    for rc, re_ in zip(read_metrics(full.run_dir / "metrics.csv"),
                       read_metrics(eager.run_dir / "metrics.csv")):
        assert rc["train_loss"] == pytest.approx(re_["train_loss"], rel=1e-3)
