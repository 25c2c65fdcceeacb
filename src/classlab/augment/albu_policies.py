"""classlab's augmentation policies for the albumentations backend, built from albumentations'
own transforms, so ``aug.backend: albumentations`` can name them in ``aug.albumentations``::

    aug:
      backend: albumentations
      albumentations:
        - {name: PadIfNeeded, min_height: 40, min_width: 40, border_mode: 0, fill: mean}
        - {name: RandomCrop, height: 32, width: 32}
        - {name: HorizontalFlip, p: 0.5}
        - {name: RandAugment, num_ops: 3, magnitude: 5}   # or TrivialAugmentWide, AutoAugment

The same ops, magnitudes and choices as the batched policies (:mod:`classlab.augment.
policies`): RandAugment is ``SomeOf`` its 14 ops (with replacement, in the drawn order),
TrivialAugmentWide ``OneOf`` the 14 ops, each ``OneOf`` its 31 magnitude bins (and both
signs), AutoAugment ``OneOf`` its 25 CIFAR-10 sub-policies, each a ``Sequential`` of its two
ops with their probabilities. Per op: ``AutoContrast(method=pil)``, ``Equalize(mode=pil)``,
``InvertImg``, ``Posterize``, ``Solarize``, ``ColorJitter`` with one fixed factor (PIL's
brightness, contrast and colour), ``Affine`` (nearest, the mean colour outside) for rotation,
shear and translation. albumentations has no PIL sharpness (its ``Sharpen`` is another
filter), so sharpness is PIL's own ``ImageEnhance.Sharpness`` inside an ``A.Lambda``. Colour
jitter and random erasing are albumentations transforms already (``ColorJitter``,
``Erasing``); mixup and CutMix act on the batch at the training step under either backend.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np

from classlab.config import ConfigError
from classlab.config import show as _show

__all__ = ["POLICY_NAMES", "build_policy"]

POLICY_NAMES = ("AutoAugment", "RandAugment", "TrivialAugmentWide")
# each policy's arguments and their defaults ("mean": the training set's mean colour)
_DEFAULTS = {"RandAugment": {"num_ops": 3, "magnitude": 5.0, "fill": "mean"},
             "TrivialAugmentWide": {"fill": "mean"},
             "AutoAugment": {"policy": "cifar10", "fill": "mean"}}
_BINS = 31  # TrivialAugment's magnitude bins


def _pil_sharpness(img: np.ndarray, factor: float, **_: Any) -> np.ndarray:
    from PIL import Image, ImageEnhance

    return np.asarray(ImageEnhance.Sharpness(Image.fromarray(img)).enhance(factor))


def _op(A: Any, name: str, v: float, fill: tuple[float, ...], p: float = 1.0) -> Any:
    """One albumentations transform: op ``name`` with its parameter ``v`` as
    :func:`classlab.augment.policies.op_values` gives it for a 1x1 image (translations as a
    fraction of the side)."""
    affine = {"interpolation": 0, "border_mode": 0, "fill": fill, "p": p}  # cv2 NEAREST, CONSTANT
    if name == "rotate":
        return A.Affine(rotate=(v, v), **affine)
    if name in ("shear_x", "shear_y"):
        deg = math.degrees(math.atan(v))
        axes = {"x": (deg, deg), "y": (0.0, 0.0)} if name == "shear_x" else \
            {"x": (0.0, 0.0), "y": (deg, deg)}
        return A.Affine(shear=axes, **affine)
    if name in ("translate_x", "translate_y"):
        axes = {"x": (v, v), "y": (0.0, 0.0)} if name == "translate_x" else \
            {"x": (0.0, 0.0), "y": (v, v)}
        return A.Affine(translate_percent=axes, **affine)
    if name in ("brightness", "contrast", "color"):
        f = {k: (1.0, 1.0) for k in ("brightness", "contrast", "saturation")}
        f["saturation" if name == "color" else name] = (v, v)
        return A.ColorJitter(**f, hue=(0.0, 0.0), p=p)
    if name == "sharpness":
        return A.Lambda(image=partial(_pil_sharpness, factor=v), p=p)
    if name == "posterize":  # all 8 bits kept: the identity (albumentations takes 1-7)
        return A.NoOp(p=p) if v >= 8 else A.Posterize(num_bits=int(v), p=p)
    if name == "solarize":  # a threshold above level 255 inverts nothing
        return A.NoOp(p=p) if v > 255 else A.Solarize(threshold_range=(v / 255, v / 255), p=p)
    simple = {"identity": lambda: A.NoOp(p=p),
              "autocontrast": lambda: A.AutoContrast(method="pil", p=p),
              "equalize": lambda: A.Equalize(mode="pil", p=p),
              "invert": lambda: A.InvertImg(p=p)}
    return simple[name]()


def _at(A: Any, name: str, f: float, ranges: dict[str, float], fill: tuple[float, ...],
        p: float = 1.0) -> Any:
    """Op ``name`` at magnitude fraction ``f``, with a random sign where it has one."""
    import torch

    from classlab.augment.policies import op_values

    def value(negative: bool) -> float:
        return float(op_values(name, torch.tensor([f]), torch.tensor([negative]), ranges, 1, 1))

    plus, minus = value(False), value(True)
    if plus == minus:
        return _op(A, name, plus, fill, p)
    return A.OneOf([_op(A, name, plus, fill), _op(A, name, minus, fill)], p=p)


def _policy(A: Any, name: str, args: dict, fill: tuple[float, ...]) -> Any:
    from classlab.augment.policies import (
        AUTOAUGMENT_CIFAR10,
        RANDAUGMENT_OPS,
        STANDARD,
        WIDE,
    )

    if name == "RandAugment":
        f = float(args["magnitude"]) / 10.0
        return A.SomeOf([_at(A, op, f, STANDARD, fill) for op in RANDAUGMENT_OPS],
                        n=int(args["num_ops"]), replace=True, p=1.0)
    if name == "TrivialAugmentWide":
        per_op = [A.OneOf([_at(A, op, b / (_BINS - 1), WIDE, fill) for b in range(_BINS)], p=1.0)
                  if op in WIDE else _at(A, op, 0.0, WIDE, fill) for op in RANDAUGMENT_OPS]
        return A.OneOf(per_op, p=1.0)
    subs = [A.Sequential([_at(A, op, b / 9, STANDARD, fill, p=q) for op, q, b in sub], p=1.0)
            for sub in AUTOAUGMENT_CIFAR10]
    return A.OneOf(subs, p=1.0)


def _check_args(key: str, name: str, spec: dict) -> dict:
    """The policy's arguments with defaults filled in; a one-line ConfigError for a bad one."""
    allowed = _DEFAULTS[name]
    for arg in spec:
        if arg != "name" and arg not in allowed:
            raise ConfigError(f"{key}.{arg}: unknown argument of {name}; allowed: "
                              f"{', '.join(allowed) or 'none'}")
    args = {**allowed, **{k: v for k, v in spec.items() if k != "name"}}
    checks = {"num_ops": (lambda v: isinstance(v, int) and not isinstance(v, bool)
                          and 1 <= v <= 14, "a whole number from 1 to 14"),
              "magnitude": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                            and 0 <= v <= 10, "a number from 0 to 10"),
              "policy": (lambda v: v == "cifar10", "cifar10")}
    for arg, (ok, what) in checks.items():
        if arg in args and not ok(args[arg]):
            raise ConfigError(f"{key}.{arg}: {name} refuses {_show(args[arg])}; allowed: {what}")
    return args


def build_policy(A: Any, key: str, spec: dict, fill: tuple[float, ...]) -> Any:
    """The albumentations transform of the policy ``spec["name"]`` (one of POLICY_NAMES);
    ``fill``: the mean colour, used where its ``fill`` argument is ``mean``."""
    name = spec["name"]
    args = _check_args(key, name, spec)
    colour = args["fill"]
    if colour == "mean":
        colour = fill
    elif isinstance(colour, (int, float)) and not isinstance(colour, bool):
        colour = (float(colour),) * 3
    elif not (isinstance(colour, list) and len(colour) == 3
              and all(isinstance(c, (int, float)) for c in colour)):
        raise ConfigError(f"{key}.fill: {name} refuses {_show(colour)}; allowed: mean, a "
                          "level 0-255 or a list of three")
    return _policy(A, name, args, tuple(float(c) for c in colour))
