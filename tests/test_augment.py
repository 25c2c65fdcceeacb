"""Tests of the batched augmentations in classlab.augment (CPU only, a few seconds)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from classlab.augment.batched import (
    AUGMENTATIONS,
    _cutout_mask,
    _rotate,
    alternate_flip,
    augment,
    cutout,
    make_generator,
    normjitter,
    random_crop,
    random_flip,
    random_rotate,
)
from classlab.config import AugConfig

# every op switched on with parameters that make it change almost every image
ACTIVE = AugConfig(
    ops=["crop", "flip", "rotate", "cutout"],
    crop_padding=3,
    pad_mode="zeros",
    flip_p=0.5,
    rotate_degrees=20.0,
    cutout_size=5,
    cutout_p=1.0,
)


def cfg_with(**changes) -> AugConfig:
    return dataclasses.replace(ACTIVE, **changes)


def batch(n: int = 16, c: int = 3, h: int = 12, w: int = 12, seed: int = 0) -> torch.Tensor:
    """Random, strictly positive (so never the fill value 0) and almost surely distinct."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) + 1.0


# --------------------------------------------------------------------------- generic


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_shape_dtype_device_and_no_inplace(name, dtype):
    x = batch().to(dtype)
    before = x.clone()
    out = AUGMENTATIONS[name](x, make_generator(0, "cpu"), ACTIVE)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.equal(x, before), "input modified in place"
    assert not torch.equal(out, x), "an active op left the whole batch unchanged"


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_deterministic_per_seed(name):
    x = batch()
    fn = AUGMENTATIONS[name]
    a = fn(x, make_generator(7, "cpu"), ACTIVE)
    b = fn(x, make_generator(7, "cpu"), ACTIVE)
    c = fn(x, make_generator(8, "cpu"), ACTIVE)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_empty_batch_and_channels_last(name):
    fn = AUGMENTATIONS[name]
    empty = torch.zeros(0, 3, 12, 12)
    assert fn(empty, make_generator(0, "cpu"), ACTIVE).shape == empty.shape
    x = batch()
    cl = x.to(memory_format=torch.channels_last)
    a = fn(x, make_generator(3, "cpu"), ACTIVE)
    b = fn(cl, make_generator(3, "cpu"), ACTIVE)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_augment_applies_ops_in_order():
    x = batch()
    cfg = cfg_with(ops=["cutout", "crop", "rotate", "flip"])
    got = augment(x, make_generator(5, "cpu"), cfg)
    g = make_generator(5, "cpu")
    want = random_flip(random_rotate(random_crop(cutout(x, g, cfg), g, cfg), g, cfg), g, cfg)
    assert torch.equal(got, want)
    assert augment(x, make_generator(5, "cpu"), cfg_with(ops=[])) is x
    with pytest.raises(ValueError, match="unknown value 'blur'"):
        augment(x, make_generator(5, "cpu"), cfg_with(ops=["blur"]))


def test_make_generator():
    g = make_generator(3, "cpu")
    assert g.device == torch.device("cpu")
    again = make_generator(3, "cpu")
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=again))


# --------------------------------------------------------------------------- crop


def _match_offsets(
    out: torch.Tensor, padded: torch.Tensor, p: int, unique: bool = True
) -> torch.Tensor:
    """``[N, 2]`` (oy, ox) such that out[i] == padded[i, :, oy:oy+H, ox:ox+W]; asserts that
    exactly one (``unique``; else at least one) of the (2p+1)^2 windows matches each image."""
    h, w = out.shape[-2:]
    found = torch.full((out.shape[0], 2), -1)
    hits = torch.zeros(out.shape[0], dtype=torch.long)
    for oy in range(2 * p + 1):
        for ox in range(2 * p + 1):
            same = (padded[:, :, oy : oy + h, ox : ox + w] == out).flatten(1).all(1)  # [N]
            found[same] = torch.tensor([oy, ox])
            hits += same
    ok = hits == 1 if unique else hits >= 1
    assert torch.all(ok), f"windows matched per image: {hits.tolist()}"
    return found


def test_crop_zeros_is_translation_with_zero_band():
    p, x = 3, batch(n=64, h=10, w=11)
    out = random_crop(x, make_generator(1, "cpu"), cfg_with(crop_padding=p, pad_mode="zeros"))
    offsets = _match_offsets(out, F.pad(x, (p, p, p, p)), p)
    # zeros exactly where the window reaches outside the image (x itself is never 0)
    inside = F.pad(torch.ones(1, 1, 10, 11), (p, p, p, p))[0, 0] > 0
    for i, (oy, ox) in enumerate(offsets.tolist()):
        band = ~inside[oy : oy + 10, ox : ox + 11]
        assert torch.equal(out[i] == 0, band.expand_as(out[i]))
    assert len({tuple(o) for o in offsets.tolist()}) > 10  # offsets really vary


def test_crop_reflect_matches_f_pad():
    p, x = 4, batch(n=48, h=9, w=12)
    out = random_crop(x, make_generator(2, "cpu"), cfg_with(crop_padding=p, pad_mode="reflect"))
    _match_offsets(out, F.pad(x, (p, p, p, p), mode="reflect"), p)
    assert not torch.any(out == 0)


def test_crop_reflect_wider_than_image_keeps_mirroring():
    # F.pad refuses p >= H; the index arithmetic mirrors again, like np.pad(mode="reflect")
    p, x = 7, batch(n=32, c=2, h=4, w=5)
    out = random_crop(x, make_generator(3, "cpu"), cfg_with(crop_padding=p, pad_mode="reflect"))
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (p, p), (p, p)), "reflect"))
    # a padded row repeats with period 2 * (H - 1) < 2p + 1, so several windows can match
    _match_offsets(out, padded, p, unique=False)


def test_crop_padding_zero_is_identity():
    x = batch()
    for mode in ("zeros", "reflect"):
        cfg = cfg_with(crop_padding=0, pad_mode=mode)
        assert random_crop(x, make_generator(0, "cpu"), cfg) is x


def test_crop_offsets_uniform():
    # each pixel encodes its own position, so the centre pixel of the output names the offset
    n, h, w, p = 2000, 16, 16, 4
    pos = (torch.arange(h * w, dtype=torch.float32) + 1).view(1, 1, h, w).expand(n, 1, h, w)
    out = random_crop(pos, make_generator(11, "cpu"), cfg_with(crop_padding=p))
    v = out[:, 0, h // 2, w // 2].long() - 1
    dy, dx = v // w - h // 2, v % w - w // 2
    assert dy.abs().max() <= p and dx.abs().max() <= p
    counts = torch.bincount((dy + p) * (2 * p + 1) + (dx + p), minlength=(2 * p + 1) ** 2)
    assert counts.numel() == (2 * p + 1) ** 2 and counts.min() > 0
    expected = n / (2 * p + 1) ** 2
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 140  # 80 degrees of freedom: p-value ~ 1e-4 at this threshold


# --------------------------------------------------------------------------- flip


def test_flip_extremes_and_involution():
    x = batch()
    g = make_generator(0, "cpu")
    assert torch.equal(random_flip(x, g, cfg_with(flip_p=1.0)), x.flip(-1))
    assert torch.equal(random_flip(x, g, cfg_with(flip_p=0.0)), x)
    one = cfg_with(flip_p=1.0)
    assert torch.equal(random_flip(random_flip(x, g, one), g, one), x)


def test_flip_rate_and_per_image_choice():
    n, p = 2000, 0.3
    x = batch(n=n, c=1, h=4, w=5)
    out = random_flip(x, make_generator(4, "cpu"), cfg_with(flip_p=p))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert torch.all(flipped ^ kept)  # each image is wholly one or the other
    assert abs(flipped.float().mean().item() - p) < 0.04  # ~4 standard errors


# --------------------------------------------------------------------------- rotate


def _rotate_reference(img: np.ndarray, angle_deg: float) -> np.ndarray:
    """Explicit bilinear rotation of one [C, H, W] image about its centre, zeros outside:
    output pixel centre (u, v) relative to the image centre samples the input at
    R(a) (u, v) with R = [[cos, -sin], [sin, cos]] in (x right, y down) pixel units."""
    c, h, w = img.shape
    a = math.radians(angle_deg)
    out = np.zeros_like(img)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    for i in range(h):
        for j in range(w):
            u, v = j - cx, i - cy
            sx = math.cos(a) * u - math.sin(a) * v + cx
            sy = math.sin(a) * u + math.cos(a) * v + cy
            x0, y0 = math.floor(sx), math.floor(sy)
            for yy, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
                for xx, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[:, i, j] += wy * wx * img[:, yy, xx]
    return out


@pytest.mark.parametrize("angle", [17.0, -33.0])
@pytest.mark.parametrize("hw", [(8, 8), (7, 10)])
def test_rotate_matches_explicit_rotation_matrix(angle, hw):
    x = batch(n=1, c=2, h=hw[0], w=hw[1]).double()
    got = _rotate(x, torch.tensor([angle]))[0].numpy()
    np.testing.assert_allclose(got, _rotate_reference(x[0].numpy(), angle), atol=1e-9)


def test_rotate_direction_and_half_turn():
    x = batch(n=2, h=8, w=8)
    # positive angles turn the picture counter-clockwise as displayed, like torch.rot90
    torch.testing.assert_close(_rotate(x, torch.tensor([90.0, 90.0])),
                               torch.rot90(x, 1, dims=(-2, -1)), rtol=0, atol=1e-5)
    y = batch(n=2, h=6, w=9)
    torch.testing.assert_close(_rotate(y, torch.tensor([180.0, -180.0])), y.flip(-1).flip(-2),
                               rtol=0, atol=1e-5)


def test_rotate_zero_degrees_is_identity():
    x = batch()
    assert random_rotate(x, make_generator(0, "cpu"), cfg_with(rotate_degrees=0.0)) is x


def test_rotate_constant_image_stays_constant_inside_disc():
    n, h = 32, 16
    x = torch.full((n, 3, h, h), 2.5)
    out = random_rotate(x, make_generator(6, "cpu"), cfg_with(rotate_degrees=40.0))
    r = torch.arange(h) - (h - 1) / 2
    disc = r[:, None] ** 2 + r[None, :] ** 2 <= ((h - 1) / 2) ** 2  # sources stay in-bounds
    torch.testing.assert_close(out[:, :, disc], x[:, :, disc], rtol=0, atol=1e-5)
    assert torch.any(out[:, :, 0, 0] < 2.5)  # a corner does fall outside for some angle


def test_rotate_draws_angle_per_image_within_range():
    x = batch(n=8)
    d = 25.0
    out = random_rotate(x, make_generator(9, "cpu"), cfg_with(rotate_degrees=d))
    u = torch.rand(8, generator=make_generator(9, "cpu"))
    angles = (2 * u - 1) * d
    assert angles.abs().max() <= d and angles.unique().numel() == 8
    torch.testing.assert_close(out, _rotate(x, angles), rtol=0, atol=0)


# --------------------------------------------------------------------------- cutout


def test_cutout_mask_explicit_centres():
    h = w = 32
    cy = torch.tensor([16, 0, 31, 0, 31, 10, 16])
    cx = torch.tensor([16, 0, 31, 31, 0, 16, 2])
    m = _cutout_mask(cy, cx, 16, h, w)
    assert m.shape == (7, h, w) and m.dtype == torch.bool
    # rows cy-8 .. cy+7 clipped to [0, 31], likewise columns
    assert m.sum((1, 2)).tolist() == [256, 64, 81, 72, 72, 256, 160]
    assert torch.equal(m[0], F.pad(torch.ones(16, 16, dtype=torch.bool), (8, 8, 8, 8)))
    assert m[1, :8, :8].all() and m[1].sum() == 64
    assert m[2, 23:, 23:].all()
    odd = _cutout_mask(torch.tensor([5]), torch.tensor([6]), 5, 12, 12)[0]
    assert odd[3:8, 4:9].all() and odd.sum() == 25  # odd sides are centred exactly
    assert _cutout_mask(torch.tensor([3]), torch.tensor([9]), 40, 12, 12).all()


def test_cutout_zeroes_one_clipped_square_per_image():
    n, h, w, s = 300, 12, 13, 5
    x = batch(n=n, h=h, w=w)
    out = cutout(x, make_generator(2, "cpu"), cfg_with(cutout_size=s, cutout_p=1.0))
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # same square in every channel
    assert torch.equal(out[~zero], x[~zero])  # everything else untouched
    counts = zero[:, 0].sum((1, 2))
    assert counts.min() >= 1 and counts.max() == s * s
    for i in range(n):
        ys, xs = torch.nonzero(zero[i, 0], as_tuple=True)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        assert counts[i] == (y1 - y0) * (x1 - x0)  # a filled rectangle
        assert y1 - y0 <= s and x1 - x0 <= s
        if y0 > 0 and y1 < h:
            assert y1 - y0 == s  # only clipping at a border makes it shorter
        if x0 > 0 and x1 < w:
            assert x1 - x0 == s


def test_cutout_centres_cover_image_uniformly():
    # size 1: the zeroed pixel is the centre itself
    n, h = 2000, 8
    out = cutout(torch.ones(n, 1, h, h), make_generator(8, "cpu"), cfg_with(cutout_size=1))
    counts = (out[:, 0] == 0).sum(0).flatten()
    assert counts.sum() == n and counts.min() > 0
    expected = n / h**2
    assert float(((counts - expected) ** 2 / expected).sum()) < 120  # 63 dof


def test_cutout_probability():
    x = batch(n=2000, c=1, h=6, w=6)
    assert cutout(x, make_generator(0, "cpu"), cfg_with(cutout_p=0.0)) is x
    out = cutout(x, make_generator(0, "cpu"), cfg_with(cutout_p=0.4, cutout_size=3))
    rate = (out == 0).flatten(1).any(1).float().mean().item()
    assert abs(rate - 0.4) < 0.05


# --------------------------------------------------------------------------- normjitter


def test_normjitter_brightness_alone_adds_one_shift_per_image_within_range():
    x = batch(n=3000, c=3, h=4, w=4)
    out = normjitter(x, make_generator(0, "cpu"), cfg_with(norm_brightness=0.3, norm_contrast=0))
    shift = out - x  # [N, C, H, W]: the same value in every position of an image
    per_image = shift[:, :1, :1, :1]
    torch.testing.assert_close(shift, per_image.expand_as(shift), rtol=0, atol=1e-6)
    b = per_image.flatten()
    assert b.abs().max() <= 0.3 and b.min() < -0.29 and b.max() > 0.29  # U(-0.3, 0.3)
    assert abs(b.mean().item()) < 0.02 and abs(b.std().item() - 0.3 / 3**0.5) < 0.01


def test_normjitter_contrast_alone_scales_about_the_dataset_mean():
    x = batch(n=3000, c=3, h=4, w=4)
    x[:, :, 0, 0] = 0.0  # the dataset's mean colour, normalised
    out = normjitter(x, make_generator(0, "cpu"), cfg_with(norm_brightness=0, norm_contrast=0.2))
    assert torch.equal(out[:, :, 0, 0], x[:, :, 0, 0])  # the mean colour stays put
    c = out[:, :1, 1:2, 1:2] / x[:, :1, 1:2, 1:2]  # [N, 1, 1, 1]: one factor per image
    torch.testing.assert_close(out, x * c, rtol=1e-6, atol=1e-6)
    assert c.min() >= 0.8 and c.max() <= 1.2 and c.min() < 0.81 and c.max() > 1.19


def test_normjitter_shifts_then_scales_and_switches_off():
    """Both on: (x + b) * c with the b of a brightness-only call and the c of a
    contrast-only call from the same seed (one draw of both per call, whatever is on)."""
    x = batch()
    b = normjitter(x, make_generator(4, "cpu"), cfg_with(norm_brightness=0.1, norm_contrast=0)) - x
    c = normjitter(x, make_generator(4, "cpu"), cfg_with(norm_brightness=0, norm_contrast=0.1)) / x
    both = normjitter(x, make_generator(4, "cpu"), cfg_with(norm_brightness=0.1,
                                                               norm_contrast=0.1))
    torch.testing.assert_close(both, (x + b) * c, rtol=1e-5, atol=1e-6)
    off = cfg_with(norm_brightness=0, norm_contrast=0)
    assert normjitter(x, make_generator(4, "cpu"), off) is x


def test_alternate_flip_mirrors_each_image_in_every_other_epoch():
    x = torch.randint(0, 256, (400, 3, 4, 5), dtype=torch.uint8)
    mirrored = [(alternate_flip(x, e, seed=7) != x).flatten(1).any(1) for e in (1, 2, 3, 4)]
    for e, m in enumerate(mirrored, start=1):
        views = alternate_flip(x, e, seed=7)
        assert torch.equal(views[m], x[m].flip(-1)) and torch.equal(views[~m], x[~m])
    assert torch.equal(mirrored[0], ~mirrored[1])  # consecutive epochs: the other half
    assert torch.equal(mirrored[0], mirrored[2]) and torch.equal(mirrored[1], mirrored[3])
    assert 160 < int(mirrored[0].sum()) < 240  # a random half (binomial sd 10)
    assert not torch.equal(mirrored[0], (alternate_flip(x, 1, seed=8) != x).flatten(1).any(1))


def test_augment_leaves_flipping_to_the_epoch_in_alternate_mode():
    x = batch()
    cfg = cfg_with(ops=["flip"], flip_p=1.0)
    assert torch.equal(augment(x, make_generator(0, "cpu"), cfg), x.flip(-1))
    assert augment(x, make_generator(0, "cpu"), cfg_with(ops=["flip"], flip_mode="alternate")) \
        is x


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_fused_crop_then_flip_equals_the_two_ops(pad_mode):
    x = batch()
    cfg = cfg_with(ops=["crop", "flip", "cutout"], pad_mode=pad_mode)
    g = make_generator(11, "cpu")
    want = cutout(random_flip(random_crop(x, g, cfg), g, cfg), g, cfg)
    assert torch.equal(augment(x, make_generator(11, "cpu"), cfg), want)
