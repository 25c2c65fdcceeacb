"""Using a trained model outside its run (issue 24): ``classlab predict`` on your own pictures,
``classlab export`` to ONNX / TorchScript, and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import classlab
from classlab import config
from classlab.cli import main
from classlab.config.schema import MODELS, NORMS
from classlab.data.imagefolder import read_image
from classlab.engine import evaluate
from classlab.models import build_model
from classlab.run.session import session_from_run
from classlab.rundir import RunFiles
from classlab.tools.export import export
from classlab.tools.predict import load_model, predict

pytestmark = pytest.mark.usefixtures("one_thread")


def _pictures(folder: Path) -> list[Path]:
    """Pictures of several sizes, modes and formats (the kinds a user has)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    made = []

    def save(name: str, img: Image.Image, **kw) -> None:
        img.save(folder / name, **kw)
        made.append(folder / name)

    save("photo.jpg", Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)),
         quality=90)
    save("grey.png", Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), "L"))
    save("alpha.png", Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8), "RGBA"))
    save("palette.png", Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
         .convert("P"))
    save("deep.png", Image.fromarray(rng.integers(0, 65536, (36, 36), dtype=np.uint16)
                                     .astype(np.int32), "I").convert("I;16"))
    (folder / "sub").mkdir(exist_ok=True)
    save("sub/small.png", Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)))
    return made


def test_predict_equals_classlab_evaluation_of_the_same_pixels(tiny_run, tmp_path):
    files = _pictures(tmp_path / "pics")
    lm = load_model(tiny_run)
    preds, bad = predict(lm, [tmp_path / "pics"], top_k=10)
    assert not bad and sorted(p.path for p in preds) == sorted(files)  # recursive, all modes
    # the same pixels through the run's own evaluation (its session, normalisation, TTA)
    s, _ = session_from_run(tiny_run)
    pixels = torch.from_numpy(np.stack([read_image(p.path, 32) for p in preds])
                              ).permute(0, 3, 1, 2).contiguous()
    ev = evaluate(s.eval_model, pixels, torch.zeros(len(pixels), dtype=torch.long),
                  normalize=s.normalize, batch_size=7, amp=s.amp, keep_outputs=True,
                  tta=s.cfg.train.tta)
    for p, probs in zip(preds, ev.probs):
        got = dict(p.top)
        assert p.top[0][0] == s.splits.classes[int(probs.argmax())]
        for k, cls in enumerate(s.splits.classes):
            assert got[cls] == pytest.approx(float(probs[k]), abs=1e-6)
    big = {p.path.name: p.factor for p in preds}
    assert big["photo.jpg"] == pytest.approx(20.0)  # 640 / 32: said in the output


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    a = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(a.astype(np.int32), "I").convert("I;16").save(tmp_path / "d.png")
    rgb = read_image(tmp_path / "d.png", 32)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and 120 <= rgb[16, 0, 0] <= 135


def test_unreadable_files_are_named_and_the_others_predicted(tiny_run, tmp_path, capsys):
    _pictures(tmp_path / "pics")
    (tmp_path / "pics" / "text.png").write_text("not a picture")
    (tmp_path / "pics" / "cut.jpg").write_bytes((tmp_path / "pics" / "photo.jpg")
                                                .read_bytes()[:200])
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(tmp_path / "pics"), str(tmp_path / "nope.png"),
                 "--out", str(out)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("classlab predict: ") for line in err)
    assert {Path(line.split(": ")[1]).name for line in err} == {"text.png", "cut.jpg",
                                                                "nope.png"}
    rows = out.read_text().splitlines()
    assert rows[0].startswith("path,scale,class1,prob1") and len(rows) == 1 + 6
    assert "scaled to 32x32" in captured.out and "not calibrated" in captured.out
    assert "[resized from 20x the training size]" in captured.out


def test_predict_uses_the_temperature_the_diagnosis_fitted(tiny_run, copy_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    files = _pictures(tmp_path / "pics")[:2]
    plain = {p.path: p.top for p in predict(load_model(run), files, 10)[0]}
    RunFiles(run).diagnose.mkdir(exist_ok=True)
    RunFiles(run).diagnose_json.write_text(json.dumps({"calibration": {"temperature": 2.0}}))
    lm = load_model(run)
    assert lm.temperature == 2.0 and "T = 2.000" in lm.how()
    for p in predict(lm, files, 10)[0]:
        before = dict(plain[p.path])
        logits = torch.log(torch.tensor([before[c] for c in lm.classes]))
        want = (logits / 2.0).softmax(0)
        assert [v for _, v in p.top] == pytest.approx(sorted(want.tolist(), reverse=True),
                                                      abs=1e-5)


def test_predict_cam_writes_one_overlay_per_picture(tiny_run, tmp_path):
    _pictures(tmp_path / "pics")
    out = tmp_path / "o" / "p.csv"
    out.parent.mkdir()
    assert main(["predict", str(tiny_run), str(tmp_path / "pics"), "--out", str(out),
                 "--cam", "gradcam"]) == 0
    overlays = sorted(p.name for p in (tmp_path / "o" / "p").iterdir())
    assert len(overlays) == 6 and all(n.endswith(".cam.png") for n in overlays)
    assert main(["predict", str(tiny_run), str(tmp_path / "pics"), "--cam", "nope",
                 "--out", str(tmp_path / "n.csv")]) == 2
    assert not (tmp_path / "n.csv").exists()  # refused before anything is written


def test_api_predict(tiny_run, tmp_path):
    files = _pictures(tmp_path / "pics")
    got = classlab.load_run(tiny_run).predict(files[0], top=2)
    assert len(got) == 1 and len(got[0]["top"]) == 2 and got[0]["path"] == files[0]


# --------------------------------------------------------------------------- export


def _fake_run(folder: Path, model: str, norm: str, activation: str = "auto") -> Path:
    """A run folder with a checkpoint of a random ``model``/``norm`` net (no training)."""
    cfg = config.from_dict({"name": f"{model}-{norm}", "model": {"name": model, "norm": norm,
                                                                "width": 4, "gn_groups": 2,
                                                                "activation": activation},
                            "data": {"name": "synthetic", "synthetic_size": 60},
                            "train": {"precision": "fp32", "channels_last": False,
                                      "device": "cpu", "threads": 1}})
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    net = build_model(cfg.model, 10)
    if hasattr(net, "init_from_data"):
        net.init_from_data(torch.randn(64, 3, 32, 32))
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    (folder / "config.yaml").write_text(config.dump(cfg))
    torch.save({"model": net.state_dict(), "epoch": 1, "config": config.to_dict(cfg),
                "classes": [f"c{i}" for i in range(10)], "mean": [0.4, 0.5, 0.6],
                "std": [0.2, 0.25, 0.3]}, folder / "last.pt")
    return folder


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("norm", NORMS)
def test_export_matches_classlab_for_every_model_and_norm(tmp_path, model, norm, fmt):
    run = _fake_run(tmp_path / "run", model, norm)
    path, diff = export(run, fmt, tmp_path / f"m.{fmt}")
    assert diff <= 1e-4, diff  # the parity check printed after export
    x = torch.rand(5, 3, 32, 32)  # another batch size than the export's example
    lm = load_model(run, "cpu")
    want = lm.logits((x * 255).round().to(torch.uint8)).softmax(1)
    raw = (x * 255).round() / 255
    if fmt == "onnx":
        import onnx
        import onnxruntime as ort

        got = ort.InferenceSession(str(path)).run(["logits"], {"image": raw.numpy()})[0]
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    else:
        files = {"classlab.json": ""}
        got = torch.jit.load(str(path), _extra_files=files)(raw).detach().numpy()
        meta = json.loads(files["classlab.json"])
    assert got.shape == (5, 10)
    assert np.abs(torch.from_numpy(got).softmax(1).numpy() - want.numpy()).max() <= 1e-4
    assert json.loads(meta["classes"]) == [f"c{i}" for i in range(10)]
    assert json.loads(meta["mean"]) == pytest.approx([0.4, 0.5, 0.6])
    assert meta["input"].startswith("[N,3,32,32]")


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu"])
def test_export_keeps_the_configured_activation(tmp_path, activation):
    """fast94_8ep trains fastnet with SiLU: the exported graph must compute what classlab does."""
    run = _fake_run(tmp_path / "run", "fastnet", "bn", activation)
    want = {"gelu": torch.nn.GELU, "relu": torch.nn.ReLU, "silu": torch.nn.SiLU}[activation]
    assert isinstance(load_model(run, "cpu").model.block2.act, want)  # the run's net, reloaded
    path, diff = export(run, "onnx", tmp_path / "m.onnx")
    assert diff <= 1e-4, diff
    import onnx

    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    if activation == "relu":
        assert "Relu" in ops, ops  # the blocks' ReLU, beside the whitening layer's GELU


def test_export_without_onnx_names_the_extra(tmp_path, monkeypatch, capsys):
    run = _fake_run(tmp_path / "run", "resnet18", "bn")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert main(["export", str(run), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classlab[export]" in err[0] and "onnxruntime" in err[0]
    assert not (run / "model.onnx").exists()
    assert main(["export", str(run), "--format", "keras"]) == 2


# --------------------------------------------------------------------------- model card


def test_model_card_front_matter_parses_and_its_numbers_are_the_summarys(tiny_run, copy_run,
                                                                         tmp_path):
    run = copy_run(tiny_run, tmp_path)
    assert main(["report", str(run)]) == 0
    text = (run / "model_card.md").read_text()
    assert text.startswith("---\n")
    head = yaml.safe_load(text.split("---\n")[1])
    summary = json.loads((run / "summary.json").read_text())
    result = head["model-index"][0]["results"][0]
    assert head["model-index"][0]["name"] == summary["name"]
    assert result["dataset"]["type"] == "synthetic" and result["dataset"]["split"] == "test"
    (metric,) = result["metrics"]
    assert metric["type"] == "accuracy"
    assert metric["value"] == pytest.approx(summary["final"]["test_acc"], abs=1e-4)
    body = text.split("---\n", 2)[2]
    assert f"{summary['final']['test_acc']:.2f}%" in body
    for section in ("## Training", "## Evaluation", "## Limitations", "## Intended use"):
        assert section in body
