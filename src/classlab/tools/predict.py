"""``classlab predict RUN PATH...``: the run's model on your own pictures.

Every picture is brought to the run's input the way its data was: RGB (palette, grey, alpha and
16-bit pictures converted), scaled to the training size (``data.resize``: the whole picture
squeezed to a square, or its centre square), uint8; then normalised, and averaged over the
run's test-time augmentation views, exactly as classlab evaluates its test set
(:func:`classlab.engine.predict_logits`), in batches on the run's device and precision. The
probabilities are temperature-scaled when the run's diagnosis fitted a temperature on its
validation split (the output says which). The weights are those that count
(:func:`classlab.rundir.checkpoint.eval_weights`).
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classlab import config
from classlab.config import Config, ConfigError
from classlab.data import DataError
from classlab.data.imagefolder import IMAGE_SUFFIXES, read_image
from classlab.engine import Amp, Normalizer, predict_logits, resolve_device
from classlab.models import build_model
from classlab.run.session import recorded_speed
from classlab.rundir import RunFiles, atomic_write_text, read_json_object, run_folder
from classlab.rundir.checkpoint import check_weights_fit, eval_weights, load_checkpoint

# A picture whose longer side is this many times the training size or more loses most of its
# detail on the way in: the output says so.
BIG_FACTOR = 4.0


@dataclass
class LoadedModel:
    """A run's model ready to predict: no training data needed."""

    run_dir: Path
    cfg: Config
    model: nn.Module  # eval mode, the weights that count
    classes: list[str]
    mean: tuple[float, ...]  # per channel, of the training images in [0, 1]
    std: tuple[float, ...]
    device: torch.device
    channels_last: bool  # the memory format the run trained in
    amp: Amp
    size: int  # training side, pixels
    temperature: float | None  # fitted on the validation split by the diagnosis, if any
    epoch: int  # finished epochs the weights hold

    @property
    def normalize(self) -> Normalizer:
        return Normalizer(self.mean, self.std, self.device, self.channels_last)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """float32 ``[N,K]`` logits of uint8 ``[N,3,H,W]`` images, as the run evaluates."""
        return predict_logits(self.model, images.to(self.device), normalize=self.normalize,
                              batch_size=self.cfg.train.eval_batch_size, amp=self.amp,
                              tta=self.cfg.train.tta,
                              tta_fraction=self.cfg.train.tta_fraction)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature or 1.0
        return (logits.double() / t).softmax(1).float()

    def how(self) -> str:
        """How a picture becomes the model's input, in one sentence."""
        way = ("scaled to {s}x{s} (aspect ratio not kept)" if self.cfg.data.resize == "resize"
               else "scaled so the shorter side is {s}, then its central {s}x{s}")
        cal = (f"temperature-calibrated (T = {self.temperature:.3f}, fitted on the validation "
               "split)" if self.temperature else "not calibrated (no temperature fitted: run "
               "classlab diagnose on a run with a validation split)")
        tta = "" if self.cfg.train.tta == "none" else f", {self.cfg.train.tta} TTA"
        return (f"Each picture: RGB, {way.format(s=self.size)} as data.resize="
                f"{self.cfg.data.resize}{tta}; probabilities {cal}.")


def load_model(run_dir: str | Path, device: str | None = None) -> LoadedModel:
    """The run's model from ``run_dir/last.pt`` alone (classes, mean/std and config are in
    it), on ``device`` (default: the run's ``train.device``), in the run's recorded
    precision and memory format."""
    run_dir = run_folder(run_dir, needs="last.pt")
    files = RunFiles(run_dir)
    state = load_checkpoint(files.checkpoint)
    cfg = config.from_dict(state["config"])
    classes = [str(c) for c in state.get("classes") or range(10)]
    dev = resolve_device(device or cfg.train.device)
    model = build_model(cfg.model, num_classes=len(classes)).to(dev)
    weights = eval_weights(state)
    check_weights_fit(files.checkpoint, model.state_dict(), weights,
                      f"its own config ({cfg.model.name}/{cfg.model.norm}, width "
                      f"{cfg.model.width})")
    model.load_state_dict(weights)
    speed = _recorded_speed(files)
    channels_last = bool(speed.get("channels_last"))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = state.get("mean") or (0.5,) * 3, state.get("std") or (0.25,) * 3
    size = cfg.data.image_size if cfg.data.name == "imagefolder" else 32
    return LoadedModel(run_dir, cfg, model.eval(), classes, tuple(mean), tuple(std), dev,
                       channels_last, Amp(dev.type, speed.get("precision") or "fp32"), size,
                       _temperature(files), int(state["epoch"]))


def _recorded_speed(files: RunFiles) -> dict:
    """The run's recorded precision and memory format ({} when none, or not one we know)."""
    speed = recorded_speed(files) or {}
    return speed if speed.get("precision") in ("fp32", "bf16", "fp16") else {}


def _temperature(files: RunFiles) -> float | None:
    cal = (read_json_object(files.diagnose_json) or {}).get("calibration")
    t = cal.get("temperature") if isinstance(cal, dict) else None
    return float(t) if isinstance(t, (int, float)) and t > 0 else None


# --------------------------------------------------------------------------- pictures


def image_paths(paths: list[str | Path]) -> list[Path]:
    """The files named, and the pictures inside the folders named (recursively, by suffix),
    in order; a name that does not exist is kept (it is reported as unreadable)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file()
                          and f.suffix.lower() in IMAGE_SUFFIXES
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            out.append(p)
    return out


def read_pictures(paths: list[Path], size: int, mode: str
                  ) -> tuple[list[tuple[Path, np.ndarray, float]], list[tuple[Path, str]]]:
    """(path, uint8 [size,size,3], scale factor) of each readable picture, and (path, why)
    of each that is not."""
    from PIL import Image

    good, bad = [], []
    for p in paths:
        try:
            with Image.open(p) as f:
                factor = max(f.size) / size
            good.append((p, read_image(p, size, mode), factor))
        except DataError as e:
            bad.append((p, str(e).split(": ", 1)[-1]))
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for a bad file
            bad.append((p, f"cannot read the image: {type(e).__name__}: {e}"))
    return good, bad


# --------------------------------------------------------------------------- predict


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class, probability), most likely first
    factor: float  # longer side / training side


def predict(lm: LoadedModel, paths: list[str | Path], top_k: int = 3
            ) -> tuple[list[Prediction], list[tuple[Path, str]]]:
    """Predictions for every readable picture among ``paths`` (files and folders), and the
    pictures that could not be read, with why."""
    good, bad = read_pictures(image_paths(paths), lm.size, lm.cfg.data.resize)
    if not good:
        return [], bad
    x = torch.from_numpy(np.stack([a for _, a, _ in good])).permute(0, 3, 1, 2).contiguous()
    probs = lm.probabilities(lm.logits(x))
    k = min(top_k, len(lm.classes))
    p, i = probs.topk(k, dim=1)
    return [Prediction(path, [(lm.classes[int(c)], float(q)) for q, c in zip(pr, ix)], factor)
            for (path, _, factor), pr, ix in zip(good, p, i)], bad


def write_csv(preds: list[Prediction], out: Path) -> None:
    k = max((len(p.top) for p in preds), default=0)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "scale"] + [f"{s}{j}" for j in range(1, k + 1)
                                     for s in ("class", "prob")])
    for p in preds:
        w.writerow([str(p.path), f"{p.factor:.3g}"]
                   + [v for c, q in p.top for v in (c, f"{q:.6f}")])
    atomic_write_text(out, buf.getvalue())


def main_predict(run: Path, paths: list[str], *, top: int = 3, out: Path | None = None,
                 cam: str | None = None, device: str | None = None) -> int:
    """``classlab predict``: 0 when every picture was predicted, 1 when some could not be
    read (each named on one line), 2 for bad input."""
    if top < 1:
        raise ConfigError(f"--top: {top} is out of range; must be ≥ 1")
    if not paths:
        raise ConfigError("predict: give at least one picture or folder")
    if cam is not None:
        from classlab.diagnose import CAMS

        if cam not in CAMS:  # before anything is computed or written
            raise ConfigError(f"--cam: unknown method {cam!r}; allowed: {', '.join(CAMS)}")
    lm = load_model(run, device)
    preds, bad = predict(lm, paths, top)
    print(lm.how())
    for p in preds:
        big = (f"  [resized from {p.factor:.0f}x the training size]"
               if p.factor >= BIG_FACTOR else "")
        print(f"{p.path}: " + ", ".join(f"{c} {100 * q:.1f}%" for c, q in p.top) + big)
    for path, why in bad:
        print(f"classlab predict: {path}: {why}", file=sys.stderr)
    if preds:
        out = Path(out) if out is not None else Path("predict.csv")
        write_csv(preds, out)
        print(f"{len(preds)} predicted -> {out}" + (f"; {len(bad)} unreadable" if bad else ""))
        if cam:
            from classlab.tools.predict_cam import write_overlays

            print(f"CAM overlays -> {write_overlays(lm, preds, cam, out.with_suffix(''))}")
    return 1 if bad else 0
