"""CAMs against their definitions, hook hygiene, and ``diagnose_run`` / ``classlab diagnose``
on a tiny synthetic run (fixtures ``tiny_run`` / ``tiny_diagnosed`` in conftest.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import count_hooks
from torch import nn

from classlab import cli
from classlab.diagnose import CAMS, DiagnoseError, capture, compute_cams
from classlab.models import MODELS
from classlab.run.diagnosis import diagnose_run
from classlab.run.fit import fit
from classlab.run.session import session_from_run
from classlab.run.start import start_run

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- references


def _reference(model: nn.Module, x: torch.Tensor, layer: str, targets: torch.Tensor | None,
               method: str = "gradcam") -> torch.Tensor:
    """The CAM of each image on its own: forward to the layer via a hook, d y_c / d A with
    torch.autograd.grad, the method's formula, bilinear upsampling, min-max to [0,1]."""
    module = dict(model.named_modules())[layer]
    out = []
    for i in range(len(x)):
        store: dict[str, torch.Tensor] = {}
        handle = module.register_forward_hook(lambda _m, _i, o, st=store: st.update(a=o))
        try:
            logits = model(x[i:i + 1])  # [1,C]
        finally:
            handle.remove()
        c = int(logits.argmax()) if targets is None else int(targets[i])
        (g,) = torch.autograd.grad(logits[0, c], store["a"])
        a, g = store["a"][0].detach(), g[0]  # [K,h,w]
        if method == "gradcam":
            alpha = g.mean(dim=(1, 2))  # [K]
            cam = torch.relu((alpha[:, None, None] * a).sum(0))
        elif method == "layercam":
            cam = torch.relu((torch.relu(g) * a).sum(0))
        else:  # gradcampp, written out per channel k and position (i, j)
            s = a.sum(dim=(1, 2))  # [K]
            w = torch.zeros(a.shape[0])
            for k in range(a.shape[0]):
                num = g[k] ** 2
                den = 2 * g[k] ** 2 + s[k] * g[k] ** 3
                coef = torch.where((g[k] != 0) & (den != 0), num / den, torch.zeros_like(num))
                w[k] = (coef * torch.relu(g[k])).sum()
            cam = torch.relu((w[:, None, None] * a).sum(0))
        up = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear",
                           align_corners=False)[0, 0]
        span = up.max() - up.min()
        out.append((up - up.min()) / span if span > 0 else torch.zeros_like(up))
    return torch.stack(out)


@pytest.mark.parametrize("target_mode", ["pred", "given"])
def test_gradcam_matches_definition(net: nn.Module, target_mode: str) -> None:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = None if target_mode == "pred" else torch.tensor([3, 0, 9, 5])
    maps = compute_cams(net, x, LAYERS, "gradcam", targets)
    assert list(maps) == LAYERS
    live = 0
    for layer in LAYERS:
        ref = _reference(net, x, layer, targets)
        torch.testing.assert_close(maps[layer], ref, atol=2e-5, rtol=1e-4)
        live += int((ref.flatten(1).amax(1) > 0).sum())
    assert live >= 12, "degenerate test input: most maps are flat"


def test_default_target_is_the_prediction(net: nn.Module) -> None:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    pred = net(x).argmax(1)
    a = compute_cams(net, x, ["layer3"], "gradcam")
    b = compute_cams(net, x, ["layer3"], "gradcam", pred)
    torch.testing.assert_close(a["layer3"], b["layer3"])


@pytest.mark.parametrize("method", ["gradcampp", "layercam"])
def test_other_cams_match_definition(net: nn.Module, method: str) -> None:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([1, 7, 2])
    maps = compute_cams(net, x, ["layer2", "layer4"], method, targets)
    for layer in ("layer2", "layer4"):
        torch.testing.assert_close(maps[layer], _reference(net, x, layer, targets, method),
                                   atol=2e-5, rtol=1e-4)


def _stages(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Top-level children with a spatial output (the natural CAM layers of any model)."""
    shapes: dict[str, torch.Size] = {}

    def record(name: str):
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:  # must return None
            shapes.setdefault(name, out.shape)
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in model.named_children()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [n for n, s in shapes.items() if len(s) == 4 and s[-1] * s[-2] > 1]


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("method", sorted(CAMS))
def test_every_model_and_cam_gives_unit_maps(model_name: str, method: str) -> None:
    torch.manual_seed(0)
    model = MODELS[model_name](num_classes=10, norm_layer=nn.BatchNorm2d, width=4).eval()
    x = torch.randn(2, 3, 36, 28)  # any size the network accepts; maps follow it
    layers = _stages(model, x)
    if model_name.startswith("resnet"):
        assert LAYERS == [n for n in layers if n.startswith("layer")]
    assert layers
    maps = compute_cams(model, x, layers, method)
    assert list(maps) == layers
    for layer in layers:
        m = maps[layer]
        assert m.shape == (2, 36, 28) and m.dtype == torch.float32
        assert torch.isfinite(m).all()
        assert m.min() >= 0 and m.max() <= 1
    assert count_hooks(model) == 0


# --------------------------------------------------------------------------- flat maps


class _Const(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a * 0 + 1  # constant activations, gradients still flow


class _Ones(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(a)  # not even in the autograd graph


class _Tiny(nn.Module):
    """conv -> ``flat`` -> mean -> linear, with four ways to make the CAM at ``flat`` flat."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.flat = {"constant": _Const(), "no_graph": _Ones()}.get(mode, nn.Identity())
        self.head = nn.Linear(4, 10)
        if mode == "zero_activations":
            nn.init.zeros_(self.conv.weight)
            nn.init.constant_(self.conv.bias, -1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.flat(torch.relu(self.conv(x)))  # [N,4,H,W]
        pooled = a.mean(dim=(2, 3))
        if self.mode == "zero_gradient":
            pooled = pooled * 0  # the logits no longer depend on the layer
        return self.head(pooled)


@pytest.mark.parametrize("mode", ["constant", "zero_gradient", "zero_activations",
                                  "no_graph"])
@pytest.mark.parametrize("method", sorted(CAMS))
def test_flat_map_is_zero_not_nan(mode: str, method: str) -> None:
    torch.manual_seed(0)
    model = _Tiny(mode)
    maps = compute_cams(model, torch.randn(3, 3, 8, 8), ["flat"], method)
    assert maps["flat"].shape == (3, 8, 8)
    if mode == "zero_gradient" and not CAMS[method].class_specific:
        # Eigen-CAM reads the activations only, so a head that ignores them changes nothing
        assert torch.isfinite(maps["flat"]).all() and bool((maps["flat"].amax((1, 2)) == 1).all())
        return
    assert torch.equal(maps["flat"], torch.zeros(3, 8, 8))


# --------------------------------------------------------------------------- hooks


def test_compute_cams_leaves_no_hooks_grads_or_mode(net: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    net.train()
    try:
        first = compute_cams(net, x, LAYERS, "gradcam")
        assert net.training  # restored
        second = compute_cams(net, x, LAYERS, "gradcam")
    finally:
        net.eval()
    assert count_hooks(net) == 0
    assert all(p.grad is None for p in net.parameters())
    for layer in LAYERS:  # nothing carried over from the first call
        torch.testing.assert_close(first[layer], second[layer])


def test_capture_records_and_always_removes(net: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    with capture(net, "layer2") as cap:
        logits = net(x)
        assert count_hooks(net) == 1
        (g,) = torch.autograd.grad(logits[:, 0].sum(), cap.activations)
    assert cap.activations.shape == (2, 8, 16, 16)
    torch.testing.assert_close(cap.gradients, g)
    seen = cap.activations
    net(x)  # after exit the hook is gone: nothing is recorded any more
    assert cap.activations is seen and count_hooks(net) == 0

    with pytest.raises(ValueError, match="boom"), capture(net, "layer3"):
        net(x)
        raise ValueError("boom")
    assert count_hooks(net) == 0


def test_capture_keeps_the_last_call_of_a_shared_module() -> None:
    act = nn.Tanh()
    lin = nn.Linear(3, 3)
    model = nn.Sequential()
    model.add_module("act", act)
    model.add_module("lin", lin)
    model.forward = lambda x: lin(act(lin(act(x))))  # ``act`` runs twice
    x = torch.randn(2, 3)
    with capture(model, "act") as cap:
        y = model(x)
        second = torch.tanh(lin(torch.tanh(x)))
        torch.testing.assert_close(cap.activations, second)
        (g,) = torch.autograd.grad(y.sum(), cap.activations)
    torch.testing.assert_close(cap.gradients, g)


def test_compute_cams_removes_hooks_when_it_fails(net: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(DiagnoseError, match="targets"):
        compute_cams(net, x, LAYERS, "gradcam", torch.tensor([1, 99]))  # after the forward
    assert count_hooks(net) == 0 and not net.training
    with pytest.raises(DiagnoseError, match="unknown layer 'nope'"):
        compute_cams(net, x, ["layer1", "nope"])
    with pytest.raises(DiagnoseError, match="eigencam, gradcam, gradcampp, hirescam, "
                                            "layercam, scorecam, xgradcam$"):
        compute_cams(net, x, ["layer1"], "cam")
    assert count_hooks(net) == 0


# --------------------------------------------------------------------------- diagnose_run


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


OUTPUTS = ["curves.png", "mistakes.png", "per_class.csv", "per_class.png", "confusion.csv",
           "confusion.png", "confused_pairs.csv", "cam_mistakes.png", "cam_pred_vs_true.png",
           "reliability.png", "confidence_hist.png", "faithfulness.csv", "faithfulness.png",
           "sanity.csv", "sanity.png", "sanity_maps.png", "diagnose.json"]


def test_diagnose_run_writes_everything(tiny_diagnosed: tuple) -> None:
    from PIL import Image

    run_dir, res = tiny_diagnosed
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in OUTPUTS:
        assert (run_dir / "diagnose" / name).is_file(), name
        if name.endswith(".png"):
            with Image.open(run_dir / "diagnose" / name) as im:
                assert im.format == "PNG" and min(im.size) > 50
    assert all(Path(p).is_file() for p in res["files"].values())

    rows = _csv(run_dir / "predictions.csv")
    assert rows[0] == ["index", "true", "pred", "confidence", "loss", "true_name", "pred_name"]
    body = rows[1:]
    n = summary["test_images"]
    assert len(body) == n and [int(r[0]) for r in body] == list(range(n))
    acc = 100.0 * sum(r[1] == r[2] for r in body) / n
    assert acc == pytest.approx(summary["final"]["test_acc"], abs=1e-9)
    assert res["test_acc"] == pytest.approx(acc)
    classes = summary["classes"]
    assert all(classes[int(r[1])] == r[5] and classes[int(r[2])] == r[6] for r in body)

    k = len(classes)
    cm_rows = _csv(run_dir / "diagnose" / "confusion.csv")
    assert cm_rows[0][1:] == classes and [r[0] for r in cm_rows[1:]] == classes
    cm = torch.tensor([[int(v) for v in r[1:]] for r in cm_rows[1:]])
    assert cm.shape == (k, k) and int(cm.sum()) == n
    assert int(cm.trace()) == sum(r[1] == r[2] for r in body)

    per_class = _csv(run_dir / "diagnose" / "per_class.csv")[1:]
    assert [int(r[3]) for r in per_class] == cm.diagonal().tolist()
    pairs = _csv(run_dir / "diagnose" / "confused_pairs.csv")
    assert pairs[0] == ["true", "pred", "count"] and 0 < len(pairs) - 1 <= 10
    counts = [int(r[2]) for r in pairs[1:]]
    assert counts == sorted(counts, reverse=True)
    for t, p, c in pairs[1:]:
        assert t != p and int(cm[classes.index(t), classes.index(p)]) == int(c)
    off = cm.clone().fill_diagonal_(0)
    assert counts[0] == int(off.max())

    # The gallery: the most confident mistakes, most confident first.
    diag = json.loads((run_dir / "diagnose" / "diagnose.json").read_text())
    shown = diag["shown_images"]
    wrong = [r for r in body if r[1] != r[2]]
    assert len(shown) == min(6, len(wrong)) == diag["shown"]
    confs = [s["confidence"] for s in shown]
    assert confs == sorted(confs, reverse=True)
    assert confs[0] == pytest.approx(max(float(r[3]) for r in wrong), rel=1e-5)
    assert all(s["true"] != s["pred"] for s in shown)
    assert diag["layers"] == LAYERS and diag["method"] == "gradcam"
    assert set(diag["seconds"]) >= {"predictions", "calibration", "cams", "faithfulness",
                                    "sanity", "total"}
    assert not (run_dir / "diagnose" / "cam_methods.png").exists()  # only with --method all


def test_diagnose_reports_calibration_from_test_and_validation(tiny_diagnosed: tuple) -> None:
    """ECE of the saved test outputs; T fitted on the validation split alone."""
    from classlab.diagnose.calibration import ece, fit_temperature, mce, probs_to_logits
    from classlab.engine import evaluate
    from classlab.rundir import RunFiles
    from classlab.rundir.checkpoint import read_test_outputs

    run_dir, _ = tiny_diagnosed
    cal = json.loads((run_dir / "diagnose" / "diagnose.json").read_text())["calibration"]
    saved = read_test_outputs(RunFiles(run_dir).test_outputs)
    assert cal["ece"] == pytest.approx(ece(saved["probs"], saved["labels"]), abs=1e-12)
    assert cal["mce"] == pytest.approx(mce(saved["probs"], saved["labels"]), abs=1e-12)
    assert sum(cal["bins"]["count"]) == cal["n"] == len(saved["labels"])
    assert len(cal["bins"]["count"]) == 15
    s, _ = session_from_run(run_dir)
    val_x, val_y = s.data["val"]
    ev = evaluate(s.model, val_x, val_y, normalize=s.normalize, batch_size=1000, amp=s.amp,
                  keep_outputs=True)
    t = fit_temperature(probs_to_logits(ev.probs), val_y)
    assert cal["temperature"] == pytest.approx(t, rel=1e-4)
    assert cal["val_images"] == len(val_x) > 0 and cal["ece_scaled"] is not None


def test_diagnose_checks_the_cams_it_shows(tiny_diagnosed: tuple) -> None:
    run_dir, _ = tiny_diagnosed
    diag = json.loads((run_dir / "diagnose" / "diagnose.json").read_text())
    cells = {"layer1": [32, 32], "layer2": [16, 16], "layer3": [8, 8], "layer4": [4, 4]}
    assert diag["layer_cells"] == cells
    faith = diag["faithfulness"]
    assert (faith["steps"], faith["fill"], faith["images"]) == (16, "mean", 6)
    assert [(r["method"], r["layer"], r["cells"]) for r in faith["rows"]] == \
        [("gradcam", layer, c) for layer, c in cells.items()]
    for r in faith["rows"]:
        assert 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1
        assert r["better_than_chance"] == (r["gain"] > 2 * r["gain_se"])
    rows = _csv(run_dir / "diagnose" / "faithfulness.csv")
    assert rows[0][:2] == ["method", "layer"] and len(rows) == 5
    assert float(rows[4][4]) == pytest.approx(faith["rows"][3]["deletion_auc"], rel=1e-5)
    sanity = diag["sanity"]
    assert sanity["steps"] == ["linear", "layer4", "layer3", "layer2", "layer1", "bn1",
                               "conv1"]
    assert sanity["images"] == 6 and len(sanity["rows"]) == 4
    assert all(len(r["rho"]) == 7 for r in sanity["rows"])
    assert len(_csv(run_dir / "diagnose" / "sanity.csv")) == 1 + 4 * 7
    # ResNet18's layer4 is 4x4 for 32x32 images: the one coarse layer
    assert [c["layer"] for c in diag["coarse"]] == ["layer4"]
    assert "8x8 pixels" in diag["coarse"][0]["note"]


def test_diagnose_run_with_a_session_and_options(tiny_run: Path, tmp_path: Path,
                                                 copy_run) -> None:
    run_dir = copy_run(tiny_run, tmp_path)
    s, _ = session_from_run(run_dir)
    s.model.train()
    x_val, y_val = s.data["val"]
    s.data["val"] = (x_val[:0], y_val[:0])  # as with data.val_split=0
    res = diagnose_run(run_dir, session=s, layers=["layer4", "layer2.1.conv2"],
                       method="layercam", count=2, target="true")
    assert res["layers"] == ["layer4", "layer2.1.conv2"] and res["shown"] == 2
    assert s.model.training  # the caller's mode is restored
    conv = s.model.conv1.weight
    assert conv.is_contiguous()  # memory format put back after the fast CPU pass
    assert (run_dir / "diagnose" / "cam_mistakes.png").is_file()
    cal = res["calibration"]
    assert cal["temperature"] is None and cal["ece_scaled"] is None
    assert "no validation split" in cal["note"]
    assert [(r["method"], r["layer"]) for r in res["faithfulness"]["rows"]] == \
        [("layercam", "layer4"), ("layercam", "layer2.1.conv2")]


def test_predictions_are_those_of_the_reported_weights_and_tta(tmp_path: Path) -> None:
    """With a weight EMA and flip TTA the run reports the EMA's TTA accuracy; diagnose must
    predict with the same weights and views, right after training and from last.pt."""
    from classlab import config

    cfg = config.from_dict({
        "name": "ema", "data": {"name": "synthetic", "synthetic_size": 200},
        "model": {"width": 4}, "log": {"dynamics_every": 0},
        "train": {"epochs": 1, "batch_size": 50, "progress": False, "device": "cpu",
                  "threads": 1, "ema_decay": 0.5, "tta": "flip", "precision": "fp32",
                  "channels_last": False},
        "diagnose": {"enabled": False}})
    s, run_dir = start_run(cfg, tmp_path)
    summary = fit(s, run_dir)
    for session in (s, None):
        res = diagnose_run(run_dir, session=session, layers=["layer4"], count=2)
        assert res["test_acc"] == pytest.approx(summary["final"]["test_acc"], abs=1e-9)
        assert res["test_loss"] == pytest.approx(summary["final"]["test_loss"], rel=1e-5)
        assert res["tta"] == "flip"


# --------------------------------------------------------------------------- CLI errors


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    rc = cli.main(["diagnose", *args])
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("args, message", [
    (["--layers", "layer1,foo"], "unknown layer 'foo'; valid: conv1, bn1, act, layer1, layer2"),
    (["--method", "cam"], "unknown method 'cam'; allowed: eigencam, gradcam, gradcampp, "
                          "hirescam, layercam, scorecam, xgradcam, all"),
    (["--count", "0"], "diagnose.count: 0"),
    (["--layers", "layer4,linear"], "'linear' outputs [10] per image, not a [channels, h, w] "
                                    "feature map; e.g. conv1, bn1, act, layer1"),
    (["--layers", "layer4,pool", "--method", "scorecam"],
     "'pool' gives a 1x1 map, too small for scorecam's masks (needs at least 2 cells)"),
    (["--layers", "pool", "--method", "all"], "too small for eigencam's masks"),
])
def test_cli_bad_input_is_one_line(tiny_run: Path, tmp_path: Path, copy_run,
                                   capsys: pytest.CaptureFixture, args: list[str],
                                   message: str) -> None:
    run_dir = copy_run(tiny_run, tmp_path)
    rc, err = _cli(capsys, str(run_dir), *args)
    assert rc == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    # checked before anything was computed or written
    assert not (run_dir / "predictions.csv").exists() and not (run_dir / "diagnose").exists()


def test_cli_run_without_checkpoint(tiny_run: Path, tmp_path: Path, copy_run,
                                    capsys: pytest.CaptureFixture) -> None:
    run_dir = copy_run(tiny_run, tmp_path, ("config.yaml", "summary.json", "metrics.csv"))
    rc, err = _cli(capsys, str(run_dir))
    assert rc == 2 and err.count("\n") == 1 and "last.pt" in err and "Traceback" not in err
    rc, err = _cli(capsys, str(tmp_path / "missing"))
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_cli_diagnose_writes_report(tiny_run: Path, tmp_path: Path, copy_run,
                                    capsys: pytest.CaptureFixture) -> None:
    run_dir = copy_run(tiny_run, tmp_path)
    rc = cli.main(["diagnose", str(run_dir), "--count", "3", "--layers", "layer3,layer4",
                   "--method", "gradcampp", "--target", "true"])
    out = capsys.readouterr().out
    assert rc == 0 and "Diagnose: test acc" in out and "Report:" in out
    diag = json.loads((run_dir / "diagnose" / "diagnose.json").read_text())
    assert (diag["method"], diag["layers"], diag["target"], diag["shown"]) == \
        ("gradcampp", ["layer3", "layer4"], "true", 3)
    assert (run_dir / "report.md").is_file() and (run_dir / "report.html").is_file()


def test_cli_method_all_compares_every_method(tiny_run: Path, tmp_path: Path, copy_run,
                                              capsys: pytest.CaptureFixture) -> None:
    from classlab.diagnose.trust import MAX_METHOD_IMAGES

    run_dir = copy_run(tiny_run, tmp_path)
    rc = cli.main(["diagnose", str(run_dir), "--method", "all", "--count", "3", "--layers",
                   "layer3,layer4"])
    assert rc == 0 and "Report:" in capsys.readouterr().out
    diag = json.loads((run_dir / "diagnose" / "diagnose.json").read_text())
    methods = sorted(CAMS)
    assert diag["method"] == "all" and diag["methods"] == methods
    assert diag["grid_method"] == "gradcam"
    pairs = [(m, layer) for m in methods for layer in ("layer3", "layer4")]
    assert [(r["method"], r["layer"]) for r in diag["faithfulness"]["rows"]] == pairs
    assert [(r["method"], r["layer"]) for r in diag["sanity"]["rows"]] == pairs
    assert diag["files"]["cam_methods"] == "diagnose/cam_methods.png"
    from PIL import Image

    with Image.open(run_dir / "diagnose" / "cam_methods.png") as im:
        # rows: the images, then one per method; 3 images (<= MAX_METHOD_IMAGES) per cell
        assert 3 <= MAX_METHOD_IMAGES and im.size[1] > (1 + len(methods)) * 64
    assert "### Every method on the same images" in (run_dir / "report.md").read_text()


def test_diagnose_reuses_the_last_epochs_test_outputs(tiny_run, tmp_path, monkeypatch):
    """The last training epoch saves per-image test outputs; diagnose reads them instead of
    running the test set through the model again, and they give the reported accuracy."""
    import shutil

    from classlab.run import session as session_module
    from classlab.rundir import RunFiles

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    outputs = RunFiles(run).test_outputs
    assert outputs.is_file()

    calls = []
    real = session_module.evaluate  # Session.evaluate: every evaluation of a split
    record = lambda *a, **k: calls.append((len(a[1]), k)) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(session_module, "evaluate", record)
    res = diagnose_run(run, count=2, layers=["layer4"])
    summary = json.loads((run / "summary.json").read_text())
    n_test, n_val = summary["test_images"], summary["val_images"]
    assert n_test != n_val
    # the validation split once (for calibration); the test set not again
    assert [n for n, _ in calls] == [n_val]
    assert res["test_acc"] == pytest.approx(summary["final"]["test_acc"])
    # a cache that belongs to another checkpoint is not trusted
    outputs.write_bytes(b"garbage")
    res2 = diagnose_run(run, count=2, layers=["layer4"])
    assert any(n == n_test and k.get("keep_outputs") for n, k in calls)
    assert res2["test_acc"] == pytest.approx(res["test_acc"])
