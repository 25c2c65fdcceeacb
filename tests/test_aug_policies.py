"""Issue 25: augmentation policies (RandAugment, TrivialAugment, AutoAugment, colour jitter,
random erasing) and mixing (mixup, CutMix) in the batched pipeline, checked against
references: Kornia's and PIL's image ops at fixed parameters, the papers' distributions of
ops and magnitudes, albumentations' and Kornia's random transforms, PyTorch's soft-target
cross-entropy; then in real (tiny) runs: mixed images reach the training step only, a
resumed run stays bit-identical, mixing stops at aug.mix_off_epoch. CPU, tiny tensors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_weights

from classlab import config
from classlab.augment import AUGMENTATIONS, PixelStats, make_generator, mixing, policies
from classlab.augment import imageops as ops
from classlab.augment.batched import STEP_OPS
from classlab.config import AugConfig

scipy_stats = pytest.importorskip("scipy.stats")
kornia = pytest.importorskip("kornia")

STATS = PixelStats((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
CFG = AugConfig(jitter_hue=0.1)  # every op active with its defaults (hue too)


def pixels(n: int = 16, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    """uint8 levels / 255, ``[n,3,h,w]`` float32."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g).float() / 255


def normalised(n: int = 16, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return STATS.from_pixels(pixels(n, h, w, seed), torch.float32)


# --------------------------------------------------------------------------- every name


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_registered_augmentation_is_reproducible_and_leaves_its_input(name, dtype):
    x = normalised().to(dtype)
    before = x.clone()
    fn = AUGMENTATIONS[name]
    g1, g2 = make_generator(3, "cpu"), make_generator(3, "cpu")
    a, b = fn(x, g1, CFG, STATS), fn(x, g2, CFG, STATS)
    assert torch.equal(a, b), "same generator seed, different images"
    assert a.shape == x.shape and a.dtype == dtype and a.device == x.device
    assert torch.equal(x, before), "input modified in place"
    assert not torch.equal(a, x)
    # a fixed number of draws whatever the pixels: the generator ends in the same state on
    # other images, so an epoch's later batches do not depend on this one's content
    g3 = make_generator(3, "cpu")
    fn(normalised(seed=9).to(dtype), g3, CFG, STATS)
    assert torch.equal(g1.get_state(), g3.get_state())


def test_the_batched_pipeline_skips_exactly_the_mixing_names():
    assert set(STEP_OPS) == set(mixing.MIXING) == set(mixing.MIXING_OPS)
    x = normalised()
    from classlab.augment import augment

    cfg = dataclasses.replace(CFG, ops=["mixup", "cutmix"])
    assert augment(x, make_generator(0, "cpu"), cfg, STATS) is x


# --------------------------------------------------------------------------- image ops


def _factor(n: int) -> torch.Tensor:
    return torch.linspace(0.1, 1.9, n)


# classlab's own ops against Kornia's functions of the same definition
KORNIA_REFERENCE = {
    "sharpness": (kornia.enhance.sharpness, _factor),
    "posterize": (lambda p, v: kornia.enhance.posterize(p, v.long()),
                  lambda n: torch.arange(n) % 8 + 1.0),
    "autocontrast": (lambda p, v: kornia.enhance.normalize_min_max(p), torch.zeros),
    "color": (kornia.enhance.adjust_saturation_with_gray_subtraction, _factor),
    "hue": (lambda p, v: kornia.enhance.adjust_hue(p, 2 * math.pi * v),
            lambda n: torch.linspace(-0.5, 0.5, n)),
}


@pytest.mark.parametrize("name", sorted(KORNIA_REFERENCE))
def test_own_photometric_op_matches_kornia_at_fixed_parameters(name):
    reference, values = KORNIA_REFERENCE[name]
    p = pixels(24)
    v = values(24)
    torch.testing.assert_close(ops.PHOTOMETRIC[name](p, v), reference(p, v), rtol=0, atol=2e-6)


def _pil(name: str, img: np.ndarray, v: float) -> np.ndarray:
    from PIL import Image, ImageEnhance, ImageOps

    im = Image.fromarray(img)
    enhance = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color,
               "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}
    if name in enhance:
        return np.asarray(enhance[name](im).enhance(v))
    if name == "posterize":
        return np.asarray(ImageOps.posterize(im, int(v)))
    if name == "solarize":
        return np.asarray(ImageOps.solarize(im, int(v)))
    return np.asarray({"invert": ImageOps.invert, "equalize": ImageOps.equalize,
                       "autocontrast": ImageOps.autocontrast}[name](im))


def test_hue_rotates_by_turns_as_colorsys_does():
    import colorsys

    p = pixels(6, 3, 3)
    v = torch.tensor([-0.5, -0.25, 0.0, 0.1, 0.3, 0.5])
    got = ops.hue(p, v)
    for i in range(6):
        for y in range(3):
            for x in range(3):
                h, s, val = colorsys.rgb_to_hsv(*p[i, :, y, x].tolist())
                want = colorsys.hsv_to_rgb((h + float(v[i])) % 1.0, s, val)
                assert torch.allclose(got[i, :, y, x], torch.tensor(want), atol=1e-5)


# every photometric op (Kornia's and classlab's) against PIL, the papers' definitions, at
# fixed parameters; PIL rounds to a level after each step (the grey image, the mean, the
# filtered image), these ops do not: the allowed difference in levels
PIL_OPS = {"brightness": (_factor, 1), "color": (_factor, 2), "contrast": (_factor, 2),
           "sharpness": (_factor, 2), "posterize": (lambda n: torch.arange(n) % 8 + 1.0, 0),
           "solarize": (lambda n: torch.linspace(0, 256, n).round(), 0),
           "invert": (torch.zeros, 0), "equalize": (torch.zeros, 0),
           "autocontrast": (torch.zeros, 1)}


@pytest.mark.parametrize("name", sorted(PIL_OPS))
def test_photometric_op_matches_pil_at_fixed_parameters(name):
    values, tolerance = PIL_OPS[name]
    p = pixels(18, 9, 7)
    v = values(18)
    got = (ops.PHOTOMETRIC[name](p, v) * 255).round().to(torch.int64).permute(0, 2, 3, 1)
    img = (p * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    want = np.stack([_pil(name, i, float(f)) for i, f in zip(img, v)])
    assert np.abs(got.numpy() - want).max() <= tolerance


def test_geometric_ops_match_kornia_warp_affine():
    G = kornia.geometry.transform
    n, h, w = 32, 12, 10
    p = pixels(n, h, w)
    fill = torch.tensor([0.3, 0.5, 0.7]).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(5)
    angle = torch.rand(n, generator=g) * 60 - 30
    shear = torch.rand(n, generator=g) * 0.6 - 0.3
    shift = torch.rand(n, generator=g) * 16 - 8
    eye = torch.eye(2, 3).expand(n, 2, 3).clone()  # forward (source -> output) maps
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2]).expand(n, 2)
    rot = G.get_rotation_matrix2d(centre, angle, torch.ones(n, 2))
    sx = eye.clone()
    sx[:, 0, 1], sx[:, 0, 2] = -shear, shear * (h - 1) / 2
    sy = eye.clone()
    sy[:, 1, 0], sy[:, 1, 2] = -shear, shear * (w - 1) / 2
    tx, ty = eye.clone(), eye.clone()
    tx[:, 0, 2], ty[:, 1, 2] = shift, shift
    cases = {"rotate": (angle, rot), "shear_x": (shear, sx), "shear_y": (shear, sy),
             "translate_x": (shift, tx), "translate_y": (shift, ty)}
    for name, (v, m) in cases.items():
        want = G.warp_affine(p, m, (h, w), mode="nearest", padding_mode="fill",
                             fill_value=fill[0, :, 0, 0], align_corners=True)
        torch.testing.assert_close(ops.GEOMETRIC[name](p, v, fill), want, rtol=0, atol=1e-6,
                                   msg=name)


# --------------------------------------------------------------------------- policies


def _record_layers(monkeypatch) -> list[dict]:
    """Every apply_layer call's draws: op names, magnitude fractions, signs."""
    calls: list[dict] = []
    real = policies.apply_layer

    def spy(p, names, op, f, negative, ranges, fill):
        calls.append({"op": [names[i] for i in op.tolist()], "f": f.clone(),
                      "negative": negative.clone(), "ranges": ranges})
        return real(p, names, op, f, negative, ranges, fill)

    monkeypatch.setattr(policies, "apply_layer", spy)
    return calls


def _uniform(counts: list[int]) -> float:
    return scipy_stats.chisquare(counts).pvalue


def test_randaugment_draws_n_uniform_ops_at_magnitude_m(monkeypatch):
    calls = _record_layers(monkeypatch)
    cfg = dataclasses.replace(CFG, randaugment_n=2, randaugment_m=7.0)
    AUGMENTATIONS["randaugment"](normalised(7000, 4, 4), make_generator(1, "cpu"), cfg, STATS)
    assert len(calls) == 2
    for c in calls:
        assert _uniform([c["op"].count(o) for o in policies.RANDAUGMENT_OPS]) > 1e-3
        assert torch.equal(c["f"], torch.full((7000,), 0.7))
        assert abs(c["negative"].float().mean().item() - 0.5) < 0.03
        assert c["ranges"] is policies.STANDARD
    assert calls[0]["op"] != calls[1]["op"]  # each layer draws its own ops


def test_trivialaugment_draws_one_uniform_op_at_a_uniform_bin(monkeypatch):
    calls = _record_layers(monkeypatch)
    AUGMENTATIONS["trivialaugment"](normalised(9300, 4, 4), make_generator(2, "cpu"), CFG, STATS)
    (c,) = calls
    assert _uniform([c["op"].count(o) for o in policies.RANDAUGMENT_OPS]) > 1e-3
    bins = (c["f"] * 30).round().long()
    assert torch.allclose(c["f"] * 30, bins.float(), atol=1e-5)  # 31 bins, 0..30
    assert _uniform(torch.bincount(bins, minlength=31).tolist()) > 1e-3
    assert c["ranges"] is policies.WIDE


def test_op_magnitudes_follow_the_papers_scales():
    f = torch.tensor([0.0, 0.5, 1.0])
    pos, neg = torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)

    def values(name, ranges, negative=pos, h=32, w=32):
        return policies.op_values(name, f, negative, ranges, h, w).tolist()

    S, W = policies.STANDARD, policies.WIDE
    assert values("rotate", S) == [0.0, 15.0, 30.0] and values("rotate", S, neg)[2] == -30.0
    assert values("rotate", W) == [0.0, 67.5, 135.0]
    assert values("shear_x", S) == pytest.approx([0.0, 0.15, 0.3])
    assert values("translate_x", S) == pytest.approx([0.0, 16 * 150 / 331, 32 * 150 / 331])
    assert values("translate_y", W, h=16) == [0.0, 8.0, 16.0]
    assert values("brightness", S) == pytest.approx([1.0, 1.45, 1.9])
    assert values("color", S, neg) == pytest.approx([1.0, 0.55, 0.1])
    assert values("posterize", S) == [8.0, 6.0, 4.0] and values("posterize", W) == [8.0, 5.0, 2.0]
    assert values("solarize", S) == [256.0, 128.0, 0.0]
    assert values("equalize", S) == [0.0, 0.0, 0.0]


def test_autoaugment_picks_uniform_subpolicies_and_applies_ops_with_their_probability(
        monkeypatch):
    calls = _record_layers(monkeypatch)
    n = 20000
    AUGMENTATIONS["autoaugment"](normalised(n, 2, 2), make_generator(3, "cpu"), CFG, STATS)
    assert len(calls) == 2
    table = policies.AUTOAUGMENT_CIFAR10
    for k, c in enumerate(calls):
        # the expected count of each op in slot k: sum over sub-policies of p / 25
        want = {o: 0.0 for o in policies.AUTOAUGMENT_OPS}
        for sub in table:
            op, q, _ = sub[k]
            want[op] += n * q / 25
            want["identity"] += n * (1 - q) / 25
        got = [c["op"].count(o) for o in want]
        expected = list(want.values())
        keep = [i for i, e in enumerate(expected) if e > 0]
        assert sum(got[i] for i in range(len(got)) if i not in keep) == 0
        assert scipy_stats.chisquare([got[i] for i in keep],
                                     [expected[i] for i in keep]).pvalue > 1e-3
        # magnitudes: each applied op at one of its sub-policies' bins / 9
        allowed = {}
        for sub in table:
            allowed.setdefault(sub[k][0], set()).add(round(sub[k][2] / 9, 6))
        for name, f in zip(c["op"], c["f"].tolist()):
            assert name == "identity" or round(f, 6) in allowed[name]


def _unchanged(out: torch.Tensor, x: torch.Tensor) -> float:
    return (out == x).flatten(1).all(1).float().mean().item()


def _test_image(n: int) -> torch.Tensor:
    """``n`` copies of one 16x16 image with levels 20..235, not stretched nor equalised, so
    every op at a non-zero magnitude changes it."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(20, 236, (1, 3, 16, 16), generator=g)
    base[0, :, 0, 0] = torch.tensor([20, 20, 20])
    base[0, :, 0, 1] = torch.tensor([235, 235, 235])
    return base.expand(n, 3, 16, 16).to(torch.uint8)


def _expected_unchanged(policy: str) -> float:
    if policy == "trivialaugment":
        # identity, or a bin that moves nothing on this 16x16 image with levels 20..235: bin
        # 0 of every op with a magnitude; shear bins 1-2 (0.99 x 2/30 x 7.5 rows < half a
        # pixel, nearest); posterize bins 1-2 (8 - round(6 b / 30) = 8 bits); solarize bins
        # 1-2 (thresholds 248, 239 above the top level 235)
        still = {"shear_x": 3, "shear_y": 3, "posterize": 3, "solarize": 3}
        bins = sum(still.get(op, 1) for op in policies.WIDE)
        return (1 + bins / 31) / 14
    if policy == "randaugment1":  # N=1: identity only
        return 1 / 14
    total = 0.0
    for sub in policies.AUTOAUGMENT_CIFAR10:
        stay = 1.0
        for op, q, b in sub:
            noop = b == 0 and op in policies.STANDARD  # magnitude 0: the identity
            stay *= 1.0 if noop else 1.0 - q
        total += stay / 25
    return total


@pytest.mark.parametrize("policy", ["autoaugment", "trivialaugment", "randaugment1"])
def test_policies_leave_images_unchanged_as_often_as_the_paper_and_albumentations(policy):
    """The share of images a policy leaves exactly as they were: from the definition, from
    the batched op, and from the same policy built of albumentations transforms."""
    n_batched, n_albu = 12000, 1500
    want = _expected_unchanged(policy)
    cfg = dataclasses.replace(CFG, randaugment_n=1)
    name = policy.removesuffix("1")
    u8 = _test_image(n_batched)
    x = STATS.from_pixels(u8.float() / 255, torch.float32)
    out = AUGMENTATIONS[name](x, make_generator(4, "cpu"), cfg, STATS)
    # back to uint8 levels: the un-normalise / normalise round trip is within 1e-6
    got = _unchanged((STATS.to_pixels(out) * 255).round().to(torch.uint8), u8)
    sd = math.sqrt(want * (1 - want) / n_batched)
    assert abs(got - want) < 4 * sd, (got, want)
    albu = pytest.importorskip("albumentations")
    from classlab.augment.albu import build_compose, seed_compose

    spec = {"name": {"autoaugment": "AutoAugment", "trivialaugment": "TrivialAugmentWide",
                     "randaugment1": "RandAugment"}[policy]}
    if policy == "randaugment1":
        spec["num_ops"] = 1
    compose = build_compose([spec], (125.0, 122.0, 114.0))
    seed_compose(compose, 0)
    img = u8[0].permute(1, 2, 0).numpy()
    same = np.mean([np.array_equal(compose(image=img)["image"], img) for _ in range(n_albu)])
    sd = math.sqrt(want * (1 - want) / n_albu)
    assert abs(same - want) < 4 * sd, (albu.__version__, same, want)


# --------------------------------------------------------------------------- random ops


def test_colorjitter_factors_match_albumentations_colorjitter():
    """Brightness alone on flat grey images: the factor of each image is out / in; its
    distribution against albumentations' ColorJitter's with the same range (two-sample
    Kolmogorov-Smirnov), and against the uniform it is defined as."""
    albu = pytest.importorskip("albumentations")
    n = 3000
    cfg = dataclasses.replace(CFG, jitter_contrast=0.0, jitter_saturation=0.0, jitter_hue=0.0)
    grey = torch.full((n, 3, 2, 2), 100 / 255)
    out = STATS.to_pixels(AUGMENTATIONS["colorjitter"](STATS.from_pixels(grey, torch.float32),
                                                      make_generator(5, "cpu"), cfg, STATS))
    ours = (out[:, 0, 0, 0] / (100 / 255)).numpy()
    jitter = albu.ColorJitter(brightness=(0.6, 1.4), contrast=(1, 1), saturation=(1, 1),
                              hue=(0, 0), p=1.0)
    jitter.set_random_seed(0)
    img = np.full((2, 2, 3), 100, np.uint8)
    theirs = np.array([jitter(image=img)["image"][0, 0, 0] / 100 for _ in range(n)])
    assert scipy_stats.ks_2samp(ours, theirs).pvalue > 1e-3
    assert scipy_stats.kstest(ours, "uniform", args=(0.6, 0.8)).pvalue > 1e-3


def test_erasing_areas_and_rate_match_kornia_random_erasing():
    n, h, w = 4000, 16, 16
    x = torch.ones(n, 3, h, w)
    cfg = dataclasses.replace(CFG, erasing_fill="mean", erasing_p=0.5, erasing_max_area=0.4)
    ours = AUGMENTATIONS["erasing"](x, make_generator(6, "cpu"), cfg, STATS)
    erased = (ours[:, 0] == 0).flatten(1).float().mean(1)
    torch.manual_seed(0)  # Kornia draws from torch's global generator
    theirs = kornia.augmentation.RandomErasing((0.02, 0.4), (0.3, 1 / 0.3), value=0.0,
                                               p=0.5)(x)
    erased_k = (theirs[:, 0] == 0).flatten(1).float().mean(1)
    assert abs((erased > 0).float().mean().item() - 0.5) < 0.03
    assert scipy_stats.ks_2samp(erased[erased > 0].numpy(),
                                erased_k[erased_k > 0].numpy()).pvalue > 1e-3
    # the erased part of each image is one rectangle
    box = ours[:, 0] == 0
    rows, cols = box.any(2).sum(1), box.any(1).sum(1)
    assert torch.equal(box.flatten(1).sum(1), rows * cols)


def test_erasing_random_fill_is_uniform_pixels():
    x = normalised(400, 16, 16)
    cfg = dataclasses.replace(CFG, erasing_p=1.0)
    out = AUGMENTATIONS["erasing"](x, make_generator(7, "cpu"), cfg, STATS)
    changed = (out != x).any(1)
    values = STATS.to_pixels(out)[:, 0][changed].numpy()
    assert scipy_stats.kstest(values, "uniform").pvalue > 1e-3


# --------------------------------------------------------------------------- mixing


@pytest.mark.parametrize("alpha", [0.4, 1.0, 2.0])
def test_mixup_weight_is_beta_and_the_targets_follow_it(alpha):
    n = 3000
    x = normalised(n, 2, 2)
    y = torch.randint(0, 10, (n,))
    cfg = dataclasses.replace(CFG, ops=["mixup"], mixup_alpha=alpha)
    out, mix = mixing.mix_batch(x, make_generator(8, "cpu"), cfg)
    assert scipy_stats.kstest(mix.lam.numpy(), "beta", args=(alpha, alpha)).pvalue > 1e-3
    lam = mix.lam.view(n, 1, 1, 1)
    torch.testing.assert_close(out, lam * x + (1 - lam) * x[mix.perm], rtol=0, atol=1e-5)
    t = mixing.mixed_targets(y, mix, 10)
    torch.testing.assert_close(t.sum(1), torch.ones(n))
    own = t.gather(1, y[:, None])[:, 0]
    same = y == y[mix.perm]
    torch.testing.assert_close(own[~same], mix.lam[~same])
    torch.testing.assert_close(own[same], torch.ones(int(same.sum())))


def test_mixup_weight_distribution_matches_kornia_mixup():
    n = 3000
    x = torch.rand(n, 1, 2, 2)
    cfg = dataclasses.replace(CFG, ops=["mixup"], mixup_alpha=1.0)
    _, mix = mixing.mix_batch(x, make_generator(9, "cpu"), cfg)
    torch.manual_seed(0)
    _, labels = kornia.augmentation.RandomMixUpV2(p=1.0, data_keys=["input", "class"])(
        x, torch.zeros(n))
    theirs = 1 - labels[:, 2].numpy()  # (label, label_permuted, lambda of the permuted)
    assert scipy_stats.ks_2samp(mix.lam.numpy(), theirs).pvalue > 1e-3


def test_cutmix_targets_match_the_pasted_area():
    n, h, w = 2000, 12, 10
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, h, w)
    y = torch.arange(n) % 7
    cfg = dataclasses.replace(CFG, ops=["cutmix"], cutmix_alpha=1.0)
    out, mix = mixing.mix_batch(x, make_generator(10, "cpu"), cfg)
    pasted = (out != x).all(1)  # [N,H,W]
    partner = x[mix.perm]
    assert torch.equal(out[pasted[:, None].expand_as(out)], partner[pasted[:, None].expand_as(out)])
    moved = mix.perm != torch.arange(n)
    share = pasted.flatten(1).float().mean(1)
    torch.testing.assert_close(1 - mix.lam[moved], share[moved], rtol=0, atol=1e-6)
    t = mixing.mixed_targets(y, mix, 7)
    torch.testing.assert_close(t.sum(1), torch.ones(n))
    other = y != y[mix.perm]
    torch.testing.assert_close(t.gather(1, y[mix.perm][:, None])[other, 0], 1 - mix.lam[other])
    rows, cols = pasted.any(2).sum(1), pasted.any(1).sum(1)  # one rectangle per image
    assert torch.equal(pasted.flatten(1).sum(1), rows * cols)
    # before clipping at the border the box has sides floor(H sqrt(1 - lam0)): the unclipped
    # boxes (away from the border) take Beta(1, 1) = uniform shares up to rounding
    inside = moved & (rows > 0) & (rows < h) & (cols < w)
    assert inside.sum() > 200


def test_mix_p_and_switch_p_are_the_shares_of_mixed_and_cutmix_images():
    n, h, w = 8000, 8, 8
    x = normalised(n, h, w)
    cfg = dataclasses.replace(CFG, ops=["cutmix", "mixup"], mix_p=0.6, mix_switch_p=0.3)
    out, mix = mixing.mix_batch(x, make_generator(11, "cpu"), cfg)
    mixed = mix.lam < 1
    assert abs(mixed.float().mean().item() - 0.6) < 0.025
    # a CutMix image is its own pixels or its partner's, everywhere; a mixup image blends
    moved = mixed & (mix.perm != torch.arange(n))
    cut = ((out == x) | (out == x[mix.perm])).flatten(1).all(1) & moved
    assert abs(cut.sum().item() / moved.sum().item() - 0.3) < 0.03
    assert torch.equal(out[~mixed], x[~mixed])


def test_mixed_loss_is_soft_target_cross_entropy_with_label_smoothing():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    mix = mixing.Mix(torch.randperm(64, generator=g), torch.rand(64, generator=g))
    for smoothing in (0.0, 0.2):
        want = F.cross_entropy(logits, mixing.mixed_targets(y, mix, 10),
                               label_smoothing=smoothing)
        got = mixing.mixed_cross_entropy(logits, y, mix, smoothing)
        torch.testing.assert_close(got, want)
    unmixed = mixing.Mix(torch.arange(64), torch.ones(64))
    torch.testing.assert_close(mixing.mixed_cross_entropy(logits, y, unmixed, 0.2),
                               F.cross_entropy(logits, y, label_smoothing=0.2))


def test_training_accuracy_counts_the_dominant_label():
    y = torch.tensor([0, 1, 2, 3])
    mix = mixing.Mix(torch.tensor([1, 0, 3, 2]), torch.tensor([0.7, 0.3, 0.5, 1.0]))
    assert mixing.dominant_labels(y, mix).tolist() == [0, 0, 2, 3]


def test_beta_sampler_small_alpha_and_fixed_draws():
    lam = mixing.beta(0.2, 4000, make_generator(12, "cpu"), torch.device("cpu"))
    assert scipy_stats.kstest(lam.numpy(), "beta", args=(0.2, 0.2)).pvalue > 1e-3
    assert ((lam >= 0) & (lam <= 1)).all()


# --------------------------------------------------------------------------- in runs


def _run_config(**aug) -> dict:
    return {"name": "mix", "data": {"name": "synthetic", "synthetic_size": 200},
            "model": {"width": 4},
            "train": {"epochs": 2, "batch_size": 32, "progress": False, "device": "cpu",
                      "threads": 1, "precision": "fp32", "channels_last": False,
                      "label_smoothing": 0.1},
            "aug": {"ops": ["crop", "flip", "randaugment", "mixup", "cutmix"], **aug},
            "log": {"dynamics_every": 0}, "diagnose": {"enabled": False}}


SENTINEL = 50.0  # one pixel of every mixed image; real normalised pixels stay within ±3


@pytest.mark.usefixtures("one_thread")
def test_mixed_images_reach_the_training_step_only(tmp_path, monkeypatch):
    """Mixed images carry a marker pixel. Every forward pass of the model is watched: the
    training steps see the marker; evaluation (with TTA), calibration, the CAMs of diagnose
    and lr-find never do, and the per-image training dynamics record no mixed image."""
    from classlab.run.flow import train_run
    from classlab.rundir.datadyn import read_data_dynamics

    real = mixing.mix_batch

    def marked(x, gen, cfg, ops=None):
        out, mix = real(x, gen, cfg, ops)
        out = out.clone()
        out[mix.lam < 1, :, 0, 0] = SENTINEL
        return out, mix

    monkeypatch.setattr(mixing, "mix_batch", marked)
    seen: list[tuple[bool, bool]] = []  # (training mode, saw the marker)

    def watch(module, args):
        if type(module).__name__ == "CifarResNet":
            seen.append((module.training, bool((args[0] >= SENTINEL - 1e-3).any())))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(watch)
    try:
        cfg = _run_config(mix_p=0.5)
        cfg["train"]["tta"] = "flip"
        cfg["diagnose"] = {"enabled": True, "count": 4, "layers": ["layer1"]}
        run = train_run(config.from_dict(cfg), out=tmp_path)
        training = [m for t, m in seen if t]
        assert any(training), "the mixed images did not reach the training step"
        assert not any(m for t, m in seen if not t), "an evaluation forward saw mixed images"
        assert len([t for t, _ in seen if not t]) > 0
        rec = read_data_dynamics(run.run_dir / "data_dynamics.pt")
        recorded = torch.isfinite(rec["margin"].float())
        assert 0 < recorded.float().mean().item() < 0.9  # mix_p = 0.5: about half recorded

        from classlab.run.session import build_session
        from classlab.tools.lr_find import lr_find

        seen.clear()
        lr_find(build_session(config.from_dict(cfg)), steps=4, progress=False)
        assert seen and not any(m for _, m in seen), "lr-find saw mixed images"
    finally:
        handle.remove()


@pytest.mark.usefixtures("one_thread")
def test_resumed_mid_epoch_with_policies_and_mixing_is_bit_identical(tmp_path, cut_and_resume):
    from classlab.run.flow import train_run

    cfg = _run_config(mix_p=0.7)
    cfg["aug"]["ops"] = ["crop", "trivialaugment", "autoaugment", "erasing", "colorjitter",
                         "mixup", "cutmix"]
    reference = train_run(config.from_dict(cfg), out=tmp_path / "ref").run_dir
    run_dir = cut_and_resume(config.from_dict(cfg), tmp_path / "cut")  # after step 3, epoch 2
    assert_same_weights(reference, run_dir)
    assert (reference / "metrics.csv").read_text().splitlines()[1].split(",")[:4] == \
        (run_dir / "metrics.csv").read_text().splitlines()[1].split(",")[:4]


@pytest.mark.usefixtures("one_thread")
def test_mixing_stops_at_the_off_epoch(tmp_path):
    from classlab.run.flow import train_run
    from classlab.rundir.datadyn import read_data_dynamics

    cfg = _run_config(mix_p=1.0, mix_off_epoch=2)
    run = train_run(config.from_dict(cfg), out=tmp_path)
    margin = read_data_dynamics(run.run_dir / "data_dynamics.pt")["margin"].float()
    assert not torch.isfinite(margin[0]).any()  # epoch 1: every image mixed, none recorded
    assert torch.isfinite(margin[1]).all()  # epoch 2: mixing off


def test_without_kornia_the_ops_that_need_it_name_the_extra(monkeypatch):
    """The policies built on Kornia's image ops say in one line how to get it; the other
    batched ops (crop ... erasing, mixup, cutmix) do not need it."""
    import sys

    monkeypatch.setitem(sys.modules, "kornia", None)  # `import kornia` raises ImportError
    monkeypatch.setitem(sys.modules, "kornia.enhance", None)
    x = normalised(64, 4, 4)  # enough images that every policy draws a Kornia op
    for name in sorted(AUGMENTATIONS):
        if name in policies.NEEDS_KORNIA:
            with pytest.raises(ImportError, match=r"pip install 'classlab\[kornia\]'"):
                AUGMENTATIONS[name](x, make_generator(0, "cpu"), CFG, STATS)
        else:
            AUGMENTATIONS[name](x, make_generator(0, "cpu"), CFG, STATS)
    assert policies.missing_kornia(["crop", "mixup", "randaugment", "autoaugment"]) == \
        "randaugment"
    assert policies.missing_kornia(["crop", "erasing"]) is None
