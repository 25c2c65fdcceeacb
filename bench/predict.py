"""``classlab predict`` of N pictures vs ``classlab eval``'s evaluation of N test images.

    python bench/predict.py RUN [--images 1000] [--repeats 3]

The run's first N test images are written as PNG files (32x32, as a user's CIFAR-sized
pictures would be); then, alternating, (a) :func:`classlab.tools.predict.predict` on the
folder: decoding, resizing, batching and the forward passes; (b) the run's evaluation of the
same N images already in memory (``Session.evaluate``'s path: the same model, normalisation,
TTA and precision). Printed: the median seconds of each and their ratio (goal <= 1.5).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine_line, median  # noqa: E402

from classlab.engine import evaluate  # noqa: E402
from classlab.run.session import session_from_run  # noqa: E402
from classlab.tools.predict import load_model, predict  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from PIL import Image

    s, _ = session_from_run(a.run)
    x, y = (t[:a.images] for t in s.data["test"])
    folder = Path(tempfile.mkdtemp(prefix="classlab-predict-bench-"))
    for i, img in enumerate(x.permute(0, 2, 3, 1).cpu().numpy()):
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"{i:05d}.png")
    lm = load_model(a.run)
    print(machine_line())
    print(f"run {a.run}: {len(x)} images, precision {lm.amp.precision}, tta "
          f"{lm.cfg.train.tta}, batch {lm.cfg.train.eval_batch_size}")
    times = interleaved({
        "predict (PNG files)": lambda: predict(lm, [folder], 3),
        "eval (tensors)": lambda: evaluate(s.eval_model, x, y, normalize=s.normalize,
                                           batch_size=s.cfg.train.eval_batch_size, amp=s.amp,
                                           tta=s.cfg.train.tta),
    }, a.repeats)
    med = {k: median([w for w, _ in v]) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k}: {v:.3f} s")
    print(f"ratio predict / eval: {med['predict (PNG files)'] / med['eval (tensors)']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
