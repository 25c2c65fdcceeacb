"""One report per run: ``report.md`` (renders on GitHub, images by relative path) and
``report.html`` (self-contained: images as base64 data URIs, inline CSS, no scripts).

The report is built from whatever the run folder holds (summary.json, config.yaml,
metrics.csv, diagnose/*, the weight-update section of :mod:`classlab.dynamics`); a missing
part is named together with the command that makes it. Both formats come from the same list
of blocks, so they always say the same thing.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import re
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from classlab import _io

# --------------------------------------------------------------------------- blocks


@dataclass
class _H:  # heading
    level: int
    text: str


@dataclass
class _P:  # paragraph; inline **bold** and `code` allowed
    text: str


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]
    align: str = ""  # per column "l" or "r"; default: first left, rest right


@dataclass
class _Img:
    caption: str
    path: Path  # absolute


@dataclass
class _Code:  # a collapsible code block
    summary: str
    lang: str
    text: str


@dataclass
class _Md:  # markdown written by someone else (the dynamics section)
    text: str


Block = _H | _P | _Table | _Img | _Code | _Md


# --------------------------------------------------------------------------- reading the run


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _pct(v: Any) -> str:
    x = _num(v)
    return "–" if x != x else f"{x:.2f}%"


def _g(v: Any, digits: int = 4) -> str:
    x = _num(v)
    return "–" if x != x else f"{x:.{digits}g}"


def _duration(seconds: Any) -> str:
    s = _num(seconds)
    if s != s:
        return "–"
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h} h {m:02d} min {sec:02d} s"
    if m:
        return f"{m} min {sec:02d} s"
    return f"{s:.1f} s"


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


def _summary_blocks(run_dir: Path, summary: dict, cfg: dict) -> list[Block]:
    model, optim, train = cfg.get("model", {}), cfg.get("optim", {}), cfg.get("train", {})
    data = cfg.get("data", {})
    norm_names = {"bn": "BatchNorm", "ln": "LayerNorm (GroupNorm, 1 group)", "gn": "GroupNorm"}
    norm = model.get("norm", summary.get("norm", "?"))
    params = summary.get("params")
    done, epochs = summary.get("epochs_done"), summary.get("epochs", train.get("epochs"))
    rows = [
        ["Model", f"{model.get('name', summary.get('model', '?'))} (width "
                  f"{model.get('width', '?')})"],
        ["Normalization", f"{norm} – {norm_names.get(norm, norm)}"
                          + (f", {model.get('gn_groups')} groups" if norm == "gn" else "")],
        ["Optimizer", str(optim.get("name", summary.get("optimizer", "?")))
         + (f" (momentum {optim.get('momentum')}"
            + (", nesterov" if optim.get("nesterov") else "") + ")"
            if optim.get("name") == "sgd" else "")],
        ["Learning rate", _g(optim.get("lr"))],
        ["Weight decay", _g(optim.get("weight_decay"))],
        ["Scheduler", _scheduler(cfg.get("sched", {"name": summary.get("scheduler", "?")}))],
        ["Batch size", str(train.get("batch_size", "?"))],
        ["Epochs", f"{epochs}" + (f" ({done} done)" if done is not None and done != epochs
                                   else "")],
        ["Augmentations", _augmentations(cfg.get("aug", {}))],
        ["Label smoothing", _g(train.get("label_smoothing", 0))],
        ["Test-time augmentation", str(train.get("tta", "none"))],
        ["Weight EMA", f"decay {train['ema_decay']}" if _num(train.get("ema_decay")) > 0
         else "off"],
        ["Parameters", f"{params:,}" if isinstance(params, int) else "–"],
        ["Dataset", f"{data.get('name', '?')}: "
                    + ", ".join(f"{summary[k]:,} {k.split('_')[0]}"
                                for k in ("train_images", "val_images", "test_images")
                                if isinstance(summary.get(k), int))],
        ["Device", str(summary.get("device", "–"))],
        ["Precision", str(summary.get("precision", "–"))],
        ["Wall time", _duration(summary.get("wall_seconds"))
         + (f" ({summary['seconds_per_epoch']} s/epoch)" if summary.get("seconds_per_epoch")
            else "")],
        ["Seed", str(train.get("seed", "–"))],
    ]
    versions = summary.get("versions") or {}
    if versions:
        rows.append(["Versions", ", ".join(f"{k} {v}" for k, v in versions.items()
                                           if v is not None)])
    return [_H(2, "Summary"), _Table(["Setting", "Value"], rows, "ll")]


def _results_blocks(summary: dict, diag: dict | None) -> list[Block]:
    out: list[Block] = [_H(2, "Results")]
    final, best = summary.get("final"), summary.get("best_by_val")
    if not final:
        out.append(_P("No finished epoch yet."))
        return out
    done = summary.get("epochs_done", "?")
    rows = [[f"final (epoch {done})", _pct(final.get("train_acc")), _pct(final.get("val_acc")),
             _pct(final.get("test_acc"))]]
    if best:
        by = "val" if best.get("by") == "val_acc" else "train"
        rows.append([f"best by {by} accuracy (epoch {best.get('epoch')})", "",
                     _pct(best.get("val_acc")), _pct(best.get("test_acc"))])
    out.append(_Table(["", "train accuracy", "val accuracy", "test accuracy"], rows))
    if best:
        by = "validation accuracy" if best.get("by") == "val_acc" else "training accuracy"
        out.append(_P(f"The best epoch, **{best.get('epoch')}**, is chosen by {by} only; the "
                      f"test accuracy of that epoch (**{_pct(best.get('test_acc'))}**) is "
                      "reported as it is and never used to pick it. Training accuracy is the "
                      "running accuracy over each epoch's augmented batches."))
    if diag:
        out.append(_P(f"Diagnose re-evaluated the last checkpoint (epoch "
                      f"{diag.get('checkpoint_epoch', '?')}): test accuracy "
                      f"**{_pct(diag.get('test_acc'))}** ({diag.get('test_correct')}/"
                      f"{diag.get('test_images')}), {diag.get('mistakes')} misclassified."))
    return out


def _epoch_blocks(run_dir: Path) -> list[Block]:
    rows = _read_csv(run_dir / "metrics.csv")
    out: list[Block] = [_H(2, "Epochs")]
    if len(rows) < 2:
        out.append(_P("No epoch finished yet (`metrics.csv` is empty or missing)."))
        return out
    head, body = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(head)}

    def cell(r: list[str], name: str, kind: str) -> str:
        i = col.get(name)
        v = r[i] if i is not None and i < len(r) else ""
        if kind == "pct":
            return _pct(v)
        if kind == "int":
            return v
        if kind == "s":
            return "–" if _num(v) != _num(v) else f"{_num(v):.1f}"
        return _g(v)

    spec = [("epoch", "epoch", "int"), ("lr", "lr", "g"), ("train_loss", "train loss", "g"),
            ("train_acc", "train acc", "pct"), ("val_loss", "val loss", "g"),
            ("val_acc", "val acc", "pct"), ("test_loss", "test loss", "g"),
            ("test_acc", "test acc", "pct"), ("seconds", "seconds", "s")]
    spec = [s for s in spec if s[0] in col]
    out.append(_Table([s[1] for s in spec], [[cell(r, k, kind) for k, _, kind in spec]
                                               for r in body]))
    return out


_DIAGNOSE_FILES = ("curves.png", "per_class.csv", "per_class.png", "confusion.png",
                   "confused_pairs.csv", "mistakes.png", "cam_mistakes.png",
                   "cam_pred_vs_true.png")


def _diagnose_cmd(run_dir: Path) -> str:
    return f"`classlab diagnose {shlex.quote(str(run_dir))}`"


def _missing(run_dir: Path, what: str) -> _P:
    return _P(f"{what}: not made yet; run {_diagnose_cmd(run_dir)} to make it.")


def _diagnose_blocks(run_dir: Path, diag: dict | None) -> list[Block]:
    d = run_dir / "diagnose"
    if diag is None and not any((d / f).is_file() for f in _DIAGNOSE_FILES):
        return [_H(2, "Diagnostics"),
                _P("Curves, per-class accuracy, confusion matrix, misclassified images and "
                   f"Grad-CAM maps are not made yet; run {_diagnose_cmd(run_dir)} to make "
                   "them (it also rebuilds this report).")]
    out: list[Block] = [_H(2, "Curves")]
    if (d / "curves.png").is_file():
        out.append(_Img("Loss and accuracy per epoch (train/val/test) and the learning rate",
                        d / "curves.png"))
    else:
        out.append(_missing(run_dir, "The loss/accuracy/LR plot"))

    out.append(_H(2, "Per-class accuracy"))
    rows = _read_csv(d / "per_class.csv")
    if len(rows) > 1:
        out.append(_Table(["class", "images", "correct", "accuracy"],
                          [[r[1], r[2], r[3], _pct(r[4])] for r in rows[1:] if len(r) >= 5]))
    if (d / "per_class.png").is_file():
        out.append(_Img("Test accuracy per class", d / "per_class.png"))
    elif len(rows) <= 1:
        out.append(_missing(run_dir, "The per-class accuracy"))

    out.append(_H(2, "Confusion matrix"))
    if (d / "confusion.png").is_file():
        out.append(_P("Rows are the true class, columns the predicted class; the diagonal "
                      "holds the correct predictions (test set)."))
        out.append(_Img("Confusion matrix of the test set", d / "confusion.png"))
    else:
        out.append(_missing(run_dir, "The confusion matrix"))

    out.append(_H(3, "Most confused pairs"))
    pairs = _read_csv(d / "confused_pairs.csv")
    if len(pairs) > 1:
        out.append(_Table(["true class", "predicted as", "images"],
                          [r[:3] for r in pairs[1:] if len(r) >= 3], "llr"))
    elif (d / "confused_pairs.csv").is_file():
        out.append(_P("No misclassified test images."))
    else:
        out.append(_missing(run_dir, "The list of confused pairs"))

    out.append(_H(2, "Misclassified images"))
    if (d / "mistakes.png").is_file():
        n = diag.get("shown") if diag else None
        out.append(_P(f"The {f'{n} ' if n is not None else ''}misclassified test images the "
                      "model was most confident about (highest probability for the wrong "
                      "class first), titled true → predicted (confidence)."))
        out.append(_Img("Most confident mistakes", d / "mistakes.png"))
    else:
        out.append(_missing(run_dir, "The gallery of misclassified images"))

    method = diag.get("method", "gradcam") if diag else "gradcam"
    names = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "layercam": "LayerCAM"}
    out.append(_H(2, f"Class activation maps ({names.get(method, method)})"))
    if (d / "cam_mistakes.png").is_file():
        target = diag.get("target", "pred") if diag else "pred"
        layers = ", ".join(diag.get("layers", [])) if diag else ""
        out.append(_P(f"{names.get(method, method)} of the same misclassified images at "
                      f"{layers or 'several layers'}, for the "
                      f"{'predicted' if target == 'pred' else 'true'} class: red marks the "
                      "regions that raised that class's logit most. Each map is scaled to "
                      "[0, 1] per image."))
        out.append(_Img("CAMs of the misclassified images per layer", d / "cam_mistakes.png"))
    else:
        out.append(_missing(run_dir, "The Grad-CAM grid"))
    if (d / "cam_pred_vs_true.png").is_file():
        out.append(_P("Where the model looked for the class it predicted versus the class it "
                      "should have predicted (last layer of the grid)."))
        out.append(_Img("CAM for the predicted class versus the true class",
                        d / "cam_pred_vs_true.png"))
    return out


def _dynamics_blocks(run_dir: Path) -> list[Block]:
    out: list[Block] = [_H(2, "Weight updates")]
    try:
        from classlab.dynamics import report_section
    except ImportError:
        out.append(_P("This version of classlab has no weight-update section."))
        return out
    try:
        section = report_section(run_dir)
    except Exception as e:  # an optional section must not cost the whole report
        out.append(_P(f"The weight-update section could not be made: "
                      f"{type(e).__name__}: {e}"))
        return out
    if not section:
        out.append(_P("No weight-update statistics in this run (`log.dynamics_every` was 0 "
                      "or no step was logged)."))
        return out
    text, images = section
    lines = text.strip().splitlines()
    # Drop a heading that repeats ours.
    if lines and re.fullmatch(r"#+\s*weight updates\s*#*", lines[0].strip(), re.I):
        lines = lines[1:]
    if "\n".join(lines).strip():
        out.append(_Md("\n".join(lines).strip()))
    out += [_Img(caption, Path(path) if Path(path).is_absolute() else run_dir / path)
            for caption, path in images]
    return out


def _config_blocks(run_dir: Path) -> list[Block]:
    out: list[Block] = [_H(2, "Configuration")]
    path = run_dir / "config.yaml"
    try:
        text = path.read_text()
    except OSError:
        out.append(_P("No `config.yaml` in the run folder."))
        return out
    out.append(_P("The fully resolved config; `classlab train config.yaml` repeats the run."))
    out.append(_Code("config.yaml (resolved)", "yaml", text))
    return out


def _blocks(run_dir: Path) -> list[Block]:
    summary = _read_json(run_dir / "summary.json") or {}
    cfg = _read_yaml(run_dir / "config.yaml")
    diag = _read_json(run_dir / "diagnose" / "diagnose.json")
    name = summary.get("name") or cfg.get("name") or run_dir.name
    status = summary.get("status", "unknown")
    head: list[Block] = [
        _H(1, f"Run report: {name}"),
        _P(f"**Status:** {status}" + (f" ({summary['error']})" if summary.get("error") else "")
           + f" · **Run folder:** `{run_dir}` · generated "
           + datetime.now().strftime("%Y-%m-%d %H:%M")),
    ]
    if diag is None:
        head.append(_P("Diagnostics (curves, per-class accuracy, confusion matrix, mistakes, "
                       f"Grad-CAM) are missing: run {_diagnose_cmd(run_dir)} to make them."))
    return (head + _summary_blocks(run_dir, summary, cfg) + _results_blocks(summary, diag)
            + _epoch_blocks(run_dir) + _diagnose_blocks(run_dir, diag)
            + _dynamics_blocks(run_dir) + _config_blocks(run_dir))


# --------------------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _rel(path: Path, run_dir: Path) -> str:
    return Path(os.path.relpath(path, run_dir)).as_posix()


def _to_markdown(blocks: list[Block], run_dir: Path) -> str:
    parts: list[str] = []
    for b in blocks:
        if isinstance(b, _H):
            parts.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, _P | _Md):
            parts.append(b.text)
        elif isinstance(b, _Table):
            align = b.align or "l" + "r" * (len(b.header) - 1)
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                     "|" + "|".join(" ---: " if a == "r" else " --- " for a in align) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
            parts.append("\n".join(lines))
        elif isinstance(b, _Img):
            if b.path.is_file():
                parts.append(f"![{b.caption}]({_rel(b.path, run_dir)})\n\n*{b.caption}*")
            else:
                parts.append(f"*{b.caption}: image missing ({_rel(b.path, run_dir)})*")
        elif isinstance(b, _Code):
            fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", b.text)), default=0) + 1)
            parts.append(f"<details><summary>{html.escape(b.summary)}</summary>\n\n"
                         f"{fence}{b.lang}\n{b.text.rstrip()}\n{fence}\n\n</details>")
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
max-width:1150px;margin:2em auto;padding:0 1em;color:#1f2328;line-height:1.5}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.25em .6em}
th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfbfc}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
td.l,th.l{text-align:left}
td:first-child{white-space:nowrap}
code{background:#f2f4f6;padding:.1em .3em;border-radius:4px;font-size:.9em}
pre{background:#f6f8fa;padding:1em;overflow:auto;border-radius:6px}
pre code{background:none;padding:0}
figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9em;font-style:italic}
details{margin:1em 0}
summary{cursor:pointer;font-weight:600}
.missing{color:#9a6700}
blockquote{border-left:4px solid #d0d7de;margin:0;padding:0 1em;color:#57606a}
"""

_INLINE_IMG = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def _inline(text: str) -> str:
    """Escape, then the inline markdown used here: `code`, **bold**, *italic*."""
    out = []
    for i, part in enumerate(re.split(r"(`[^`]+`)", text)):
        if i % 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            s = html.escape(part)
            s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
            s = re.sub(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])", r"<em>\1</em>", s)
            out.append(s)
    return "".join(out)


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
            ".svg": "image/svg+xml", ".gif": "image/gif"}.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _figure(caption: str, path: Path) -> str:
    if not path.is_file():
        return f'<p class="missing">{html.escape(caption)}: image missing</p>'
    cap = html.escape(caption)
    return (f'<figure><img src="{_data_uri(path)}" alt="{cap}">'
            f"<figcaption>{cap}</figcaption></figure>")


def _html_table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    align = align or "l" + "r" * (len(header) - 1)

    def cls(i: int) -> str:
        return "r" if i < len(align) and align[i] == "r" else "l"

    out = ["<table><thead><tr>"
           + "".join(f'<th class="{cls(i)}">{_inline(h)}</th>' for i, h in enumerate(header))
           + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="{cls(i)}">{_inline(str(c))}</td>'
                                    for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _md_to_html(text: str, run_dir: Path) -> str:
    """A small Markdown subset for text written by other modules: headings, paragraphs,
    bullet/numbered lists, pipe tables, fenced code, block quotes and images (embedded).
    Everything else is escaped text; raw HTML is shown, never interpreted."""
    lines = text.splitlines()
    out: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append(f"<p>{_para_html(' '.join(para), run_dir)}</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if s.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append(f"<pre><code>{html.escape(chr(10).join(lines[i + 1:j]))}</code></pre>")
            i = j + 1
            continue
        m = re.match(r"(#{1,6})\s+(.*?)\s*#*$", s)
        if m:
            flush()
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        elif s.startswith("|") and i + 1 < len(lines) and \
                re.fullmatch(r"\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?", lines[i + 1].strip()):
            flush()
            header = _split_row(s)
            seps = _split_row(lines[i + 1].strip())
            align = "".join("r" if c.endswith(":") and not c.startswith(":") else "l"
                            for c in seps)
            rows, i = [], i + 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_split_row(lines[i].strip()))
                i += 1
            out.append(_html_table(header, rows, align))
            continue
        elif re.match(r"([-*+]|\d+[.)])\s+", s):
            flush()
            ordered = bool(re.match(r"\d", s))
            items = []
            while i < len(lines) and re.match(r"\s*([-*+]|\d+[.)])\s+", lines[i]):
                items.append(re.sub(r"^\s*([-*+]|\d+[.)])\s+", "", lines[i]))
                i += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{_para_html(t, run_dir)}</li>"
                                            for t in items) + f"</{tag}>")
            continue
        elif s.startswith(">"):
            flush()
            quote = []
            while i < len(lines) and lines[i].strip().startswith(">"):
                quote.append(lines[i].strip()[1:].strip())
                i += 1
            out.append(f"<blockquote><p>{_para_html(' '.join(quote), run_dir)}</p>"
                       "</blockquote>")
            continue
        elif not s:
            flush()
        else:
            para.append(s)
        i += 1
    flush()
    return "\n".join(out)


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def _para_html(text: str, run_dir: Path) -> str:
    """Inline markdown plus images, which are embedded when the file is in the run folder's
    reach and dropped to their alt text otherwise (no external resources in the report)."""
    out, pos = [], 0
    for m in _INLINE_IMG.finditer(text):
        out.append(_inline(text[pos:m.start()]))
        alt, src = m.group(1), m.group(2)
        path = Path(src) if Path(src).is_absolute() else run_dir / src
        if "://" not in src and path.is_file():
            out.append(f'<img src="{_data_uri(path)}" alt="{html.escape(alt)}" '
                       'style="max-width:100%;height:auto">')
        else:
            out.append(f'<span class="missing">[image: {html.escape(alt or src)}]</span>')
        pos = m.end()
    out.append(_inline(text[pos:]))
    return "".join(out)


def _to_html(blocks: list[Block], run_dir: Path, title: str) -> str:
    body: list[str] = []
    for b in blocks:
        if isinstance(b, _H):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, _P):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, _Table):
            body.append(_html_table(b.header, b.rows, b.align))
        elif isinstance(b, _Img):
            body.append(_figure(b.caption, b.path))
        elif isinstance(b, _Code):
            body.append(f"<details><summary>{html.escape(b.summary)}</summary>"
                        f"<pre><code>{html.escape(b.text.rstrip())}</code></pre></details>")
        elif isinstance(b, _Md):
            body.append(_md_to_html(b.text, run_dir))
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


# --------------------------------------------------------------------------- entry point


def build_report(run_dir: Path) -> tuple[Path, Path]:
    """Write ``run_dir/report.md`` and ``run_dir/report.html`` (atomically); return both."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise _io.RunDirError(f"{run_dir}: not a run folder (no such folder)")
    if not any((run_dir / f).is_file() for f in ("summary.json", "config.yaml",
                                                  "metrics.csv")):
        raise _io.RunDirError(f"{run_dir}: not a run folder (no summary.json, config.yaml "
                              "or metrics.csv)")
    blocks = _blocks(run_dir)
    title = next((b.text for b in blocks if isinstance(b, _H)), "Run report")
    md, page = run_dir / "report.md", run_dir / "report.html"
    _io.atomic_write_text(md, _to_markdown(blocks, run_dir))
    _io.atomic_write_text(page, _to_html(blocks, run_dir, title))
    return md, page

