"""The albumentations backend (``aug.backend: albumentations``).

The transforms are named in the config, one mapping per transform::

    aug:
      backend: albumentations
      albumentations:
        - {name: HorizontalFlip, p: 0.5}
        - {name: Rotate, limit: 5, fill: mean, p: 1.0}

``name`` is an albumentations class, every other key an argument of its constructor. The
value ``mean`` for a ``fill`` argument stands for the training set's mean colour: the batched
backend pads, rotates and cuts out in normalised space, where 0 *is* the mean colour, so this
is how a pipeline written here makes the same images.

:func:`check_transforms` builds every transform of a list once, before the run folder is
made (:mod:`classlab.run.checks`; one-line ConfigErrors naming
``aug.albumentations[i].<arg>``). :class:`AlbuBatches` makes the augmented uint8 batches of
an epoch in DataLoader workers, for ``train_one_epoch(batch_source=...)``.

albumentations is an optional dependency; this module imports it (and torch) lazily, so the
config can name it without it being installed as long as the backend is ``batched``.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from classlab.augment.albu_policies import POLICY_NAMES, build_policy
from classlab.config import ConfigError, check_albumentations_shape
from classlab.config import show as _show

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["AlbuBatches", "INSTALL_HINT", "build_compose", "check_transforms", "seed_compose",
           "transform_names"]

KEY = "aug.albumentations"
INSTALL_HINT = ("aug.backend=albumentations needs the albumentations package: "
                "pip install 'classlab[albumentations]'")
# Base classes albumentations exports next to its transforms: not transforms themselves.
_BASES = frozenset({"BasicTransform", "DualTransform", "ImageOnlyTransform", "Transform3D"})
# Arguments whose value may be the string "mean" (the training set's mean colour).
_MEAN_ARGS = frozenset({"fill"})


def _import() -> Any:
    """The albumentations module, or a one-line ConfigError saying how to install it."""
    # albumentations 2.x asks PyPI for a newer version on import (a network call from a
    # training run, and a stall on a machine without network); classlab never wants that.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        import albumentations as A
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    major = str(getattr(A, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) < 2:
        # The default pipeline and the per-batch seeding use the 2.x API (fill=, Pad,
        # num_holes_range=, Compose.set_random_state).
        raise ConfigError(f"{INSTALL_HINT} (version 2 or later; found {A.__version__})")
    return A


def transform_names() -> list[str]:
    """Every albumentations class usable as a transform ``name`` (sorted)."""
    A = _import()
    return sorted(n for n in dir(A) if not n.startswith("_") and n not in _BASES
                  and isinstance(getattr(A, n), type)
                  and issubclass(getattr(A, n), A.BasicTransform))


def _arguments(cls: type) -> list[str]:
    """The keyword arguments ``cls.__init__`` declares (albumentations 2.x declares them all;
    unknown ones would only be warned about and ignored, so we refuse them here)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self"
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _refusal(e: Exception) -> tuple[str | None, str]:
    """(argument, reason) from an exception a transform's constructor raised.

    albumentations 2.x validates with pydantic and re-raises the ValidationError as a
    multi-line ValueError; its ``__cause__`` still has the structured errors, which name the
    argument. Anything else is flattened to one bounded line.
    """
    cause = e.__cause__
    errors = getattr(cause, "errors", None)
    if callable(errors):
        try:
            errs = errors()
        except Exception:  # noqa: BLE001 - fall back to the plain text below
            errs = []
        if errs:
            loc = errs[0].get("loc") or ()
            arg = str(loc[0]) if loc else None
            msgs = list(dict.fromkeys(  # a union type gives one message per alternative
                str(x.get("msg", "")) for x in errs if (x.get("loc") or (None,))[0] == arg))
            return arg, " or ".join(m for m in msgs if m)[:300]
    text = " ".join(str(e).split()) or type(e).__name__
    return None, text[:300]


def _resolve(value: Any, arg: str, fill: tuple[float, ...]) -> Any:
    """YAML value -> constructor value: lists become tuples (albumentations' ranges and
    colours are typed as tuples), ``fill: mean`` becomes the mean colour."""
    if arg in _MEAN_ARGS and value == "mean":
        return tuple(fill)
    return tuple(value) if isinstance(value, list) else value


def _build_one(A: Any, i: int, spec: dict, fill: tuple[float, ...]) -> Any:
    key = f"{KEY}[{i}]"
    name = spec["name"]
    if name in POLICY_NAMES:  # classlab's policies, made of albumentations transforms
        return build_policy(A, key, spec, fill)
    names = transform_names()
    if name not in names:
        # the closest spellings first, then names containing what was typed, then A, B, ...
        lower = {n.lower(): n for n in names}
        close = [lower[n] for n in difflib.get_close_matches(name.lower(), lower, n=5)]
        close += [n for n in names if name.lower() in n.lower() and n not in close]
        raise ConfigError(f"{key}.name: unknown transform {_show(name)}; allowed: one of the "
                          f"{len(names)} albumentations transforms, e.g. "
                          f"{', '.join((close or names)[:8])}, or {', '.join(POLICY_NAMES)}")
    cls = getattr(A, name)
    allowed = _arguments(cls)
    for arg in spec:
        if arg != "name" and arg not in allowed:
            raise ConfigError(f"{key}.{arg}: unknown argument of {name}; allowed: "
                              f"{', '.join(allowed)}")
    params = inspect.signature(cls.__init__).parameters
    missing = [a for a in allowed if params[a].default is params[a].empty and a not in spec]
    if missing:
        raise ConfigError(f"{key}.{missing[0]}: {name} needs this argument; required: "
                          f"{', '.join(missing)}")
    kwargs = {arg: _resolve(v, arg, fill) for arg, v in spec.items() if arg != "name"}
    try:
        return cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - pydantic, TypeError, ValueError, OverflowError...
        arg, reason = _refusal(e)
        where = f"{key}.{arg}" if arg in kwargs else key
        value = f" {_show(spec[arg])}" if arg in kwargs else ""
        raise ConfigError(f"{where}: {name} refuses{value}: {reason}") from None


def build_compose(specs: list[dict], fill: tuple[float, ...] = (0.0, 0.0, 0.0)) -> Any:
    """``A.Compose`` of the validated ``specs``; ``fill`` replaces ``fill: mean``."""
    A = _import()
    check_albumentations_shape(specs)
    return A.Compose([_build_one(A, i, spec, fill) for i, spec in enumerate(specs)])


def check_transforms(specs: list[dict]) -> None:
    """Validation of ``aug.albumentations`` before a run starts (builds every transform once)."""
    build_compose(specs)


def seed_compose(compose: Any, seed: int) -> None:
    """Seed ``compose`` so that all its transforms draw from one shared stream.

    ``Compose.set_random_seed`` (albumentations 2.0.8) gives every transform its own
    generator seeded with the *same* seed: their draws are then identical, so two
    ``p=0.5`` transforms fire together half the time instead of a quarter, and an
    AutoAugment sub-policy's two ops are applied together far more often than their
    probabilities say. One numpy and one Python generator handed to all of them keeps the
    draws independent and still depends on ``seed`` alone."""
    import random

    import numpy as np

    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))


# --------------------------------------------------------------------------- data loading


def _worker_init(_worker_id: int) -> None:
    # Each worker processes one image at a time; OpenCV's own thread pool in every worker
    # would only oversubscribe the cores the training process needs.
    import cv2

    cv2.setNumThreads(1)


class _EpochImages:
    """Map-style dataset whose keys are whole batches: ``(seed, indices) -> uint8 [B,3,H,W]``.

    One key per batch (not per image) so the compose is reseeded once per batch: the result
    depends only on the key, not on which worker got it or how many workers there are.
    """

    def __init__(self, images: np.ndarray, specs: list[dict], fill: tuple[float, ...]) -> None:
        self.images = images  # [N, H, W, 3] uint8, what albumentations expects
        self.specs, self.fill = specs, fill
        self._compose: Any = None  # built on first use, in the worker that uses it

    def __getitem__(self, key: tuple[int, np.ndarray]) -> torch.Tensor:
        import numpy as np
        import torch

        seed, idx = key
        if self._compose is None:
            self._compose = build_compose(self.specs, self.fill)
        seed_compose(self._compose, seed)
        out = np.stack([self._compose(image=self.images[i])["image"] for i in idx])
        return torch.from_numpy(out).permute(0, 3, 1, 2)  # NCHW, like the rest of classlab


class AlbuBatches:
    """``batch_source`` for :func:`classlab.engine.epoch.train_one_epoch`: given the epoch's
    batches of indices (already this rank's shards) and the epoch generator, an iterator over the
    augmented uint8 ``[B,3,H,W]`` CPU tensors of those batches, in order.

    images: the uint8 ``[N,3,H,W]`` training set; mean: its per-channel mean in ``[0, 1]``
    (what ``fill: mean`` means); rank: mixed into the seeds, so the processes of a torchrun
    job draw different augmentations for their different images.
    """

    def __init__(self, images: torch.Tensor, specs: list[dict], mean: tuple[float, ...], *,
                 workers: int = 2, rank: int = 0, pin_memory: bool = False) -> None:
        self.fill = tuple(float(round(255 * m)) for m in mean)
        self.images, self.specs = images, list(specs)
        self.workers, self.rank, self.pin_memory = workers, rank, pin_memory
        self._dataset: _EpochImages | None = None  # made on first use: eval never needs it
        self._loader: Any = None
        self._keys = _Keys()
        self._check_output()

    @property
    def dataset(self) -> _EpochImages:
        if self._dataset is None:
            import numpy as np

            hwc = np.ascontiguousarray(self.images.permute(0, 2, 3, 1).numpy())
            self._dataset = _EpochImages(hwc, self.specs, self.fill)
        return self._dataset

    def _check_output(self) -> None:
        """The pipeline must give back uint8 images of the input's size (normalisation and
        tensor conversion happen after it, on the device): one image tells, before training."""
        if len(self.images) == 0:
            return
        first = self.images[0].permute(1, 2, 0).contiguous().numpy()
        out = build_compose(self.specs, self.fill)(image=first)["image"]
        shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
        if shape != first.shape or str(dtype) != "uint8":
            raise ConfigError(f"{KEY}: the transforms turn a {first.shape[0]}x{first.shape[1]} "
                              f"uint8 image into {type(out).__name__} {tuple(shape or ())} "
                              f"{dtype}; allowed: transforms that keep the size and uint8 "
                              "(classlab converts and normalises after them)")

    def seeds(self, n: int, gen: torch.Generator) -> list[int]:
        """``n`` per-batch seeds from the epoch generator (itself seeded by train.seed and the
        epoch, so a resumed run gets the same ones) and this process's rank."""
        import numpy as np
        import torch

        base = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
        return [int(s) for s in np.random.SeedSequence([base, self.rank]).generate_state(n)]

    def __call__(self, batches: list[torch.Tensor], gen: torch.Generator) -> Iterator[torch.Tensor]:
        import numpy as np
        import torch

        if not batches:
            return iter(())
        # One device->host copy of the epoch's indices, then split back into batches.
        flat = torch.cat(batches).cpu().numpy()
        idx = np.split(flat, np.cumsum([len(b) for b in batches])[:-1])
        self._keys.keys = list(zip(self.seeds(len(batches), gen), idx))
        return iter(self.loader)

    @property
    def loader(self) -> Any:
        """One DataLoader for the whole run; each epoch only swaps the keys its sampler hands
        out. Its workers are persistent and started by a fork server, not forked from this
        process: a child forked after torch has run a multi-threaded (OpenMP) op hangs in
        its first torch call, and starting workers once per run, not per epoch, pays their
        imports (torch, albumentations: seconds) once."""
        if self._loader is None:
            import multiprocessing

            from torch.utils.data import DataLoader

            extra: dict[str, Any] = {}
            if self.workers:
                methods = multiprocessing.get_all_start_methods()
                extra = {"persistent_workers": True, "worker_init_fn": _worker_init,
                         "multiprocessing_context":
                             "forkserver" if "forkserver" in methods else "spawn"}
            self._loader = DataLoader(self.dataset, batch_size=None, sampler=self._keys,
                                      num_workers=self.workers, pin_memory=self.pin_memory,
                                      **extra)
        return self._loader


class _Keys:
    """A sampler whose keys are replaced every epoch (the DataLoader reads them through
    ``iter`` in this process, when each epoch's iteration starts)."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, np.ndarray]] = []

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)
