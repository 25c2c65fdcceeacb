"""The measured precision / memory-format choice (engine.probe, engine.precision): it picks the
faster candidate, stops slow ones early, never touches the run's weights or random streams,
caches per machine / torch version / model / batch, and follows the CUDA rule."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from classlab import config
from classlab.config import ConfigError
from classlab.engine import precision as speed_mod
from classlab.engine.precision import candidates, choose_speed
from classlab.engine.probe import Candidate, TrainSample, probe
from classlab.models import build_model
from classlab.run.session import build_session, default_threads

pytestmark = pytest.mark.usefixtures("one_thread")

FP32, FP32_CL = Candidate("fp32", False), Candidate("fp32", True)
BF16, BF16_CL = Candidate("bf16", False), Candidate("bf16", True)
ALL = [FP32, BF16, FP32_CL, BF16_CL]


def fake_timer(per_image: dict[Candidate, float], calls: list | None = None):
    """Runs the step (so it is a real step) but reports ``per_image[c] * batch`` seconds."""
    def timer(c, step):
        step()
        if calls is not None:
            calls.append((c, step.batch))
        return per_image[c] * step.batch
    return timer


def counting_maker(made: list):
    def make_step(c, batch):
        def step():
            pass
        step.batch = batch
        made.append((c, batch))
        return step
    return make_step


@pytest.mark.parametrize("fast", ALL)
def test_probe_picks_the_candidate_that_is_fastest(fast):
    per_image = {c: (1.0 if c == fast else 2.0) for c in ALL}
    made = []
    r = probe(ALL, counting_maker(made), 64, timer=fake_timer(per_image))
    assert r.best == fast
    assert r.rates[fast.name] == pytest.approx(1.0)
    assert {c for c, _ in made} == set(ALL)


def test_probe_stops_clearly_slower_candidates_early():
    # bf16 20x slower (a CPU without bf16 units): dropped after the small screening step;
    # fp32 contiguous 1.6x slower: stopped after one timed full-batch step.
    per_image = {FP32: 1.6, BF16: 20.0, FP32_CL: 1.0, BF16_CL: 20.0}
    calls = []
    r = probe(ALL, counting_maker([]), 64, timer=fake_timer(per_image, calls), steps=3)
    assert r.best == FP32_CL
    full = [c for c, b in calls if b == 64]
    assert BF16 not in full and BF16_CL not in full  # never a full-batch step
    assert full.count(FP32_CL) == 4  # warm-up + 3 timed
    assert full.count(FP32) == 2  # warm-up + 1 timed, then stopped
    assert "screening" in r.stopped["bf16"] and "timed" in r.stopped["fp32"]
    assert r.rates["bf16"] == pytest.approx(1 / 20.0)


def test_probe_of_one_candidate_measures_nothing():
    made = []
    r = probe([FP32], counting_maker(made), 64, timer=fake_timer({FP32: 1.0}))
    assert r.best == FP32 and made == [] and r.rates == {}


# --------------------------------------------------------------------------- choose_speed


def _cfg(**train):
    # compile: false: the fake timers here report seconds per step that would make
    # train.compile: auto compile for real (tests/test_compile_auto.py tests that choice)
    return config.from_dict({"data": {"name": "synthetic", "synthetic_size": 200},
                             "model": {"width": 16},
                             "train": {"batch_size": 32, "device": "cpu", "threads": 1,
                                       "progress": False, "epochs": 1, "compile": False,
                                       **train},
                             "diagnose": {"enabled": False}, "log": {"dynamics_every": 0}})


def _inputs(cfg):
    torch.manual_seed(0)
    model = build_model(cfg.model, 10)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    return model, x, y


def _by_name(fast: Candidate, slow: float = 3.0):
    return lambda c, step: (step(), 1.0 if c == fast else slow)[1]


def test_choose_speed_leaves_weights_and_rng_untouched(tmp_path: Path):
    cfg = _cfg()
    model, x, y = _inputs(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    s = choose_speed(cfg, model, TrainSample(x, y, (0.5,) * 3, (0.25,) * 3), torch.device("cpu"),
                     timer=_by_name(BF16_CL), cache=tmp_path / "speed.json")
    assert (s.precision, s.channels_last, s.how) == ("bf16", True, "probe")
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.is_contiguous() for p in model.parameters())  # layout not changed either


def test_a_probed_run_trains_exactly_as_one_told_the_answer(tmp_path, monkeypatch):
    """bit-exact: measuring first changes nothing about the run itself."""
    from classlab.run.flow import train_run

    monkeypatch.setattr(speed_mod, "wall_timer", lambda device: _by_name(FP32_CL))
    monkeypatch.setenv("CLASSLAB_CACHE", str(tmp_path / "cache"))
    probed = train_run(_cfg(), out=tmp_path / "a")
    told = train_run(_cfg(precision="fp32", channels_last=True), out=tmp_path / "b")
    assert probed.session.speed.how == "probe" and told.session.speed.how == "config"
    a, b = probed.session.model.state_dict(), told.session.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((probed.run_dir / "summary.json").read_text())
    assert summary["precision"] == "fp32" and summary["channels_last"] is True
    assert summary["speed"]["how"] == "probe" and "fp32+channels_last" in summary["speed"]["rates"]


def test_cache_is_keyed_by_model_batch_and_torch_version(tmp_path, monkeypatch):
    cache = tmp_path / "speed.json"
    cfg = _cfg()
    model, x, y = _inputs(cfg)
    cpu = torch.device("cpu")
    calls = []

    def timer(c, step):
        calls.append(c)
        step()
        return 1.0 if c == FP32 else 2.0

    def choose(c):
        return choose_speed(c, model, TrainSample(x, y, (0.5,) * 3, (0.25,) * 3), cpu, timer=timer,
                            cache=cache)

    first = choose(cfg)
    assert first.how == "probe" and first.name == "fp32" and calls
    n = len(calls)
    again = choose(cfg)
    assert again.how == "cache" and again.name == "fp32" and len(calls) == n  # no timing
    assert str(cache) in again.why
    choose(_cfg(batch_size=16))  # another batch: measured again
    assert len(calls) > n
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 2
    assert {json.loads(k)["batch"] for k in entries} == {16, 32}
    key = json.loads(next(iter(entries)))
    assert {"model_of_device", "flags", "torch", "model", "width", "norm", "activation",
            "threads"} <= key.keys()
    silu = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, activation="silu"))
    n = len(calls)
    assert choose(silu).how == "probe" and len(calls) > n  # another net: measured again
    # a new torch version invalidates every entry of the old one
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    n = len(calls)
    assert choose(cfg).how == "probe" and len(calls) > n
    entries = json.loads(cache.read_text())["entries"]
    assert [json.loads(k)["torch"] for k in entries] == ["9.9.9"]


def test_a_broken_or_unwritable_cache_costs_a_probe_not_the_run(tmp_path):
    cfg = _cfg()
    model, x, y = _inputs(cfg)
    cache = tmp_path / "speed.json"
    cache.write_text("{not json")
    s = choose_speed(cfg, model, TrainSample(x, y, (0.5,) * 3, (0.25,) * 3), torch.device("cpu"),
                     timer=_by_name(BF16), cache=cache)
    assert s.how == "probe" and json.loads(cache.read_text())["version"] == 1
    blocked = tmp_path / "file"
    blocked.write_text("")
    s = choose_speed(cfg, model, TrainSample(x, y, (0.5,) * 3, (0.25,) * 3), torch.device("cpu"),
                     timer=_by_name(BF16), cache=blocked / "speed.json")  # parent is a file
    assert s.name == "bf16"


def test_fixed_settings_are_used_without_measuring(tmp_path):
    cfg = _cfg(precision="fp32", channels_last=False)
    model, x, y = _inputs(cfg)

    def timer(c, step):
        raise AssertionError("measured")
    s = choose_speed(cfg, model, TrainSample(x, y, (0.5,) * 3, (0.25,) * 3), torch.device("cpu"),
                     timer=timer, cache=tmp_path / "c.json")
    assert (s.name, s.how) == ("fp32", "config") and not (tmp_path / "c.json").exists()
    # only the free half is measured
    cands, _ = candidates(_cfg(precision="bf16"), torch.device("cpu"))
    assert cands == [BF16, BF16_CL]
    cands, _ = candidates(_cfg(channels_last=True), torch.device("cpu"))
    assert cands == [FP32_CL, BF16_CL]


@pytest.mark.parametrize("bf16_ok, want", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_is_bf16_where_supported_else_fp16_with_a_scaler(monkeypatch, bf16_ok, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    cfg = _cfg(device="cuda", channels_last=True)
    cands, why = candidates(cfg, torch.device("cuda"))
    assert cands == [Candidate(want, True)]
    assert ("scaler" in why) == (want == "fp16")
    model, x, y = _inputs(cfg)
    s = choose_speed(cfg, model, TrainSample(x, y, (0.5,) * 3, (0.25,) * 3), torch.device("cuda"))
    assert (s.precision, s.how) == (want, "cuda") and "CUDA" in s.line()
    # channels_last: auto on CUDA measures the two layouts of that precision only
    cands, _ = candidates(_cfg(device="cuda"), torch.device("cuda"))
    assert cands == [Candidate(want, False), Candidate(want, True)]


def test_a_run_folder_keeps_the_choice_it_trained_with(tmp_path, monkeypatch):
    """resume / eval / diagnose use summary.json's speed, whatever a new probe would say."""
    from classlab.run.flow import train_run
    from classlab.run.session import session_from_run

    monkeypatch.setenv("CLASSLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(speed_mod, "wall_timer", lambda device: _by_name(BF16))
    run = train_run(_cfg(), out=tmp_path).run_dir
    monkeypatch.setattr(speed_mod, "wall_timer", lambda device: _by_name(FP32_CL))
    (tmp_path / "cache" / "speed.json").unlink()
    s, _ = session_from_run(run)
    assert (s.speed.name, s.speed.how, s.amp.precision) == ("bf16", "recorded", "bf16")
    assert not s.normalize.channels_last


def test_channels_last_accepts_true_false_and_auto():
    assert config.load(None, ["train.channels_last=true"]).train.channels_last is True
    assert config.load(None, ["train.channels_last=false"]).train.channels_last is False
    assert config.load(None, ["train.channels_last=auto"]).train.channels_last == "auto"
    assert config.load(None).train.channels_last == "auto"
    with pytest.raises(ConfigError, match=r"train\.channels_last: expected true, false or auto"):
        config.load(None, ["train.channels_last=yes please"])


def test_threads_zero_means_every_core_of_the_affinity(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    if hasattr(os, "sched_getaffinity"):
        assert default_threads() == len(os.sched_getaffinity(0))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
        assert default_threads() == 4
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes share them
        assert default_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == torch.get_num_threads()


def test_session_applies_the_choice_to_model_and_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(speed_mod, "wall_timer", lambda device: _by_name(BF16_CL))
    s = build_session(_cfg())
    assert s.amp.precision == "bf16" and s.normalize.channels_last
    conv = next(m for m in s.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_auto_does_not_try_channels_last_on_very_narrow_models():
    cands, why = candidates(config.load(None, ["model.width=8"]), torch.device("cpu"))
    assert cands == [FP32, BF16] and "channels_last is not tried" in why


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob(
    "experiments/*.yaml")), ids=lambda p: p.name)
def test_no_recipe_pins_hardware(path):
    """device, precision, memory format and threads stay auto in every shipped recipe."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    base = raw.get("base", path)
    if isinstance(base, str):  # a grid's base given as a file next to it
        base = path.parent / base
    train = (config.from_dict(base) if isinstance(base, dict) else config.load(base)).train
    assert (train.device, train.precision, train.channels_last, train.threads) == \
        ("auto", "auto", "auto", 0)


def test_a_candidate_slow_only_at_the_full_batch_costs_one_warm_up_step():
    # passes the small screening step, then its full-batch warm-up is 2.5x the best step
    calls = []

    def timer(c, step):
        calls.append((c, step.batch))
        slow = c == FP32 and step.batch == 64
        return (2.5 if slow else 1.0) * step.batch

    r = probe([FP32_CL, FP32], counting_maker([]), 64, timer=timer)
    assert r.best == FP32_CL and "warm-up" in r.stopped["fp32"]
    assert [b for c, b in calls if c == FP32].count(64) == 1
