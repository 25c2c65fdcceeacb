"""Augmentation throughput: classlab's batched pipeline vs albumentations, image by image.

Pipeline (the spec's): RandomCrop 32 after zero padding 4, horizontal flip p=0.5, rotation
uniform in +-5 degrees (bilinear, zero fill), CoarseDropout / cutout of one 16x16 square.
Both sides start from uint8 images and end with a normalised float32 batch ``[N,3,32,32]``:
classlab gathers, normalises and augments the whole batch with tensor ops; albumentations
runs ``Compose`` per HWC uint8 image (then Normalize) and the results are stacked into one
tensor, as a DataLoader's collate would. Goal: classlab >= 20x faster.

    .venv/bin/python bench/augment.py [--images 4096 --batch 512]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu, interleaved, load1, machine_line, wall  # noqa: E402

from classlab.augment import augment, make_generator  # noqa: E402
from classlab.config import AugConfig  # noqa: E402
from classlab.engine import Normalizer  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def albumentations_pipeline():
    """The same pipeline in albumentations, or None when it is not installed."""
    try:
        import albumentations as A
        import cv2
    except ImportError:
        return None
    # One OpenCV thread, as in a DataLoader worker (classlab's albumentations backend sets the
    # same): per-image work gains nothing from a pool, and an idle pool's spinning threads
    # would steal the core from the classlab passes interleaved with it.
    cv2.setNumThreads(1)
    return A.Compose([
        A.PadIfNeeded(40, 40, border_mode=cv2.BORDER_CONSTANT, fill=0),
        A.RandomCrop(32, 32),
        A.HorizontalFlip(p=0.5),
        A.Rotate(limit=5, interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT,
                 fill=0, p=1.0),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(16, 16),
                        hole_width_range=(16, 16), fill=0, p=1.0),
        A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0),
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)  # classlab layout
    x_hwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())  # [N,32,32,3] for albumentations
    cfg = AugConfig(ops=["crop", "flip", "rotate", "cutout"], crop_padding=4, pad_mode="zeros",
                    flip_p=0.5, rotate_degrees=5.0, cutout_size=16, cutout_p=1.0)
    normalize = Normalizer(MEAN, STD, torch.device("cpu"))
    gen = make_generator(0, "cpu")

    def classlab() -> None:
        for idx in torch.arange(args.images).split(args.batch):
            augment(normalize(x[idx]), gen, cfg)

    pipe = albumentations_pipeline()

    def albu() -> None:
        for start in range(0, args.images, args.batch):
            imgs = [pipe(image=im)["image"] for im in x_hwc[start:start + args.batch]]
            torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()

    print(machine_line())
    print(f"{args.images} images in batches of {args.batch}, {args.repeats} passes each")
    threads = torch.get_num_threads()
    fns = {"classlab": classlab}
    if pipe is not None:
        fns["albumentations"] = albu
    for fn in fns.values():
        fn()  # warm-up
    times = interleaved(fns, args.repeats)
    torch.set_num_threads(1)
    times1 = interleaved({"classlab": classlab}, args.repeats)
    torch.set_num_threads(threads)
    rate = {k: args.images / wall(v) for k, v in times.items()}
    rate1 = args.images / wall(times1["classlab"])
    # CPU-time rates of the single-threaded passes: robust to other processes' load
    crate1 = args.images / cpu(times1["classlab"])
    print(f"classlab batched ({threads} threads): {rate['classlab']:10.0f} images/s (wall)")
    print(f"classlab batched (1 thread)  : {rate1:10.0f} images/s (wall), {crate1:10.0f} "
          "images/CPU-s")
    if pipe is None:
        print("albumentations: not installed, comparison skipped "
              "(pip install albumentations; it does not pull torch)")
        return 0
    import albumentations

    crate_a = args.images / cpu(times["albumentations"])
    print(f"albumentations {albumentations.__version__} per image (1 process): "
          f"{rate['albumentations']:10.0f} images/s (wall), {crate_a:10.0f} images/CPU-s")
    print(f"ratio classlab ({threads} threads) / albumentations, wall: "
          f"{rate['classlab'] / rate['albumentations']:.1f}x (goal >= 20x)")
    print(f"ratio per core (classlab 1 thread / albumentations 1 process): wall "
          f"{rate1 / rate['albumentations']:.1f}x, CPU time {crate1 / crate_a:.1f}x; "
          f"load now {load1():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
