"""aug.backend=albumentations: config validation (one line naming the key, with or without the
package), the DataLoader batch source (shapes, order, determinism), a tiny end-to-end run, and
a statistical comparison with the batched backend on the same images.

The statistical tests draw 1,000 images per backend with fixed seeds. Each assertion is a
test whose false-alarm probability for a correct implementation is about 1e-4 (so a few
dozen of them together stay under 1e-2 for a random seed); the thresholds come from that
level, not from the observed values. What each one can detect is said next to it.
"""

from __future__ import annotations

import math
import sys
from importlib.util import find_spec

import pytest
import torch
import torch.nn.functional as F

from classlab import config
from classlab.augment import albu, augment, make_generator
from classlab.cli import main
from classlab.config import ALBUMENTATIONS_DEFAULT, AugConfig, ConfigError
from classlab.run.checks import check_environment
from classlab.rundir.metrics import read_metrics

needs_albu = pytest.mark.skipif(find_spec("albumentations") is None,
                                reason="albumentations is not installed")

TINY = ["name=tiny", "data.name=synthetic", "data.synthetic_size=300", "model.width=4",
        "train.epochs=2", "train.batch_size=64", "train.progress=false", "train.device=cpu",
        "train.threads=1", "diagnose.enabled=false", "log.dynamics_every=0",
        "train.precision=fp32", "train.channels_last=false"]
ALBU = ["aug.backend=albumentations"]


def _without_albumentations(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "albumentations"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "albumentations", None)  # `import albumentations` fails


# --------------------------------------------------------------------------- config


def _load_checked(overrides):
    """What `classlab train` does before anything is written: load the config (its shape),
    then check what needs the package (the transforms themselves)."""
    cfg = config.load(None, overrides)
    check_environment(cfg)
    return cfg


def test_batched_backend_never_needs_the_package(monkeypatch):
    _without_albumentations(monkeypatch)
    cfg = config.load(None)
    assert cfg.aug.backend == "batched" and cfg.aug.albumentations == ALBUMENTATIONS_DEFAULT
    # names are only checked against albumentations when that backend is chosen
    assert config.load(None, ["aug.albumentations=[{name: NoSuchThing}]"]).aug.albumentations \
        == [{"name": "NoSuchThing"}]
    # the default list is a copy per config: editing one never changes the default
    cfg.aug.albumentations[0]["padding"] = 99
    assert config.load(None).aug.albumentations[0]["padding"] == 4


def test_missing_package_is_one_line_and_exit_2_without_a_run_folder(monkeypatch, tmp_path,
                                                                      capsys):
    _without_albumentations(monkeypatch)
    with pytest.raises(ConfigError) as e:
        _load_checked(ALBU)
    assert str(e.value) == albu.INSTALL_HINT == (
        "aug.backend=albumentations needs the albumentations package: "
        "pip install 'classlab[albumentations]'")
    out = tmp_path / "runs"
    capsys.readouterr()
    assert main(["train", *TINY, *ALBU, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"classlab train: error: {albu.INSTALL_HINT}\n"
    assert not out.exists()


@needs_albu
@pytest.mark.parametrize("value, pattern", [
    ("[{name: HorizontalFlp}]",
     r"^aug\.albumentations\[0\]\.name: unknown transform 'HorizontalFlp'; allowed: one of the "
     r"\d+ albumentations transforms, e.g. HorizontalFlip"),
    ("[{name: HorizontalFlip}, {name: Compose}]",
     r"^aug\.albumentations\[1\]\.name: unknown transform 'Compose'; allowed: "),
    ("[{name: Rotate, limit: 5, angle: 3}]",
     r"^aug\.albumentations\[0\]\.angle: unknown argument of Rotate; allowed: limit, "
     r"interpolation, .*\bp$"),
    ("[{name: HorizontalFlip, p: 2}]",
     r"^aug\.albumentations\[0\]\.p: HorizontalFlip refuses 2: .*less than or equal to 1$"),
    ("[{name: Rotate, limit: [1, 2, 3]}]",
     r"^aug\.albumentations\[0\]\.limit: Rotate refuses \[1, 2, 3\]: .*at most 2 items"),
    ("[{name: Crop, x_min: 8, x_max: 4}]",
     r"^aug\.albumentations\[0\]: Crop refuses: .*x_max must be greater than x_min$"),
    ("[{name: RandomCrop, height: 32}]",
     r"^aug\.albumentations\[0\]\.width: RandomCrop needs this argument; required: width$"),
    ("[{name: HorizontalFlip, p: .nan}]",
     r"^aug\.albumentations\[0\]\.p: nan is not a finite number$"),
    ("[{name: Rotate, limit: {a: 1}}]",
     r"^aug\.albumentations\[0\]\.limit: expected a number, string, true/false or a list"),
    ("[{p: 0.5}]", r"^aug\.albumentations\[0\]\.name: expected the name of an albumentations "
                   r"transform, got None$"),
    ("HorizontalFlip", r"^aug\.albumentations: expected a list of mappings, got "
                       r"'HorizontalFlip'$"),
])
def test_each_error_is_one_line_naming_the_key(value, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        _load_checked([*ALBU, f"aug.albumentations={value}"])
    assert len(str(e.value).splitlines()) == 1


@needs_albu
@pytest.mark.parametrize("value, pattern", [
    ("[{name: HorizontalFlp}]", "aug.albumentations[0].name: unknown transform"),
    # valid arguments, but the output is not a 32x32 uint8 image: found when the session
    # is built, still before the run folder
    ("[{name: Resize, height: 16, width: 16}]", "aug.albumentations: the transforms turn a "
                                                 "32x32 uint8 image into ndarray (16, 16, 3)"),
    ("[{name: Normalize}]", "into ndarray (32, 32, 3) float32"),
])
def test_cli_config_errors_exit_2_without_a_run_folder(tmp_path, capsys, value, pattern):
    out = tmp_path / "runs"
    capsys.readouterr()
    assert main(["train", *TINY, *ALBU, f"aug.albumentations={value}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and pattern in err, err
    assert not out.exists()


@needs_albu
def test_default_pipeline_builds_and_keeps_size_and_dtype():
    import numpy as np

    cfg = _load_checked(ALBU)
    compose = albu.build_compose(cfg.aug.albumentations, fill=(125.0, 123.0, 114.0))
    names = [type(t).__name__ for t in compose.transforms]
    assert names == [s["name"] for s in ALBUMENTATIONS_DEFAULT]
    assert compose.transforms[3].p == 1.0  # Rotate's own default is p=0.5
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = compose(image=img)["image"]
    assert out.shape == img.shape and out.dtype == np.uint8


# --------------------------------------------------------------------------- batch source


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def _epoch(source: albu.AlbuBatches, n: int, batch_size: int, epoch: int,
           seed: int = 1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(index batches, image batches) of one epoch, drawn as train_one_epoch draws them."""
    from classlab.engine import batch_indices, epoch_generator

    gen = epoch_generator(seed, epoch, torch.device("cpu"))
    batches = batch_indices(n, batch_size, gen)
    return batches, list(source(batches, gen))


@needs_albu
def test_batches_follow_the_index_lists_with_shapes_and_dtypes():
    x = _images(50)
    # no transforms: every batch is exactly x[idx], in the order of the index lists
    batches, images = _epoch(albu.AlbuBatches(x, [], (0.5,) * 3, workers=0), 50, 16, epoch=1)
    assert [len(b) for b in batches] == [16, 16, 16, 2]
    assert all(torch.equal(xb, x[idx]) for xb, idx in zip(images, batches))
    _, images = _epoch(albu.AlbuBatches(x, ALBUMENTATIONS_DEFAULT, (0.5,) * 3, workers=0), 50,
                       16, epoch=1)
    assert [tuple(b.shape) for b in images] == [(16, 3, 32, 32)] * 3 + [(2, 3, 32, 32)]
    assert all(b.dtype == torch.uint8 for b in images)


@needs_albu
def test_same_seed_and_epoch_same_batches_whatever_the_workers():
    x = _images(96)

    def run(epoch: int, rank: int = 0) -> list[torch.Tensor]:
        source = albu.AlbuBatches(x, ALBUMENTATIONS_DEFAULT, (0.5,) * 3, workers=0, rank=rank)
        return _epoch(source, len(x), 32, epoch)[1]

    a = run(1)
    assert all(torch.equal(p, q) for p, q in zip(a, run(1)))
    # another epoch reshuffles and redraws; another rank draws other augmentations
    b = run(2)
    assert not any(torch.equal(p, q) for p, q in zip(a, b))
    assert not any(torch.equal(p, q) for p, q in zip(a, run(1, rank=1)))
    # worker processes (started once by a fork server, kept for the next epoch) give the
    # very same batches as in-process, epoch after epoch
    source = albu.AlbuBatches(x, ALBUMENTATIONS_DEFAULT, (0.5,) * 3, workers=2)
    for epoch, expected in ((1, a), (2, b)):
        got = _epoch(source, len(x), 32, epoch)[1]
        assert len(got) == len(expected)
        assert all(torch.equal(p, q) for p, q in zip(got, expected)), epoch


@needs_albu
def test_tiny_run_with_the_albumentations_backend(tmp_path, capsys):
    out = tmp_path / "runs"
    # aug.workers=1: the real DataLoader worker path, after torch has already run ops
    assert main(["train", *TINY, *ALBU, "aug.workers=1", "--out", str(out)]) == 0
    (run_dir,) = out.iterdir()
    for f in ("config.yaml", "metrics.csv", "summary.json", "last.pt"):
        assert (run_dir / f).is_file(), f
    assert config.load(run_dir / "config.yaml").aug.backend == "albumentations"

    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["train_loss"] > 0 for r in rows)


# --------------------------------------------------------------------------- statistics
#
# The same images go through both backends. The batched ops work on normalised images, where
# 0 is the mean colour; here the images are only centred (x - 255 * mean), which is the same
# up to the scale, and every op commutes with a scale. The albumentations pipeline fills with
# that mean colour (fill: mean). Each op is checked alone (its slice of the default list
# against aug.ops=[op]), then the whole pipeline once.

N = 1000
MEAN = (100 / 255, 150 / 255, 200 / 255)  # fill colour (100, 150, 200)
FILL = torch.tensor([100.0, 150.0, 200.0]).view(1, 3, 1, 1)
SLICES = {"crop": slice(0, 2), "flip": slice(2, 3), "rotate": slice(3, 4), "cutout": slice(4, 7)}


def _noise(n: int = N, seed: int = 0) -> torch.Tensor:
    """Random images none of whose pixels has the fill colour (channel 0 avoids 92..108)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    red = torch.randint(0, 256 - 17, (n, 32, 32), generator=g)
    x[:, 0] = (red + 17 * (red >= 92)).to(torch.uint8)
    return x


def _batched(x: torch.Tensor, ops: list[str], seed: int = 7) -> torch.Tensor:
    """float pixel values after the batched backend."""
    out = augment(x.float() - FILL, make_generator(seed, "cpu"), AugConfig(ops=ops))
    return out + FILL


def _albu(x: torch.Tensor, ops: list[str], seed: int = 7) -> torch.Tensor:
    """float pixel values after the matching part of the default albumentations list."""
    specs = [s for op in ops for s in ALBUMENTATIONS_DEFAULT[SLICES[op]]]
    source = albu.AlbuBatches(x, specs, MEAN, workers=0)
    (out,) = source([torch.arange(len(x))], make_generator(seed, "cpu"))
    return out.float()


def _both(x: torch.Tensor, ops: list[str]) -> dict[str, torch.Tensor]:
    return {"batched": _batched(x, ops), "albumentations": _albu(x, ops)}


def _chi2_sf_even(x: float, df: int) -> float:
    """P(chi-square with an even ``df`` >= x), closed form."""
    k, h = df // 2, x / 2
    return math.exp(-h) * sum(h ** i / math.factorial(i) for i in range(k))


def _chi2_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness-of-fit p-value of ``counts`` against ``probs`` (len(probs) - 1 must be even)."""
    expected = probs * counts.sum()
    stat = float(((counts - expected) ** 2 / expected).sum())
    return _chi2_sf_even(stat, len(probs) - 1)


def _ks_uniform(v: torch.Tensor, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov distance between the sample ``v`` and uniform on [lo, hi]."""
    v = v.double().sort().values
    n = len(v)
    cdf = ((v - lo) / (hi - lo)).clamp(0, 1)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())


# KS distance exceeded with probability 1e-4 under the null: sqrt(ln(2 / alpha) / (2 n)).
KS_1E4 = math.sqrt(math.log(2 / 1e-4) / (2 * N))  # 0.070 for N = 1000
P_MIN = 1e-4


@needs_albu
def test_flip_rate_matches():
    x = _noise()
    for backend, out in _both(x, ["flip"]).items():
        same = (out == x.float()).flatten(1).all(1)
        flipped = (out == x.flip(-1).float()).flatten(1).all(1)
        assert bool((same ^ flipped).all()), backend  # every image is one or the other
        # binomial(1000, 0.5): sd 0.0158; |rate - 0.5| > 0.062 has probability 1e-4.
        # (A flip probability of 0.4 or 0.6, or an always/never flip, is caught.)
        rate = float(flipped.double().mean())
        assert abs(rate - 0.5) < 3.9 * math.sqrt(0.25 / N), (backend, rate)


def _crop_offsets(out: torch.Tensor, x: torch.Tensor, p: int = 4) -> torch.Tensor:
    """[N, 2] (dy, dx) with ``out[y, x] == x[y + dy, x + dx]`` on the central pixels."""
    xp = F.pad(x.float(), (p, p, p, p))
    errs = []
    for dy in range(-p, p + 1):
        for dx in range(-p, p + 1):
            cand = xp[:, :, p + dy: p + dy + 32, p + dx: p + dx + 32]
            errs.append((out - cand)[..., p:32 - p, p:32 - p].abs().flatten(1).amax(1))
    err = torch.stack(errs, 1)  # [N, 81]
    assert bool((err.min(1).values == 0).all())  # an exact integer shift for every image
    best = err.argmin(1)
    return torch.stack([best // (2 * p + 1) - p, best % (2 * p + 1) - p], 1)


@needs_albu
def test_crop_offsets_match():
    x = _noise()
    for backend, out in _both(x, ["crop"]).items():
        d = _crop_offsets(out, x)
        for axis in range(2):
            counts = torch.bincount(d[:, axis] + 4, minlength=9).double()
            assert len(counts) == 9, backend  # never beyond the 4-pixel padding
            # uniform over -4..4 on each axis (chi-square, 8 df, at 1e-4). A padding of 3 or
            # 5, or offsets biased to one side, is caught.
            assert _chi2_p(counts, torch.full((9,), 1 / 9)) > P_MIN, (backend, axis, counts)
        # the rows the crop brings in from outside have the mean colour
        i = int((d[:, 0] != 0).nonzero()[0])
        dy = int(d[i, 0])
        rows = slice(None, -dy) if dy < 0 else slice(32 - dy, None)
        assert bool((out[i, :, rows] == FILL[0]).all()), backend


def _ramp_angles(out: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) of the brightness gradient of each image, by a least-squares plane on
    the pixels within 12 of the centre (a rotation of at most a few degrees keeps them inside
    the image, and bilinear interpolation keeps a linear ramp linear)."""
    c = 15.5
    ys, xs = torch.meshgrid(torch.arange(32.0) - c, torch.arange(32.0) - c, indexing="ij")
    inside = (ys ** 2 + xs ** 2) <= 12 ** 2
    design = torch.stack([torch.ones_like(xs[inside]), xs[inside], ys[inside]], 1).double()
    v = out.double().mean(1)[:, inside]  # [N, P]
    coef = torch.linalg.lstsq(design, v.T).solution  # [3, N]
    return torch.rad2deg(torch.atan2(coef[2], coef[1])).float()


@needs_albu
def test_rotation_angles_match():
    # A left-to-right ramp, 6 levels per pixel, plus integer noise in -4..4 per pixel and
    # channel. The noise dithers the rounding to uint8 after albumentations' rotation: on a
    # clean ramp, angles under about 0.8 degrees change no pixel by a whole level and would
    # be measured as 0. It costs an error of about 0.1 degree (sd) per measured angle.
    g = torch.Generator().manual_seed(3)
    ramp = (30 + 6 * torch.arange(32)).view(1, 1, 1, 32)
    x = (ramp + torch.randint(-4, 5, (N, 3, 32, 32), generator=g)).to(torch.uint8)
    a0 = _ramp_angles(x.float())
    assert float(a0.abs().max()) < 0.5 and float(a0.std()) < 0.15  # the measurement error
    angles = {}
    for backend, out in _both(x, ["rotate"]).items():
        a = _ramp_angles(out)
        assert float(a.abs().max()) < 5.6, backend  # +-5 degrees, plus 5 sd of the error
        # uniform on [-5, 5]: KS distance < 0.070 at 1e-4 (the measurement error adds under
        # 0.005). Rotate's own default p=0.5 (half the images unrotated) gives about 0.25,
        # a limit of 4 or 6 degrees about 0.1.
        assert _ks_uniform(a, -5, 5) < KS_1E4, (backend, _ks_uniform(a, -5, 5))
        angles[backend] = a.abs()
    # mean |angle|: 2.5 for both; sd of |angle| is 5 / sqrt(12), so 4 standard errors of the
    # difference of two means of N
    diff = float(angles["batched"].mean() - angles["albumentations"].mean())
    assert abs(diff) < 4 * math.sqrt(2 * 25 / 12 / N), diff


def _fill_mask(out: torch.Tensor) -> torch.Tensor:
    """[N, H, W]: pixels of the fill colour (channel 0 of the noise never is)."""
    return ((out.round() - FILL).abs() <= 1).all(1)


@needs_albu
def test_cutout_size_and_position_match():
    # With the square's centre uniform over the 32 rows and clipped at the border, its height
    # (and width) is 8 (1 in 32), 9..15 (2 in 32 each) or 16 (17 in 32); its first row
    # -8 .. 23. CoarseDropout alone (hole kept inside) would always be 16 high.
    probs = torch.tensor([1] + [2] * 7 + [17], dtype=torch.float64) / 32
    x = _noise()
    for backend, out in _both(x, ["cutout"]).items():
        mask = _fill_mask(out)
        rows, cols = mask.any(2), mask.any(1)  # [N, 32] each
        assert bool(rows.any(1).all()), backend  # every image has its square (cutout_p=1)
        # a solid rectangle: its pixel count is the product of its extents
        assert torch.equal(mask.flatten(1).sum(1), rows.sum(1) * cols.sum(1)), backend
        for extent in (rows, cols):
            length = extent.sum(1)
            assert int(length.min()) >= 8 and int(length.max()) <= 16, backend
            counts = torch.bincount(length - 8, minlength=9).double()
            assert _chi2_p(counts, probs) > P_MIN, (backend, counts)  # 8 df, at 1e-4
            first = extent.double().argmax(1)  # first covered row/column
            start = torch.where(first == 0, extent.sum(1) - 16, first)
            # both ends reached: P(never -8 or never 23 in 1000 draws) < 2 * (31/32)^1000
            assert (int(start.min()), int(start.max())) == (-8, 23), backend


@needs_albu
def test_whole_pipeline_same_kind_of_images():
    # Everything at once: the fraction of mean-coloured pixels (cutout square, crop border,
    # rotated-in corners) per image, and the per-image brightness.
    x = _noise(seed=1)
    ops = ["crop", "flip", "rotate", "cutout"]
    out = _both(x, ops)
    frac = {b: _fill_mask(o).flatten(1).double().mean(1) for b, o in out.items()}
    # two-sample KS: distance > c * sqrt(2 / N) = 0.0995 with probability 1e-4
    # (c = sqrt(ln(2 / 1e-4) / 2) = 2.23)
    ks_crit = math.sqrt(math.log(2 / 1e-4) / 2) * math.sqrt(2 / N)
    fa, fb = frac["batched"].sort().values, frac["albumentations"].sort().values
    grid = torch.cat([fa, fb]).unique()
    cdf_a = torch.searchsorted(fa, grid, right=True).double() / N
    cdf_b = torch.searchsorted(fb, grid, right=True).double() / N
    assert float((cdf_a - cdf_b).abs().max()) < ks_crit
    # means within 4 standard errors of their difference (a hole 12 wide instead of 16, or
    # CoarseDropout without the border pad, moves the mean by about 8 standard errors)
    se = math.sqrt(float(fa.var() + fb.var()) / N)
    assert abs(float(fa.mean() - fb.mean())) < 4 * se, (float(fa.mean()), float(fb.mean()), se)
