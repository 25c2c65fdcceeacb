"""The report's sections, each a function from what the run folder holds to blocks; a
missing part is named together with the command that makes it."""

from __future__ import annotations

import csv
import re
import shlex
from datetime import datetime
from pathlib import Path

import yaml

from classlab.fmt import MISSING, duration, fixed, missing, pct
from classlab.fmt import as_float as num
from classlab.fmt import number as g
from classlab.report.blocks import Block, Code, H, Img, Md, P, Table
from classlab.report.datasection import data_blocks, mistakes_sentence
from classlab.report.dynamics import report_section
from classlab.report.names import NORM_SHORT, cam_name
from classlab.rundir import RunFiles, read_json_object
from classlab.rundir.history import read_events
from classlab.rundir.metrics import read_rows
from classlab.rundir.summary import load_summary, stop_sentence, stopped_early


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_csv(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="") as f:
            return [row for row in csv.reader(f) if row]
    except OSError:
        return []


def _augmentations(aug: dict) -> str:
    ops = aug.get("ops") or []
    if not ops:
        return "none"
    desc = {
        "crop": lambda: f"crop (padding {aug.get('crop_padding')}, {aug.get('pad_mode')})",
        "flip": lambda: f"flip (p={aug.get('flip_p')})",
        "rotate": lambda: f"rotate (±{aug.get('rotate_degrees')}°)",
        "cutout": lambda: (f"cutout ({aug.get('cutout_size')}×{aug.get('cutout_size')}, "
                           f"p={aug.get('cutout_p')})"),
    }
    return ", ".join(desc[op]() if op in desc else str(op) for op in ops)


def _scheduler(sched: dict) -> str:
    name = sched.get("name", "?")
    if name == "onecycle":
        return (f"onecycle (pct_start {sched.get('pct_start')}, div_factor "
                f"{sched.get('div_factor')}, final_div_factor {sched.get('final_div_factor')})")
    if name == "step":
        return f"step (×{sched.get('gamma')} every {sched.get('step_size')} epochs)"
    if name == "plateau":
        return (f"plateau (monitor {sched.get('monitor')}, factor {sched.get('factor')}, "
                f"patience {sched.get('patience')})")
    if name in ("cosine", "linear"):
        return (f"{name} (warm-up {sched.get('warmup_epochs')} epochs, final "
                f"{sched.get('final_lr_frac')}×lr)")
    return str(name)


# --------------------------------------------------------------------------- sections


def _summary_blocks(summary: dict, cfg: dict) -> list[Block]:
    model, optim, train = cfg.get("model", {}), cfg.get("optim", {}), cfg.get("train", {})
    data = cfg.get("data", {})
    norm = model.get("norm", summary.get("norm", "?"))
    params = summary.get("params")
    done, epochs = summary.get("epochs_done"), summary.get("epochs", train.get("epochs"))
    early = stopped_early(summary)
    rows = [
        ["Model", f"{model.get('name', summary.get('model', '?'))} (width "
                  f"{model.get('width', '?')})"],
        ["Normalization", f"{norm} – {NORM_SHORT.get(norm, norm)}"
                          + (f", {model.get('gn_groups')} groups" if norm == "gn" else "")],
        ["Optimizer", str(optim.get("name", summary.get("optimizer", "?")))
         + (f" (momentum {optim.get('momentum')}"
            + (", nesterov" if optim.get("nesterov") else "") + ")"
            if optim.get("name") == "sgd" else "")],
        ["Learning rate", g(optim.get("lr"))],
        ["Weight decay", g(optim.get("weight_decay"))],
        ["Scheduler", _scheduler(cfg.get("sched", {"name": summary.get("scheduler", "?")}))],
        ["Batch size", str(train.get("batch_size", "?"))],
        ["Epochs", f"{epochs}" + (f" ({done} done)" if done is not None and done != epochs
                                   else "") + (f"; {stop_sentence(early)}" if early else "")],
        ["Augmentations", _augmentations(cfg.get("aug", {}))],
        ["Label smoothing", g(train.get("label_smoothing", 0))],
        ["Test-time augmentation", str(train.get("tta", "none"))
         + (f" (the least confident {pct(100 * num(train['tta_fraction']), 0)} of each batch)"
            if train.get("tta", "none") != "none" and num(train.get("tta_fraction", 1)) < 1
            else "")],
        ["Weight EMA", f"decay {train['ema_decay']}" if num(train.get("ema_decay")) > 0
         else "off"],
        ["Parameters", f"{params:,}" if isinstance(params, int) else "–"],
        ["Dataset", f"{data.get('name', '?')}: "
                    + ", ".join(f"{summary[k]:,} {k.split('_')[0]}"
                                for k in ("train_images", "val_images", "test_images")
                                if isinstance(summary.get(k), int))],
        ["Device", str(summary.get("device", "–"))],
        ["Precision", _precision(summary)],
        ["Wall time", duration(summary.get("wall_seconds"))
         + (f" ({summary['seconds_per_epoch']} s/epoch)" if summary.get("seconds_per_epoch")
            else "")],
        ["Seed", str(train.get("seed", "–"))],
    ]
    versions = summary.get("versions") or {}
    if versions:
        rows.append(["Versions", ", ".join(f"{k} {v}" for k, v in versions.items()
                                           if v is not None)])
    return [H(2, "Summary"), Table(["Setting", "Value"], rows, "ll")]


def _precision(summary: dict) -> str:
    """"bf16, channels_last (fastest of 4 measured ...); torch.compile: no (...)": what the
    run trained with, and why."""
    speed = summary.get("speed")
    text = str(summary.get("precision", "–"))
    if summary.get("channels_last"):
        text += ", channels_last"
    if isinstance(speed, dict) and speed.get("why"):
        text += f" ({speed['why']})"
    comp = speed.get("compile") if isinstance(speed, dict) else None
    if isinstance(comp, dict) and "use" in comp:  # train.compile's answer (absent before it)
        text += f"; torch.compile: {'yes' if comp['use'] else 'no'} ({comp.get('why', '')})"
    return text


def _results_blocks(summary: dict, diag: dict | None) -> list[Block]:
    out: list[Block] = [H(2, "Results")]
    final, best = summary.get("final"), summary.get("best_by_val")
    if not final:
        out.append(P("No finished epoch yet."))
        return out
    done = summary.get("epochs_done", "?")
    rows = [[f"final (epoch {done})", pct(final.get("train_acc")), pct(final.get("val_acc")),
             pct(final.get("test_acc"))]]
    if best:
        by = "val" if best.get("by") == "val_acc" else "train"
        rows.append([f"best by {by} accuracy (epoch {best.get('epoch')})", "",
                     pct(best.get("val_acc")), pct(best.get("test_acc"))])
    out.append(Table(["", "train accuracy", "val accuracy", "test accuracy"], rows))
    if stopped_early(summary):
        out.append(P(f"The run {stop_sentence(stopped_early(summary))}: the final row is that "
                     "epoch's, with its weights."))
    if best:
        by = "validation accuracy" if best.get("by") == "val_acc" else "training accuracy"
        out.append(P(f"The best epoch, **{best.get('epoch')}**, is chosen by {by} only; the "
                      f"test accuracy of that epoch (**{pct(best.get('test_acc'))}**) is "
                      "reported as it is and never used to pick it. Training accuracy is the "
                      "running accuracy over each epoch's augmented batches."))
    if diag:
        out.append(P(f"Diagnose re-evaluated the last checkpoint (epoch "
                      f"{diag.get('checkpoint_epoch', '?')}): test accuracy "
                      f"**{pct(diag.get('test_acc'))}** ({diag.get('test_correct')}/"
                      f"{diag.get('test_images')}), {diag.get('mistakes')} misclassified."))
    return out


def _epoch_blocks(f: RunFiles) -> list[Block]:
    body, bad = read_rows(f.metrics)  # complete rows only: a cut-off line is not a result
    out: list[Block] = [H(2, "Epochs")]
    cut = [P(f"`metrics.csv` line {bad[0]} is incomplete ({bad[1]}): not shown.")] if bad \
        else []
    if not body:
        out += [P("No epoch finished yet (`metrics.csv` is empty or missing)."), *cut]
        return out
    col = body[0]

    def cell(r: dict[str, str], name: str, kind: str) -> str:
        v = r.get(name, "")
        if kind == "pct":
            return pct(v)
        if kind == "int":
            return v
        if kind == "s":
            return fixed(v, 1)
        return g(v)

    spec = [("epoch", "epoch", "int"), ("lr", "lr", "g"), ("train_loss", "train loss", "g"),
            ("train_acc", "train acc", "pct"), ("val_loss", "val loss", "g"),
            ("val_acc", "val acc", "pct"), ("test_loss", "test loss", "g"),
            ("test_acc", "test acc", "pct"), ("seconds", "seconds", "s")]
    spec = [s for s in spec if s[0] in col]
    out.append(Table([s[1] for s in spec], [[cell(r, k, kind) for k, _, kind in spec]
                                               for r in body]))
    return out + cut


def _diagnose_cmd(run_dir: Path) -> str:
    return f"`classlab diagnose {shlex.quote(str(run_dir))}`"


def _missing(files: RunFiles, what: str) -> P:
    return P(f"{what}: not made yet; run {_diagnose_cmd(files.root)} to make it.")


def _curves(f: RunFiles) -> list[Block]:
    out: list[Block] = [H(2, "Curves")]
    if f.curves.is_file():
        out.append(Img("Loss and accuracy per epoch (train/val/test) and the learning rate",
                       f.curves))
    else:
        out.append(_missing(f, "The loss/accuracy/LR plot"))
    return out


def _per_class(f: RunFiles) -> list[Block]:
    out: list[Block] = [H(2, "Per-class accuracy")]
    rows = _read_csv(f.per_class_csv)
    if len(rows) > 1:
        out.append(Table(["class", "images", "correct", "accuracy"],
                         [[r[1], r[2], r[3], pct(r[4])] for r in rows[1:] if len(r) >= 5]))
    if f.per_class.is_file():
        out.append(Img("Test accuracy per class", f.per_class))
    elif len(rows) <= 1:
        out.append(_missing(f, "The per-class accuracy"))
    return out


def _confusion(f: RunFiles) -> list[Block]:
    out: list[Block] = [H(2, "Confusion matrix")]
    if f.confusion.is_file():
        out.append(P("Rows are the true class, columns the predicted class; the diagonal "
                     "holds the correct predictions (test set)."))
        out.append(Img("Confusion matrix of the test set", f.confusion))
    else:
        out.append(_missing(f, "The confusion matrix"))
    out.append(H(3, "Most confused pairs"))
    pairs = _read_csv(f.confused_pairs)
    if len(pairs) > 1:
        out.append(Table(["true class", "predicted as", "images"],
                         [r[:3] for r in pairs[1:] if len(r) >= 3], "llr"))
    elif f.confused_pairs.is_file():
        out.append(P("No misclassified test images."))
    else:
        out.append(_missing(f, "The list of confused pairs"))
    return out


def _mistakes(f: RunFiles, diag: dict | None) -> list[Block]:
    out: list[Block] = [H(2, "Misclassified images")]
    if f.mistakes.is_file():
        n = diag.get("shown") if diag else None
        out.append(P(f"The {f'{n} ' if n is not None else ''}misclassified test images the "
                     "model was most confident about (highest probability for the wrong "
                     "class first), titled true → predicted (confidence)."))
        out.append(Img("Most confident mistakes", f.mistakes))
        suspected = mistakes_sentence(diag)
        if suspected is not None:
            out.append(suspected)
    else:
        out.append(_missing(f, "The gallery of misclassified images"))
    return out


def _cams(f: RunFiles, diag: dict | None) -> list[Block]:
    chosen = diag.get("method", "gradcam") if diag else "gradcam"
    method = cam_name(chosen)
    grid = cam_name(diag.get("grid_method", chosen) if diag else chosen)
    out: list[Block] = [H(2, f"Class activation maps ({method})")]
    if f.cam_mistakes.is_file():
        target = diag.get("target", "pred") if diag else "pred"
        layers = ", ".join(diag.get("layers", [])) if diag else ""
        out.append(P(f"{grid} of the same misclassified images at "
                     f"{layers or 'several layers'}, for the "
                     f"{'predicted' if target == 'pred' else 'true'} class: red marks the "
                     "regions that raised that class's score most. Each map is scaled to "
                     "[0, 1] per image."))
        out.append(Img("CAMs of the misclassified images per layer", f.cam_mistakes))
    else:
        out.append(_missing(f, "The Grad-CAM grid"))
    if f.cam_pred_vs_true.is_file():
        out.append(P("Where the model looked for the class it predicted versus the class it "
                     "should have predicted (last layer of the grid)."))
        out.append(Img("CAM for the predicted class versus the true class",
                       f.cam_pred_vs_true))
    if chosen == "all" and f.cam_methods.is_file():
        out.append(H(3, "Every method on the same images"))
        out.append(P("Rows are the methods, columns the layers; above each cell its "
                     "faithfulness score (insertion minus deletion area, minus the same for "
                     "the layer's random map, ± its standard error over the images shown). "
                     "Eigen-CAM ignores the target class."))
        out.append(Img("Every CAM method at every layer on the same images", f.cam_methods))
    return out


def _calibration(f: RunFiles, diag: dict | None) -> list[Block]:
    out: list[Block] = [H(2, "Calibration")]
    cal = (diag or {}).get("calibration")
    if not isinstance(cal, dict):
        out.append(_missing(f, "The calibration of the test predictions"))
        return out
    n = cal.get("n")
    out.append(P("Are the confidences honest? Among the test images predicted with "
                 "confidence p, a fraction p should be right. The expected calibration error "
                 "(ECE: top-label, 15 equal-width confidence bins) is the image-weighted mean "
                 "gap between accuracy and confidence, the maximum calibration error (MCE) the "
                 f"largest gap of a non-empty bin, on the {n:,} test images."
                 if isinstance(n, int) else "Calibration of the test predictions."))
    rows = [["as predicted", pct(100 * num(cal.get("ece"))), pct(100 * num(cal.get("mce"))),
             "–"]]
    t = cal.get("temperature")
    if t is not None:
        rows.append([f"after temperature scaling (fitted on {cal.get('val_images', '?'):,} "
                     "validation images)", pct(100 * num(cal.get("ece_scaled"))),
                     pct(100 * num(cal.get("mce_scaled"))), g(t)])
    out.append(Table(["test predictions", "ECE", "MCE", "temperature T"], rows))
    if t is None:
        out.append(P("No validation split (`data.val_split` is 0): temperature scaling was "
                     "skipped, since fitting it on the test set would make the scaled test "
                     "numbers meaningless."))
    else:
        out.append(P(f"Temperature scaling divides every logit by T = {g(t)} (fitted to "
                     "minimise the validation loss; T > 1 softens over-confident predictions, "
                     "T < 1 sharpens under-confident ones) and never changes a prediction. The "
                     "test set plays no part in fitting it."))
    if f.reliability.is_file():
        out.append(Img("Reliability diagram of the test set (before and after temperature "
                       "scaling); the number above each bar is its bin's image count",
                       f.reliability))
    if f.confidence_hist.is_file():
        out.append(Img("Top-label confidence of right and wrong test predictions",
                       f.confidence_hist))
    return out


def _faithfulness(f: RunFiles, diag: dict) -> list[Block]:
    out: list[Block] = [H(3, "Faithfulness: deletion and insertion")]
    faith = diag.get("faithfulness") or {}
    rows = faith.get("rows") or []
    if not rows:
        out.append(P(faith.get("note") or "No faithfulness scores in diagnose.json."))
        return out
    fill = "the dataset's mean colour" if faith.get("fill") == "mean" else "a blurred copy"
    out.append(P(
        f"On the {rows[0].get('images')} images shown, the pixels are removed (deletion) or "
        f"revealed (insertion) most relevant first, 1/{faith.get('steps')} of them per step, "
        f"filling with {fill}, and the probability of the map's target class is tracked "
        "(Petsiuk et al. 2018). A faithful map makes it fall fast (small deletion area) and "
        "rise fast (large insertion area). Each layer is compared with a random map of its "
        "own coarseness: the gain is (insertion − deletion) minus the random map's, per "
        "image, ± its standard error; it is better than chance when above twice that."))
    out.append(Table(
        ["method", "layer", "map", "deletion AUC (lower is better)",
         "insertion AUC (higher is better)", "random map: deletion / insertion",
         "gain over random", "better than chance"],
        [[cam_name(r["method"]), r["layer"], "x".join(map(str, r.get("cells", []))),
          fixed(r.get("deletion_auc")), fixed(r.get("insertion_auc")),
          f"{fixed(r.get('random_deletion_auc'))} / {fixed(r.get('random_insertion_auc'))}",
          f"{num(r.get('gain')):+.3f}\u00a0±\u00a0{fixed(r.get('gain_se'))}"  # one line
          if not missing(r.get("gain")) else MISSING,
          "**yes**" if r.get("better_than_chance") else "no"] for r in rows],
        "lllrrrrl"))
    if f.faithfulness.is_file():
        out.append(Img("Mean deletion and insertion curves per layer, against a random map",
                       f.faithfulness))
    return out


def _sanity(f: RunFiles, diag: dict) -> list[Block]:
    out: list[Block] = [H(3, "Model-randomisation sanity check")]
    sanity = diag.get("sanity") or {}
    rows = sanity.get("rows") or []
    if not rows:
        out.append(P(sanity.get("note") or "No sanity check in diagnose.json."))
        return out
    steps = sanity.get("steps") or rows[0].get("steps") or []
    flag = sanity.get("flag_rho", 0.5)
    out.append(P(
        f"The model's parts are re-initialised one after the other from the output end "
        f"down ({', '.join(steps)}; cumulative) and the maps of the first "
        f"{sanity.get('images')} images shown are computed again for the same target "
        "classes (Adebayo et al. 2018). The numbers are the mean Spearman rank correlation "
        "with the trained model's maps after each step: a map that explains what the model "
        f"learned must change. A map still correlated at {g(flag)} or more once every "
        "weight is random is **flagged**: it does not depend on what the model learned."))
    body = []
    for r in rows:
        rho = [fixed(v) if v is not None else "–" for v in r.get("rho", [])]
        body.append([cam_name(r["method"]), r["layer"], *rho,
                     "**flagged**" if r.get("flagged") else "no"])
    out.append(Table(["method", "layer", *[f"+{s}" for s in steps], "flagged"], body,
                     "ll" + "r" * len(steps) + "l"))
    flagged = [f"{cam_name(r['method'])} at {r['layer']}" for r in rows if r.get("flagged")]
    if flagged:
        out.append(P(f"Flagged: {', '.join(flagged)}."))
    if f.sanity.is_file():
        out.append(Img("Rank correlation with the trained model's maps per randomisation step",
                       f.sanity))
    if f.sanity_maps.is_file():
        out.append(Img("The first image's maps after each randomisation step", f.sanity_maps))
    return out


def _trust(f: RunFiles, diag: dict | None) -> list[Block]:
    out: list[Block] = [H(2, "Can the CAMs be trusted?")]
    if not diag or "faithfulness" not in diag:
        out.append(_missing(f, "The faithfulness scores and the sanity check of the CAMs"))
        return out
    out += _faithfulness(f, diag) + _sanity(f, diag)
    out.append(H(3, "Coarse maps"))
    coarse = diag.get("coarse") or []
    if coarse:
        out.append(P("A map coarser than 5x5 cells is upsampled from a few numbers: it can "
                     "say which part of the image mattered, not which object or edge. "
                     + " ".join(f"{c['note']}." for c in coarse)))
    else:
        out.append(P("Every layer shown gives a map of at least 5x5 cells."))
    return out


def _diagnose_blocks(f: RunFiles, diag: dict | None) -> list[Block]:
    made = (f.curves, f.per_class_csv, f.per_class, f.confusion, f.confused_pairs,
            f.mistakes, f.cam_mistakes, f.cam_pred_vs_true, f.reliability)
    if diag is None and not any(p.is_file() for p in made):
        return [H(2, "Diagnostics"),
                P("Curves, per-class accuracy, confusion matrix, calibration, misclassified "
                  f"images and CAMs are not made yet; run {_diagnose_cmd(f.root)} to make "
                  "them (it also rebuilds this report).")]
    return (_curves(f) + _per_class(f) + _confusion(f) + _calibration(f, diag)
            + _mistakes(f, diag) + _cams(f, diag) + _trust(f, diag))


def _dynamics_blocks(run_dir: Path) -> list[Block]:
    out: list[Block] = [H(2, "Weight updates")]
    try:
        section = report_section(run_dir)
    except Exception as e:  # an optional section must not cost the whole report
        out.append(P(f"The weight-update section could not be made: "
                      f"{type(e).__name__}: {e}"))
        return out
    if not section:
        out.append(P("No weight-update statistics in this run (`log.dynamics_every` was 0 "
                      "or no step was logged)."))
        return out
    text, images = section
    lines = text.strip().splitlines()
    # Drop a heading that repeats ours.
    if lines and re.fullmatch(r"#+\s*weight updates\s*#*", lines[0].strip(), re.I):
        lines = lines[1:]
    if "\n".join(lines).strip():
        out.append(Md("\n".join(lines).strip()))
    # report_section gives the paths under run_dir already (RunFiles), relative or not
    out += [Img(caption, Path(path))
            for caption, path in images]
    return out


def _config_blocks(f: RunFiles) -> list[Block]:
    out: list[Block] = [H(2, "Configuration")]
    try:
        text = f.config.read_text()
    except OSError:
        out.append(P("No `config.yaml` in the run folder."))
        return out
    out.append(P("The fully resolved config; `classlab train config.yaml` repeats the run."))
    out.append(Code("config.yaml (resolved)", "yaml", text))
    return out


def _history_blocks(f: RunFiles, summary: dict) -> list[Block]:
    """What the run folder's other files do not show: started from another run's weights,
    extended to more epochs, resumed with changed settings (history.jsonl)."""
    lines = []
    if summary.get("init_from"):
        lines.append(f"started from the weights of `{summary['init_from']}` (train.init_from)")
    for e in read_events(f.history):
        if e.get("event") == "extended":
            lines.append(f"{e.get('time', '?')}: extended from {e.get('from')} to "
                         f"{e.get('to')} epochs after epoch {e.get('after_epoch')} "
                         "(classlab train --resume --epochs)")
        elif e.get("event") == "resumed with changed settings":
            changed = e.get("changed") or {}
            lines.append(f"{e.get('time', '?')}: resumed with changed settings: " + ", ".join(
                f"{k} {v[0]!r} → {v[1]!r}" for k, v in changed.items()
                if isinstance(v, list) and len(v) == 2))
    return [P("**History:** " + "; ".join(lines) + ".")] if lines else []


def blocks(run_dir: Path, weights: bool = True) -> list[Block]:
    """The whole report of ``run_dir``, from whatever the run folder holds. ``weights=False``
    leaves out the weight-update section, whose figures are drawn anew (~2 s; a notebook
    showing another section does without them)."""
    f = RunFiles(run_dir)
    summary = load_summary(f.summary) or {}  # a damaged one is refused, not shown as empty
    cfg = _read_yaml(f.config)
    diag = read_json_object(f.diagnose_json)
    name = summary.get("name") or cfg.get("name") or run_dir.name
    status = summary.get("status", "unknown")
    head: list[Block] = [
        H(1, f"Run report: {name}"),
        P(f"**Status:** {status}" + (f" ({summary['error']})" if summary.get("error") else "")
           + f" · **Run folder:** `{run_dir}` · generated "
           + datetime.now().strftime("%Y-%m-%d %H:%M")),
    ]
    head += _history_blocks(f, summary)
    if diag is None:
        head.append(P("Diagnostics (curves, per-class accuracy, confusion matrix, calibration, "
                       f"mistakes, CAMs) are missing: run {_diagnose_cmd(run_dir)} to make "
                       "them."))
    return (head + _summary_blocks(summary, cfg) + _results_blocks(summary, diag)
            + _epoch_blocks(f) + _diagnose_blocks(f, diag) + data_blocks(f, diag)
            + (_dynamics_blocks(run_dir) if weights else [])
            + _config_blocks(f))
