"""Label-noise experiments end to end: a run with injected noise records the changed labels,
diagnose flags suspected label errors and scores them against the noise, the report says
so, ``classlab data-issues`` prints and exports them, and ``data.exclude`` of that export
trains without exactly those images (also after the file moved). Bad input: one line,
exit 2, nothing written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from classlab import cli, config
from classlab.run.flow import train_run
from classlab.rundir.datadyn import read_data_dynamics

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = {"name": "noisy", "data": {"name": "synthetic", "synthetic_size": 300,
                                 "label_noise": 0.2, "label_noise_seed": 5},
       "model": {"width": 8}, "optim": {"lr": 0.01},
       "train": {"epochs": 3, "batch_size": 64, "progress": False, "device": "cpu",
                 "threads": 1, "precision": "fp32", "channels_last": False},
       "log": {"dynamics_every": 0},
       "diagnose": {"enabled": True, "count": 5, "layers": ["layer4"], "sanity_images": 1,
                    "faithfulness_steps": 2}}


def _cli(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return train_run(config.from_dict(RUN), out=tmp_path_factory.mktemp("noisy")).run_dir


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_noise_is_recorded_flagged_scored_and_reported(noisy):
    changed = _rows(noisy / "label_noise.csv")
    assert len(changed) == round(0.2 * 270)  # 300 images, 10% validation
    assert all(r["true"] != r["given"] for r in changed)
    data = json.loads((noisy / "diagnose" / "diagnose.json").read_text())["data_issues"]
    noise, train = data["noise"], data["train"]
    assert noise["injected"] == noise["noisy"] == len(changed)
    assert train["images"] == 270 and train["epochs"] == 3
    flagged = [r for r in _rows(noisy / "label_issues.csv") if r["split"] == "train"]
    assert len(flagged) == train["flagged"] == noise["flagged"]
    hits = {r["index"] for r in flagged} & {r["index"] for r in changed}
    assert noise["hits"] == len(hits) and noise["precision"] == len(hits) / len(flagged)
    assert 0.5 < noise["auroc"] <= 1  # better than chance, even after 3 tiny epochs
    for name in ("label_issues_train.png", "label_issues_test.png", "data_map.png",
                 "data_map_examples.png", "train_dynamics.csv"):
        assert (noisy / "diagnose" / name).is_file(), name
    report = (noisy / "report.md").read_text()
    section = report[report.index("## Is it the data?"):]
    assert "### Against the injected label noise" in section and "AUROC" in section
    assert f"| {noise['noisy']} | {noise['flagged']} | {noise['hits']} |" in section
    assert "augmented" in section and "AUM) < 0" in section
    assert "easy to learn" in section and "Forgetting events" in section
    assert f"**{data['shown_suspected']} of the {data['shown']}** mistakes shown" in report


def test_data_issues_prints_exports_and_exclusion_drops_exactly_those(noisy, tmp_path,
                                                                       capsys, monkeypatch):
    code, out, _ = _cli(["data-issues", noisy, "--split", "train", "--top", "4",
                         "--out", tmp_path / "x.csv"], capsys)
    assert code == 0 and "against the injected noise" in out and "AUROC" in out
    exported = _rows(tmp_path / "x.csv")
    assert len(exported) == 4 and {r["split"] for r in exported} == {"train"}
    all_train = [r for r in _rows(noisy / "label_issues.csv") if r["split"] == "train"]
    assert exported == all_train[:4]  # most doubtful first, as label_issues.csv
    code, out, _ = _cli(["data-issues", noisy, "--split", "test"], capsys)
    assert code == 0 and out.startswith("test: ")

    cfg = {**RUN, "name": "cleaned", "data": {**RUN["data"], "exclude": str(tmp_path / "x.csv")},
           "train": {**RUN["train"], "epochs": 1}, "diagnose": {"enabled": False}}
    run_dir = train_run(config.from_dict(cfg), out=tmp_path / "runs").run_dir
    left_out = sorted(int(r["index"]) for r in exported)
    assert [int(r["index"]) for r in _rows(run_dir / "excluded.csv")] == left_out
    rec = read_data_dynamics(run_dir / "data_dynamics.pt")
    assert rec["index"].tolist() == [i for i in range(270) if i not in left_out]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_images"] == 266
    # the run folder keeps what it left out: resuming needs no exclusion file
    (tmp_path / "x.csv").unlink()
    code, _, err = _cli(["train", "--resume", run_dir, "--epochs", "1"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("override, key", [
    ("data.label_noise=1.0", "data.label_noise"),
    ("data.label_noise=-0.1", "data.label_noise"),
    ("data.label_noise_kind=flip", "data.label_noise_kind"),
    ("data.label_noise_matrix=[[0.5,0.6],[0.5,0.5]]", "data.label_noise_matrix"),
    ("data.exclude=EXCL", "data.exclude"),
])
def test_bad_noise_or_exclusion_is_one_line_and_writes_nothing(override, key, tmp_path, capsys):
    excl = tmp_path / "excl.csv"
    excl.write_text("index\n3\n5000\n")  # 5000: outside the 270 training images
    extra = ["data.label_noise_kind=matrix"] if "matrix" in override else []
    argv = ["train", "experiments/demo_synthetic.yaml", "data.synthetic_size=300",
            override.replace("EXCL", str(excl)), *extra, "--out", tmp_path / "out"]
    code, _, err = _cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert key in lines[0]
    assert not (tmp_path / "out").exists()


def test_data_issues_bad_input_is_one_line(noisy, tmp_path, capsys):
    for argv, part in ((["data-issues", tmp_path / "nowhere"], "not a run folder"),
                       (["data-issues", noisy, "--split", "val"], "--split"),
                       (["data-issues", noisy, "--top", "0"], "--top")):
        code, _, err = _cli(argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and part in err, err
