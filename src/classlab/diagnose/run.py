"""``classlab diagnose``: every table and figure of a run's diagnosis, from one pass of the
model over the test set (or the outputs the last epoch of training saved).

:func:`diagnose` reads as its steps: predict, then curves, mistakes, per-class and confusion,
calibration, CAMs, the checks of the CAMs (faithfulness, randomisation sanity check, coarse
maps; :mod:`classlab.diagnose.trust`), and diagnose.json. Loading a run folder's checkpoint
into a session is the run layer's (:func:`classlab.run.diagnosis.diagnose_run`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from classlab import config
from classlab.diagnose.cams import (
    CAMS,
    DiagnoseError,
    check_layers,
    compute_cams_by_method,
    module_named,
    valid_layers,
)
from classlab.diagnose.datastep import badge, data_step, label_issues_of
from classlab.diagnose.figures import (
    label,
    plot_cam_grid,
    plot_confusion,
    plot_curves,
    plot_mistakes,
    plot_per_class,
    plot_pred_vs_true,
    to_hwc,
)
from classlab.diagnose.tables import confusion_matrix, top_confused
from classlab.diagnose.trust import (
    calibration_step,
    coarse_notes,
    faithfulness_step,
    methods_figure,
    sanity_step,
)
from classlab.fmt import csv_number, is_nan
from classlab.models import build_model
from classlab.rundir import PREDICTION_FIELDS, RunFiles, make_folder, write_json
from classlab.rundir.checkpoint import load_test_outputs
from classlab.rundir.metrics import write_csv
from classlab.rundir.summary import read_summary


@dataclass
class Predictions:
    """The test set's predictions, on the CPU: labels, predicted classes, softmax, losses."""

    y: torch.Tensor  # [N] int64 true class
    pred: torch.Tensor  # [N] int64 predicted class
    probs: torch.Tensor  # [N,K] float32 softmax (averaged over TTA views' logits)
    losses: torch.Tensor  # [N] float32 per-image cross-entropy

    @property
    def conf(self) -> torch.Tensor:  # [N] probability of the predicted class
        return self.probs.gather(1, self.pred[:, None])[:, 0]

    @property
    def p_true(self) -> torch.Tensor:  # [N] probability of the true class
        return self.probs.gather(1, self.y[:, None])[:, 0]

    @property
    def correct(self) -> int:
        return int((self.pred == self.y).sum())


@dataclass
class Args:
    layers: list[str]
    method: str  # a CAMS name, or "all"
    count: int
    target: str
    image_hw: tuple[int, int] = (32, 32)  # the run's image size (pixels), for layer checks

    @property
    def methods(self) -> list[str]:
        """The CAM methods to compute: every one for ``all``."""
        return list(CAMS) if self.method == "all" else [self.method]

    @property
    def grid_method(self) -> str:
        """The method of the CAM grids (gradcam when every method is computed)."""
        return "gradcam" if self.method == "all" else self.method


# --------------------------------------------------------------------------- arguments


def check_args(model: nn.Module, a: Args) -> None:
    """One-line DiagnoseError for the first bad argument (``model`` may be a skeleton on the
    meta device: the layer sizes come from one forward pass of one blank image)."""
    if a.method not in CAMS and a.method != "all":
        raise DiagnoseError(f"diagnose.method: unknown method {a.method!r}; allowed: "
                            f"{', '.join(CAMS)}, all")
    if not a.layers:
        raise DiagnoseError("diagnose.layers: no layer given; valid: "
                            f"{', '.join(valid_layers(model))}")
    for name in a.layers:
        module_named(model, name)
    check_layers(model, a.layers, a.methods, a.image_hw)
    if not isinstance(a.count, int) or isinstance(a.count, bool) or a.count < 1:
        raise DiagnoseError(f"diagnose.count: {a.count!r} is out of range; must be ≥ 1")
    if a.target not in ("pred", "true"):
        raise DiagnoseError(f"diagnose.target: unknown value {a.target!r}; allowed: pred, "
                            "true")


def skeleton(state: dict) -> nn.Module:
    """The run's model built on the meta device (no memory, no init): for checking layer
    names before the data is loaded."""
    cfg = config.from_dict(state["config"])
    with torch.device("meta"):
        return build_model(cfg.model, num_classes=len(state.get("classes") or range(10)))


def resolve_args(cfg: Any, layers: list[str] | str | None, method: str | None,
                  count: int | None, target: str | None) -> Args:
    """The arguments given, else the run config's ``diagnose`` section."""
    if layers is None:
        layers = cfg.diagnose.layers
    elif isinstance(layers, str):  # "layer1,layer4", as on the command line
        layers = [x for x in layers.split(",") if x]
    # Every dataset but imagefolder is 32x32 (classlab.data); imagefolder's is configured.
    side = cfg.data.image_size if cfg.data.name == "imagefolder" else 32
    return Args(list(dict.fromkeys(layers)),  # unique, in order
                cfg.diagnose.method if method is None else method,
                cfg.diagnose.count if count is None else count,
                cfg.diagnose.target if target is None else target,
                (side, side))


# --------------------------------------------------------------------------- predictions


def predict(s, files: RunFiles, ckpt_epoch: int | None) -> Predictions:
    """The test set's predictions with the run's test-time augmentation (the predictions
    behind its reported test accuracy): the outputs the last epoch of training saved for
    this checkpoint, recomputed only when they are missing or belong to another one."""
    x_u8, y_dev = s.data["test"]
    saved = load_test_outputs(files.test_outputs, ckpt_epoch, len(x_u8))
    if saved is not None:
        probs, losses = saved
        return Predictions(y_dev.cpu(), probs.argmax(1), probs.float(), losses.float())
    # the run's own precision and memory format (s.amp, s.normalize), as in training
    ev = s.evaluate("test", keep_outputs=True)
    return Predictions(y_dev.cpu(), ev.preds, ev.probs.float(), ev.losses.float())


def _write_predictions(path: Path, p: Predictions, classes: list[str]) -> None:
    write_csv(path, PREDICTION_FIELDS,
              [[i, int(a), int(b), csv_number(float(c)), csv_number(float(lo)), classes[a],
                classes[b]]
               for i, (a, b, c, lo) in enumerate(zip(p.y.tolist(), p.pred.tolist(),
                                                     p.conf.tolist(), p.losses.tolist()))])


# --------------------------------------------------------------------------- the steps


def most_confident_mistakes(p: Predictions, count: int) -> torch.Tensor:
    """Test-set indices of up to ``count`` misclassified images, most confident first (then
    highest loss, then lowest index)."""
    wrong = torch.nonzero(p.pred != p.y)[:, 0]  # [M]
    conf = p.conf
    order = np.lexsort((wrong.numpy(), -p.losses[wrong].numpy(), -conf[wrong].numpy()))
    return wrong[torch.from_numpy(order[:count]).long()]


def _per_class(cm: torch.Tensor, classes: list[str]) -> list[dict]:
    support = cm.sum(1)
    return [{"class": classes[i], "images": int(support[i]), "correct": int(cm[i, i]),
             "accuracy": (100.0 * int(cm[i, i]) / int(support[i])
                          if int(support[i]) else float("nan"))} for i in range(len(classes))]


def _tables(p: Predictions, classes: list[str], files: RunFiles) -> tuple[list, list]:
    """per_class.csv/.png, confusion.csv/.png, confused_pairs.csv; (per_class, pairs)."""
    cm = confusion_matrix(p.y, p.pred, len(classes))  # [K,K]
    per_class = _per_class(cm, classes)
    write_csv(files.per_class_csv, ["class_id", "class", "images", "correct", "accuracy"],
              [[i, r["class"], r["images"], r["correct"], csv_number(r["accuracy"])]
               for i, r in enumerate(per_class)])
    plot_per_class(classes, [r["accuracy"] for r in per_class], files.per_class,
                   100.0 * p.correct / len(p.y))
    write_csv(files.confusion_csv, ["true\\pred", *classes],
              [[classes[i], *cm[i].tolist()] for i in range(len(classes))])
    plot_confusion(cm.numpy(), classes, files.confusion)
    pairs = [{"true": classes[a], "pred": classes[b], "count": c}
             for a, b, c in top_confused(cm, 10)]
    write_csv(files.confused_pairs, ["true", "pred", "count"],
              [[q["true"], q["pred"], q["count"]] for q in pairs])
    return per_class, pairs


@dataclass
class Shown:
    """The CAMs of the shown images for the chosen target, kept for the checks."""

    x: torch.Tensor  # [m,3,H,W] normalised images, on the run's device
    targets: torch.Tensor  # [m] int64 class ids the maps explain
    maps: dict[str, dict[str, torch.Tensor]]  # method -> layer -> [m,H,W] in [0,1]


def _cams(s, model: nn.Module, p: Predictions, shown: torch.Tensor, a: Args,
          files: RunFiles, images: np.ndarray, titles: list[str], classes: list[str],
          normalize: Any) -> Shown:
    """cam_mistakes.png (the shown images, chosen target, every layer) and
    cam_pred_vs_true.png (the first <=10 again, both targets, last layer), both of
    ``a.grid_method``: one batch, one forward pass and (for gradient methods) one backward
    pass for every method of ``a.methods``."""
    x_u8 = s.data["test"][0]
    m, m2, last, grid_m = len(shown), min(len(shown), 10), a.layers[-1], a.grid_method
    grid: dict[str, np.ndarray] = {name: np.zeros((0,)) for name in a.layers}
    cam_pred = cam_true = np.zeros((0,))
    kept = Shown(normalize(x_u8[:0]), torch.zeros(0, dtype=torch.long, device=x_u8.device),
                 {meth: {} for meth in a.methods})
    if m:
        first, other = ((p.pred[shown], p.y[shown]) if a.target == "pred"
                        else (p.y[shown], p.pred[shown]))
        idx = torch.cat([shown, shown[:m2]]).to(x_u8.device)
        x = normalize(x_u8[idx])
        targets = torch.cat([first, other[:m2]]).to(x_u8.device)
        maps = compute_cams_by_method(model, x, a.layers, a.methods, targets, amp=s.amp,
                                      batch_size=s.cfg.train.eval_batch_size)
        kept = Shown(x[:m], targets[:m],
                     {meth: {name: v[:m] for name, v in per.items()}
                      for meth, per in maps.items()})
        shown_maps = {name: v.cpu().numpy() for name, v in maps[grid_m].items()}
        grid = {name: v[:m] for name, v in shown_maps.items()}  # [m,H,W] each
        extra = shown_maps[last][m:]  # [m2,H,W], the other target, last layer
        cam_pred, cam_true = ((grid[last][:m2], extra) if a.target == "pred"
                              else (extra, grid[last][:m2]))
    plot_cam_grid(images, grid, titles, files.cam_mistakes,
                  f"{grid_m} on the most confident mistakes (target: "
                  f"{'predicted' if a.target == 'pred' else 'true'} class)")
    conf, p_true = p.conf, p.p_true
    plot_pred_vs_true(images[:m2], cam_pred, cam_true,
                      [(classes[int(p.y[i])], classes[int(p.pred[i])], float(conf[i]),
                        float(p_true[i])) for i in shown[:m2]], last, grid_m,
                      files.cam_pred_vs_true)
    return kept


# --------------------------------------------------------------------------- the run


@contextlib.contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    """Add the body's wall time to ``seconds[step]`` (diagnose.json's timing of each step)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        seconds[step] = seconds.get(step, 0.0) + time.perf_counter() - t


def diagnose(s, run_dir: Path, a: Args, checkpoint_epoch: int | None = None,
             seconds: dict[str, float] | None = None) -> dict:
    """Write predictions.csv and ``run_dir/diagnose/*`` for the session ``s``, whose model
    holds the run's evaluated weights (the run flow's :func:`classlab.run.diagnosis.diagnose_run`
    builds it from ``last.pt`` when needed). ``a``: checked arguments (:func:`check_args`);
    ``checkpoint_epoch``: the epoch those weights are from (None: summary.json's)."""
    t_start, seconds = time.perf_counter(), dict(seconds or {})
    run_dir, files = Path(run_dir), RunFiles(run_dir)
    model, classes = s.eval_model, list(s.splits.classes)
    if len(s.data["test"][0]) == 0:
        raise DiagnoseError(f"{run_dir}: the test split is empty")
    # The layers' map sizes (h, w), checked on the real model before anything is written.
    image_hw = tuple(s.data["test"][0].shape[-2:])
    cells = check_layers(model, a.layers, a.methods, image_hw)
    make_folder(files.diagnose)
    epoch = checkpoint_epoch if checkpoint_epoch is not None else _epochs_done(files)

    with _timed(seconds, "predictions"):
        p = predict(s, files, epoch)
        _write_predictions(files.predictions, p, classes)
    with _timed(seconds, "data_issues"):
        issues = label_issues_of(s, files, p.probs, p.y)
    with _timed(seconds, "curves"):
        has_curves = plot_curves(run_dir, files.curves)
    with _timed(seconds, "mistakes"):
        shown = most_confident_mistakes(p, a.count)  # [m] test-set indices
        images = to_hwc(s.data["test"][0][shown.to(s.device)])  # uint8 [m,H,W,3]
        titles = [label(classes, int(p.y[i]), int(p.pred[i]), float(p.conf[i])) for i in shown]
        suspected = issues.suspected_test(shown.tolist())  # badged: label suspected
        titles = badge(titles, suspected)
        plot_mistakes(images, titles, files.mistakes, framed=suspected)
    with _timed(seconds, "confusion"):
        per_class, pairs = _tables(p, classes, files)
    with _timed(seconds, "calibration"):
        calibration = calibration_step(s, p.probs, p.y, files)
    with _timed(seconds, "cams"):  # the run's memory format (s.normalize) and precision
        kept = _cams(s, model, p, shown, a, files, images, titles, classes, s.normalize)
    with _timed(seconds, "data_issues"):
        data_issues, data_files = data_step(s, files, issues, shown, a.count)

    checks = _check_cams(s, model, kept, a, cells, image_hw, images, files, seconds)
    seconds["total"] = time.perf_counter() - t_start + seconds.get("load", 0.0)
    result = _result(run_dir, epoch, p, shown, a, s.cfg.train.tta, classes, per_class, pairs,
                     seconds)
    result.update(calibration=calibration, data_issues=data_issues, **checks)
    written = {**_written(files, has_curves, bool(len(shown)), a.method == "all"), **data_files}
    write_json(files.diagnose_json, _jsonable(
        {**result, "files": {k: files.rel(v) for k, v in written.items()}}))
    n = len(p.y)
    print(f"Diagnose: test acc {result['test_acc']:.2f}% ({p.correct}/{n}), {n - p.correct} "
          f"misclassified ({len(shown)} shown), {a.method} at {', '.join(a.layers)}; "
          f"ECE {100 * calibration['ece']:.2f}%; {seconds['total']:.1f}s -> {files.diagnose}",
          flush=True)
    return {**result, "dir": files.diagnose, "files": written}


def _check_cams(s, model: nn.Module, kept: Shown, a: Args, cells: dict[str, tuple[int, int]],
               image_hw: tuple[int, int], images: np.ndarray, files: RunFiles,
               seconds: dict[str, float]) -> dict:
    """Faithfulness and the randomisation check of the shown CAMs (skipped, with a note, when
    no image is shown), the coarse-map notes, and with every method the comparison figure."""
    out: dict[str, Any] = {"methods": a.methods, "grid_method": a.grid_method,
                           "layer_cells": {k: list(v) for k, v in cells.items()},
                           "coarse": coarse_notes(cells, image_hw)}
    if not len(kept.x):
        note = "no misclassified test image: no CAM to check"
        return {**out, "faithfulness": {"note": note, "rows": []},
                "sanity": {"note": note, "rows": []}}
    t = time.perf_counter()
    out["faithfulness"] = faithfulness_step(s, model, kept.x, kept.targets, kept.maps, cells,
                                            a.layers, a.methods, files)
    seconds["faithfulness"] = time.perf_counter() - t
    t = time.perf_counter()
    out["sanity"] = sanity_step(s, model, kept.x, kept.targets, kept.maps, a.layers,
                                a.methods, images[0], files)
    seconds["sanity"] = time.perf_counter() - t
    if a.method == "all":
        t = time.perf_counter()
        methods_figure(images, kept.maps, out["faithfulness"]["rows"], cells, a.layers,
                       a.methods, files)
        seconds["methods_figure"] = time.perf_counter() - t
    return out


def _written(files: RunFiles, has_curves: bool, checked: bool,
             every_method: bool) -> dict[str, Path]:
    """What diagnose wrote, by the keys diagnose.json and the report use."""
    written = {"predictions": files.predictions, "curves": files.curves,
               "mistakes": files.mistakes, "per_class_csv": files.per_class_csv,
               "per_class": files.per_class, "confusion_csv": files.confusion_csv,
               "confusion": files.confusion, "confused_pairs": files.confused_pairs,
               "reliability": files.reliability, "confidence_hist": files.confidence_hist,
               "cam_mistakes": files.cam_mistakes, "cam_pred_vs_true": files.cam_pred_vs_true,
               "json": files.diagnose_json}
    if checked:  # CAMs were shown, so they were checked
        written.update(faithfulness_csv=files.faithfulness_csv,
                       faithfulness=files.faithfulness, sanity_csv=files.sanity_csv,
                       sanity=files.sanity, sanity_maps=files.sanity_maps)
        if every_method:
            written["cam_methods"] = files.cam_methods
    if not has_curves:
        del written["curves"]
    return written


def _result(run_dir: Path, epoch: int | None, p: Predictions, shown: torch.Tensor, a: Args,
            tta: str, classes: list[str], per_class: list, pairs: list,
            seconds: dict[str, float]) -> dict:
    n, correct, conf = len(p.y), p.correct, p.conf
    return {
        "run_dir": str(run_dir),
        "checkpoint_epoch": epoch,
        "test_images": n,
        "test_correct": correct,
        "test_acc": 100.0 * correct / n,
        "test_loss": float(p.losses.double().mean()),
        "mistakes": n - correct,
        "shown": len(shown),
        "count": a.count,
        "method": a.method,
        "layers": a.layers,
        "target": a.target,
        "tta": tta,
        "classes": classes,
        "per_class": per_class,
        "confused_pairs": pairs,
        "shown_images": [{"index": int(i), "true": classes[int(p.y[i])],
                          "pred": classes[int(p.pred[i])], "confidence": float(conf[i])}
                         for i in shown],
        "seconds": {key: round(v, 3) for key, v in seconds.items()},
    }


def _epochs_done(files: RunFiles) -> int | None:
    return (read_summary(files.summary) or {}).get("epochs_done")


def _jsonable(obj: Any) -> Any:
    """NaN is not JSON: write null instead."""
    if is_nan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj
