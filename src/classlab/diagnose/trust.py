"""Can the diagnosis be trusted? The steps of :func:`classlab.diagnose.run.diagnose` that
check it: calibration of the test predictions, and for the CAMs shown their faithfulness
(deletion / insertion against a random map), the model-randomisation sanity check, a note
for maps too coarse to localise, and (``--method all``) every method side by side.

Each step writes its CSV and figures into the run's ``diagnose/`` folder and returns the
JSON-ready part of diagnose.json.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from classlab.diagnose.calibration import (
    calibration_summary,
    confidence_and_correct,
    plot_confidence_hist,
    plot_reliability,
    probs_to_logits,
)
from classlab.diagnose.cams import CAMS, compute_cams_by_method
from classlab.diagnose.faithfulness import faithfulness
from classlab.diagnose.figures import (
    plot_cam_methods,
    plot_faithfulness,
    plot_sanity,
    plot_sanity_maps,
)
from classlab.diagnose.sanity import FLAG_RHO, randomisation_check
from classlab.fmt import csv_number, is_nan
from classlab.rundir import RunFiles
from classlab.rundir.metrics import write_csv

# Below this many cells per side an upsampled map cannot point at anything smaller than a
# fifth of the image (ResNet18's layer4 is 4x4 for 32x32 images).
COARSE_CELLS = 5
# Fixed seed of the random baseline maps, tie orders and re-initialisations: the same run
# gives the same numbers, and two runs are compared under the same random maps.
SEED = 0
MAX_METHOD_IMAGES = 6  # images in the --method all comparison figure

TITLES = {name: m.title for name, m in CAMS.items()}

FAITH_FIELDS = ["method", "layer", "cells", "images", "deletion_auc", "insertion_auc",
                "random_deletion_auc", "random_insertion_auc", "gain", "gain_se",
                "better_than_chance"]
SANITY_FIELDS = ["method", "layer", "step", "randomised", "rho"]


# --------------------------------------------------------------------------- calibration


def calibration_step(s, test_probs: torch.Tensor, test_y: torch.Tensor,
                     files: RunFiles) -> dict:
    """ECE / MCE of the test predictions (15 bins), temperature scaling fitted on the
    validation split (one pass over it, with the run's TTA so that its outputs are made like
    the test outputs; skipped with a note when there is none); reliability.png and
    confidence_hist.png."""
    val_x, val_y = s.data["val"]
    val_logits = val_labels = None
    if len(val_x):
        ev = s.evaluate("val", keep_outputs=True)
        val_logits, val_labels = probs_to_logits(ev.probs), val_y.cpu()
    summary = calibration_summary(test_probs, test_y, val_logits, val_labels, n_bins=15)
    summary["val_images"] = int(len(val_x))
    plot_reliability(summary["bins"], files.reliability,
                     "Test set, as the model predicts", summary["bins_scaled"])
    conf, correct = confidence_and_correct(test_probs, test_y)
    plot_confidence_hist(conf, correct, files.confidence_hist,
                         "Top-label confidence of the test predictions, right and wrong")
    return summary


# --------------------------------------------------------------------------- CAM checks


def coarse_notes(cells: dict[str, tuple[int, int]], image_hw: tuple[int, int]) -> list[dict]:
    """Layers whose map has fewer than :data:`COARSE_CELLS` cells on a side."""
    h_img, w_img = image_hw
    return [{"layer": layer, "cells": [h, w],
             "note": f"{layer}'s map is {h}x{w}: upsampled to {h_img}x{w_img}, one cell spans "
                     f"about {h_img / h:.0f}x{w_img / w:.0f} pixels, so it cannot localise "
                     "anything smaller"}
            for layer, (h, w) in cells.items() if min(h, w) < COARSE_CELLS]


def _keyed(maps: dict[str, dict[str, torch.Tensor]]) -> dict[tuple[str, str], torch.Tensor]:
    return {(m, layer): v for m, per in maps.items() for layer, v in per.items()}


def faithfulness_step(s, model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                      maps: dict[str, dict[str, torch.Tensor]], cells: dict[str, tuple],
                      layers: list[str], methods: list[str], files: RunFiles) -> dict:
    """Deletion / insertion AUCs of every shown map and its layer's random map on the shown
    images ``x`` (normalised [N,3,H,W]) for ``targets`` [N]; faithfulness.csv/.png."""
    d = s.cfg.diagnose
    f = faithfulness(model, x, targets, _keyed(maps), cells, steps=d.faithfulness_steps,
                     fill=d.faithfulness_fill, seed=SEED, amp=s.amp,
                     batch_size=s.cfg.train.eval_batch_size)
    rows = f.rows(cells)
    write_csv(files.faithfulness_csv, FAITH_FIELDS,
              [[r["method"], r["layer"], f"{r['cells'][0]}x{r['cells'][1]}", r["images"],
                *(csv_number(r[k]) for k in FAITH_FIELDS[4:10]), int(r["better_than_chance"])]
               for r in rows])
    curves = {k: (v[0].tolist(), v[1].tolist()) for k, v in f.curves.items()}
    plot_faithfulness(curves, rows, layers, methods, TITLES, f.fill, files.faithfulness)
    return {"steps": f.steps, "fill": f.fill, "images": len(x), "seed": SEED, "rows": rows}


def sanity_step(s, model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                maps: dict[str, dict[str, torch.Tensor]], layers: list[str],
                methods: list[str], image0: np.ndarray, files: RunFiles) -> dict:
    """The cascading model-randomisation check of every shown map on the first
    ``diagnose.sanity_images`` shown images (same images, same fixed targets); sanity.csv,
    sanity.png and sanity_maps.png (the first image)."""
    k = min(len(x), s.cfg.diagnose.sanity_images)
    x, targets = x[:k], targets[:k]
    maps = {m: {layer: v[:k] for layer, v in per.items()} for m, per in maps.items()}

    def maps_fn(m: nn.Module) -> dict:
        return _keyed(compute_cams_by_method(m, x, layers, methods, targets, amp=s.amp,
                                             batch_size=s.cfg.train.eval_batch_size))

    trained = _keyed(maps)
    res = randomisation_check(model, maps_fn, trained, seed=SEED)
    rows = res.rows()
    write_csv(files.sanity_csv, SANITY_FIELDS,
              [[r["method"], r["layer"], i + 1, step, csv_number(rho) if rho is not None else ""]
               for r in rows for i, (step, rho) in enumerate(zip(r["steps"], r["rho"]))])
    plot_sanity(rows, layers, methods, TITLES, FLAG_RHO, files.sanity)
    # One image, every layer of one method; with all methods, every method at the last layer.
    keys = ([(methods[0], layer) for layer in layers] if len(methods) == 1
            else [(m, layers[-1]) for m in methods])
    by_key = {(r["method"], r["layer"]): r for r in rows}

    def row_label(k: tuple[str, str]) -> str:
        rho = by_key[k]["final_rho"]
        end = "n/a" if rho is None else f"{rho:.2f}"
        flag = "  FLAGGED" if by_key[k]["flagged"] else ""
        return f"{TITLES[k[0]]} · {k[1]}\nrank corr. at the end {end}{flag}"

    plot_sanity_maps(image0, {k: trained[k][0].float().cpu().numpy() for k in keys},
                     {k: res.first_maps[k].numpy() for k in keys}, keys, res.steps,
                     [row_label(k) for k in keys], files.sanity_maps)
    return {"steps": res.steps, "flag_rho": FLAG_RHO, "images": len(x), "seed": SEED,
            "rows": rows}


def methods_figure(images: np.ndarray, maps: dict[str, dict[str, torch.Tensor]],
                   rows: list[dict], cells: dict[str, tuple[int, int]], layers: list[str],
                   methods: list[str], files: RunFiles) -> None:
    """cam_methods.png: every method (rows) at every layer (columns) on the first
    :data:`MAX_METHOD_IMAGES` shown images, each cell titled with its faithfulness score
    against the layer's random map."""
    k = min(len(images), MAX_METHOD_IMAGES)
    scores = {}
    for r in rows:
        if not is_nan(r["gain"]):
            se = f" ± {r['gain_se']:.3f}" if not is_nan(r["gain_se"]) else ""
            verdict = "> chance" if r["better_than_chance"] else "≤ chance"
            scores[(r["method"], r["layer"])] = f"{r['gain']:+.3f}{se} {verdict}"
    small = {m: {layer: v[:k].float().cpu().numpy() for layer, v in per.items()}
             for m, per in maps.items()}
    heads = [f"{layer} ({cells[layer][0]}x{cells[layer][1]})" for layer in layers]
    plot_cam_methods(images[:k], small, methods, layers, [TITLES[m] for m in methods], scores,
                     heads, files.cam_methods)
