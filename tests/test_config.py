"""Config tree: loading, overrides, every class of error, round trip."""

from __future__ import annotations

import dataclasses

import pytest

from classlab import config
from classlab.config import Config, ConfigError


def test_defaults_validate_and_every_field_documents_itself():
    cfg = config.load()
    for key, _value, meta in config.walk(cfg):
        assert meta.get("help"), f"{key} has no help text"
    ref = config.reference()
    assert "`optim.lr`" in ref and "`sched.name`" in ref


def test_overrides_are_parsed_as_yaml_scalars():
    cfg = config.load(None, ["optim.lr=0.01", "train.epochs=2", "model.norm=ln",
                             "aug.ops=crop,flip", "train.channels_last=true",
                             "aug.ops=[crop, cutout]"])
    assert cfg.optim.lr == 0.01 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 2 and cfg.model.norm == "ln"
    assert cfg.aug.ops == ["crop", "cutout"] and cfg.train.channels_last is True


def test_int_is_accepted_for_float_but_not_bool_for_int():
    assert config.load(None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"^train\.epochs: expected an integer, got True$"):
        config.load(None, ["train.epochs=true"])


@pytest.mark.parametrize("override, pattern", [
    (["optim.lr=0"], r"^optim\.lr: 0\.0 is out of range; must be > 0\.0$"),
    (["optim.lr=-1"], r"^optim\.lr: -1\.0 is out of range"),
    (["train.epochs=0"], r"^train\.epochs: 0 is out of range; must be ≥ 1$"),
    (["train.batch_size=0"], r"^train\.batch_size: 0 is out of range"),
    (["data.val_split=1"], r"^data\.val_split: 1\.0 is out of range; must be < 1\.0$"),
    (["data.val_split=-0.1"], r"^data\.val_split: -0\.1 is out of range"),
    (["model.name=resnet50"], r"^model\.name: unknown value 'resnet50'; allowed: .*resnet18"),
    (["model.norm=in"], r"^model\.norm: unknown value 'in'; allowed: bn, gn, ln$"),
    (["optim.name=rmsprop"],
     r"^optim\.name: unknown value 'rmsprop'; allowed: adam, adamw, muon, sgd"),
    (["sched.name=poly"], r"^sched\.name: unknown value 'poly'; allowed: .*onecycle"),
    (["aug.ops=crop,blur"], r"^aug\.ops: unknown value 'blur'; allowed: "),
    (["optim.learning_rate=0.1"], r"^optim\.learning_rate: unknown key; allowed: name, lr"),
    (["foo=1"], r"^foo: unknown key; allowed: name, data"),
    (["optim.lr=fast"], r"^optim\.lr: expected a number, got 'fast'$"),
    (["optim=3"], r"^optim: expected a mapping of keys, got 3$"),
    (["optim.lr.x=3"], r"^optim\.lr: expected a number, got \{'x': 3\}$"),
    (["optim.lr=1", "optim.lr.x=3"], r"^optim\.lr: is not a section$"),
    (["nokey"], r"^override 'nokey': expected key\.sub=value$"),
    (["train.device=tpu"], r"^train\.device: unknown value 'tpu'"),
    (["sched.name=plateau", "data.val_split=0"], r"^sched\.monitor: 'val_loss' needs a valid"),
    (["name=a/b"], r"^name: 'a/b' cannot be a folder name"),
])
def test_each_error_is_one_line_naming_key_value_and_allowed(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        config.load(None, override)
    assert "\n" not in str(e.value)


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        config.load(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        config.load(tmp_path / "missing.yaml")
    # safe_load only: a python tag is a YAML error, not code execution
    bad.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError):
        config.load(bad)


def test_dump_round_trips_to_an_equal_config(tmp_path):
    cfg = config.load(None, ["optim.lr=0.05", "model.norm=gn", "aug.ops=[flip]",
                             "sched.name=step"])
    p = tmp_path / "c.yaml"
    p.write_text(config.dump(cfg))
    assert config.load(p) == cfg
    assert dataclasses.asdict(config.load(p)) == dataclasses.asdict(cfg)


def test_empty_file_gives_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert config.load(p) == Config()


def test_scientific_notation_is_a_number_in_files_and_overrides(tmp_path):
    # PyYAML reads 1e-3 as a string (YAML 1.1); classlab accepts it as the number it means.
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 1e-3\n")
    assert config.load(p).optim.lr == 0.001
    assert config.load(None, ["optim.lr=5E-4"]).optim.lr == 0.0005
    with pytest.raises(ConfigError, match="expected a number, got '1e-3x'"):
        config.load(None, ["optim.lr=1e-3x"])


def test_readme_config_reference_is_current():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [ln for ln in config.reference().splitlines() if ln not in readme]
    assert not missing, "README.md config reference is stale: paste `classlab config`"
