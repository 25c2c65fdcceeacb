"""Compare two run folders bit for bit: every tensor of the checkpoints' model, optimizer
state and EMA/Lookahead, and the metrics rows without the wall-clock column.

    python bench/same_weights.py RUN_A RUN_B

Exit 0 and "identical" when every tensor is equal (torch.equal, so also dtype and shape)
and the metrics agree; otherwise the first differences are listed and the exit status is 1.
Used to show that a refactoring changed no number of a real run.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from pathlib import Path

import torch


def _tensors(obj, prefix: str = ""):
    """(path, tensor) of every tensor inside nested dicts/lists of a checkpoint."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def _metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def main(a: str, b: str) -> int:
    ca = torch.load(Path(a) / "last.pt", map_location="cpu", weights_only=True)
    cb = torch.load(Path(b) / "last.pt", map_location="cpu", weights_only=True)
    diffs = []
    for key in ("model", "optimizer", "ema", "lookahead", "scaler"):
        ta, tb = dict(_tensors(ca.get(key), key)), dict(_tensors(cb.get(key), key))
        if ta.keys() != tb.keys():
            diffs.append(f"{key}: different tensors")
        diffs += [name for name in ta if name in tb and not torch.equal(ta[name], tb[name])]
    if _metrics(Path(a)) != _metrics(Path(b)):
        diffs.append("metrics.csv rows differ")
    digest = hashlib.sha256()
    for name, t in _tensors(ca["model"], "model"):
        digest.update(name.encode() + t.contiguous().numpy().tobytes())
    n = sum(1 for _ in _tensors(ca["model"]))
    if diffs:
        print("DIFFERENT:", *diffs[:10], sep="\n  ")
        return 1
    print(f"identical: {n} model tensors (sha256 {digest.hexdigest()[:16]}), optimizer, EMA, "
          "Lookahead and metrics.csv")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) == 2 else 2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
