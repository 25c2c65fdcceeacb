"""``classlab export RUN --format onnx|torchscript [--out FILE]``: the run's model as one
self-contained file that needs neither classlab nor the training code.

The exported model takes raw RGB in [0, 1], ``[N, 3, H, W]`` float32 at the training size,
with any batch size; the run's normalisation is inside the graph; it returns logits
``[N, classes]``. Metadata (class names, input size, mean/std, classlab version, run folder,
test accuracy) travels in the file: ONNX ``metadata_props``, TorchScript an extra file
``classlab.json``. After writing, the file is checked against classlab's own evaluation of the
same images (the run's test images when its data is where data.json says, else random
pictures): the largest difference of a class probability is printed.
"""

from __future__ import annotations

import contextlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classlab.config import ConfigError
from classlab.engine import Amp
from classlab.rundir import RunFiles, read_json_object
from classlab.rundir.lock import hold
from classlab.tools.predict import LoadedModel, load_model

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
PARITY_IMAGES = 256


class RawRGB(nn.Module):
    """``model((x - mean) / std)`` for x in [0, 1]: the normalisation inside the graph."""

    def __init__(self, model: nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def metadata(lm: LoadedModel) -> dict[str, str]:
    """What a consumer needs to use the file, as strings."""
    summary = read_json_object(RunFiles(lm.run_dir).summary) or {}
    final = summary.get("final")
    test_acc = final.get("test_acc") if isinstance(final, dict) else None
    try:
        ours = version("classlab")
    except PackageNotFoundError:
        ours = "unknown"
    return {"classes": json.dumps(lm.classes), "input": f"[N,3,{lm.size},{lm.size}] RGB in [0,1]",
            "mean": json.dumps([float(v) for v in lm.mean]),
            "std": json.dumps([float(v) for v in lm.std]),
            "output": "logits [N,classes]", "classlab_version": ours,
            "run_dir": str(lm.run_dir.resolve()), "epoch": str(lm.epoch),
            "test_acc": "" if test_acc is None else f"{test_acc:.2f}"}


def export(run_dir: str | Path, fmt: str, out: Path | None = None) -> tuple[Path, float]:
    """Write the run's model as ``fmt`` to ``out`` (default ``<run>/model.onnx`` or
    ``<run>/model.pt``) and check it; returns (the file, the largest |Δ probability|)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown value {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "onnx":
        _need("onnx", "onnxruntime")
    lm = load_model(run_dir, "cpu")
    # fp32, contiguous: the file must run anywhere, and parity is measured in fp32
    lm.model = lm.model.float().to(memory_format=torch.contiguous_format)
    lm.channels_last, lm.amp = False, Amp("cpu", "fp32")
    out = Path(out) if out is not None else lm.run_dir / f"model{SUFFIX[fmt]}"
    net = RawRGB(lm.model, lm.mean, lm.std).eval()
    example = torch.rand(2, 3, lm.size, lm.size)
    with hold(lm.run_dir) if out.resolve().parent == lm.run_dir.resolve() \
            else contextlib.nullcontext():  # into the run folder: as its one writer
        (_onnx if fmt == "onnx" else _torchscript)(net, example, out, metadata(lm))
    return out, parity(lm, out, fmt, _parity_images(lm))


def _need(*packages: str) -> None:
    from importlib.util import find_spec

    missing = [p for p in packages if find_spec(p) is None]
    if missing:
        raise ConfigError(f"--format onnx needs {' and '.join(missing)}: pip install "
                          "'classlab[export]'")


def _onnx(net: nn.Module, example: torch.Tensor, out: Path, meta: dict[str, str]) -> None:
    import onnx

    tmp = out.with_name(f".{out.name}.tmp")
    with torch.no_grad():
        torch.onnx.export(net, (example,), str(tmp), input_names=["image"],
                          output_names=["logits"], dynamo=False, opset_version=17,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    model = onnx.load(str(tmp))
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    tmp.replace(out)


def _torchscript(net: nn.Module, example: torch.Tensor, out: Path, meta: dict[str, str]) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    with torch.no_grad():
        traced = torch.jit.trace(net, example)
    torch.jit.save(traced, str(tmp), _extra_files={"classlab.json": json.dumps(meta)})
    tmp.replace(out)


def _parity_images(lm: LoadedModel) -> tuple[torch.Tensor, str]:
    """uint8 [N,3,H,W]: the run's first test images when its data is at hand, else random
    pictures (and which)."""
    from classlab.data import DataError
    from classlab.rundir import RunDirError

    try:
        from classlab.run.session import session_from_run

        s, _ = session_from_run(lm.run_dir, device="cpu")
        x = s.data["test"][0][:PARITY_IMAGES].cpu()
        if len(x):
            return x, f"{len(x)} test images"
    except (DataError, RunDirError, ConfigError):
        pass
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (PARITY_IMAGES, 3, lm.size, lm.size), generator=g,
                         dtype=torch.uint8), f"{PARITY_IMAGES} random pictures (no data)"


def parity(lm: LoadedModel, path: Path, fmt: str, images: tuple[torch.Tensor, str]) -> float:
    """Largest |Δ probability| between the exported file and classlab's own evaluation of
    the same images (the run's TTA is classlab's, not the file's: compared without it)."""
    x, what = images
    lm.cfg.train.tta = "none"
    ours = lm.logits(x).softmax(1)
    raw = x.float() / 255.0
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        theirs = torch.from_numpy(np.concatenate(
            [sess.run(["logits"], {"image": b.numpy()})[0] for b in raw.split(100)]))
    else:
        model = torch.jit.load(str(path))
        with torch.no_grad():
            theirs = torch.cat([model(b) for b in raw.split(100)])
    diff = float((theirs.softmax(1) - ours).abs().max())
    print(f"Parity on {what}: max |Δ probability| = {diff:.2e} (fp32)")
    return diff


def main_export(run: Path, fmt: str, out: Path | None) -> int:
    path, diff = export(run, fmt, out)
    print(f"Exported {run} -> {path}")
    return 0 if diff <= 1e-3 else 1
