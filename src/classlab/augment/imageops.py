"""The image operations of the augmentation policies, on whole float32 pixel batches.

Every op takes ``p`` ``[M,C,H,W]`` float32 pixel values in ``[0, 1]`` and a per-image
parameter ``v`` ``[M]`` (float32 on ``p.device``; ignored by the ops without one) and returns
a new ``[M,C,H,W]`` tensor in ``[0, 1]``. The definitions are PIL's (``ImageOps`` /
``ImageEnhance``), which the AutoAugment, RandAugment and TrivialAugment papers used, on
continuous values: PIL rounds to a uint8 level after every op, these do not, except where an
op is defined on levels (posterize, solarize, equalize), which read the level of ``255 p``.

Five of them are Kornia's (``kornia.enhance``: brightness, contrast, equalize, invert,
solarize; the optional extra ``classlab[kornia]``): its functions have the same definitions,
and on a 512-image CIFAR batch they were within 1.5x of classlab's own (median of five runs,
``bench/augment_policies.py``, ``bench/README.md``), so classlab does not keep its own.
Autocontrast, colour, hue, posterize, sharpness and the geometric ops stay classlab's:
Kornia's were 1.7x to 17x slower there.

The geometric ops (shear, translate, rotate) take the mean colour ``fill`` ``[1,C,1,1]`` for
the area they uncover and sample nearest-neighbour (torchvision's and TensorFlow's choice for
these policies), about the image centre (torchvision's convention; PIL's shear is about the
top-left corner, which also shifts the image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["GEOMETRIC", "KORNIA_HINT", "PHOTOMETRIC", "affine", "autocontrast", "brightness",
           "color", "contrast", "equalize", "gray", "hue", "invert", "posterize", "sharpness",
           "solarize"]

KORNIA_HINT = ("aug.ops: randaugment, trivialaugment, autoaugment and colorjitter use Kornia's "
               "image ops: pip install 'classlab[kornia]'")


def _enhance():
    """``kornia.enhance``, or an ImportError whose message is one line naming the extra."""
    try:
        import kornia.enhance
    except ImportError:
        raise ImportError(KORNIA_HINT) from None
    return kornia.enhance


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _blend(base: torch.Tensor, p: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: ``base + f (p - base)``, clipped; f = 1 is the identity."""
    return torch.lerp(base, p, _col(f)).clamp_(0.0, 1.0)


def brightness(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Blend with black by factor ``v`` (0: black, 1: unchanged): a plain clipped product,
    which Kornia calls ``adjust_contrast``."""
    return _enhance().adjust_contrast(p, v)


def contrast(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level by factor ``v``."""
    return _enhance().adjust_contrast_with_mean_subtraction(p, v)


def gray(p: torch.Tensor) -> torch.Tensor:
    """``[M,1,H,W]`` grey level of RGB pixels, ITU-R 601-2 luma as PIL's ``convert("L")``
    (any other channel count: the channel mean)."""
    if p.shape[1] != 3:
        return p.mean(1, keepdim=True)
    return p[:, 0:1] * 0.299 + p[:, 1:2] * 0.587 + p[:, 2:3] * 0.114


def color(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image by factor ``v`` (PIL's Color: saturation)."""
    return _blend(gray(p).expand_as(p), p, v)


def equalize(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PIL's histogram equalisation, per channel of each image, on the 256 uint8 levels."""
    return _enhance().equalize(p)


def invert(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _enhance().invert(p)


def solarize(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Invert every level at or above the threshold ``v`` (in levels, 0..256: 256 = none)."""
    return _enhance().solarize(p, v / 255.0)


def sharpness(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter (3x3, centre weight 5, the rest 1, over 13) by factor
    ``v``; the one-pixel border keeps its values, as in PIL."""
    _, _, h, w = p.shape
    if h < 3 or w < 3:
        return p.clone()
    # the 3x3 sum as two shifted-slice sums: ~20x faster than a depthwise conv2d on CPU
    rows = p[:, :, :-2] + p[:, :, 1:-1] + p[:, :, 2:]  # [M,C,H-2,W]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # [M,C,H-2,W-2]
    smooth = (box + 4.0 * p[:, :, 1:-1, 1:-1]) / 13.0
    out = p.clone()
    out[:, :, 1:-1, 1:-1] = _blend(smooth, p[:, :, 1:-1, 1:-1], v)
    return out


def posterize(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Keep the top ``v`` bits (an integer 1..8 per image) of each uint8 level."""
    step = torch.exp2(8.0 - _col(v))  # [M,1,1,1] levels per kept step
    return torch.floor((p * 255.0).round_() / step).mul_(step).div_(255.0)


def autocontrast(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image so its darkest pixel is 0 and its brightest 1
    (PIL's autocontrast without cutoff); a flat channel stays as it is."""
    lo = p.amin((2, 3), keepdim=True)
    hi = p.amax((2, 3), keepdim=True)
    span = hi - lo
    flat = span <= 0
    return torch.where(flat, p, (p - lo) / torch.where(flat, 1.0, span))


def _rgb_to_hsv(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hi, arg = p.max(1)  # [M,H,W]
    delta = hi - p.amin(1)
    r, g, b = p.unbind(1)
    safe = torch.where(delta > 0, delta, 1.0)
    h = torch.where(arg == 0, ((g - b) / safe) % 6.0,
                    torch.where(arg == 1, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = torch.where(delta > 0, h / 6.0, 0.0)
    s = torch.where(hi > 0, delta / torch.where(hi > 0, hi, 1.0), 0.0)
    return h, s, hi


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # channel k of HSV -> RGB: v - v s clamp(min(t, 4 - t), 0, 1), t = (k + 6 h) mod 6
    k = torch.tensor([5.0, 3.0, 1.0], device=h.device).view(1, 3, 1, 1)
    t = (k + 6.0 * h[:, None]) % 6.0
    return v[:, None] - (v * s)[:, None] * torch.minimum(t, 4.0 - t).clamp_(0.0, 1.0)


def hue(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``v`` turns (-0.5..0.5) in HSV, as torchvision's adjust_hue (an
    image without three channels has no hue: returned as it is)."""
    if p.shape[1] != 3:
        return p.clone()
    h, s, val = _rgb_to_hsv(p)
    return _hsv_to_rgb((h + v.view(-1, 1, 1)) % 1.0, s, val)


def _grid(m: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The output pixel centres in grid_sample's normalised units (align_corners=False):
    ``[1,H,W]`` x and y."""
    gx = (torch.arange(w, device=device, dtype=torch.float32) * 2 + 1) / w - 1
    gy = (torch.arange(h, device=device, dtype=torch.float32) * 2 + 1) / h - 1
    return gx.view(1, 1, w).expand(1, h, w), gy.view(1, h, 1).expand(1, h, w)


def affine(p: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Sample ``p`` at ``theta @ (x, y, 1)`` per output pixel, ``theta`` ``[M,2,3]`` in
    normalised units (output -> input, about the centre), nearest, ``fill`` outside."""
    m, _, h, w = p.shape
    if m == 0:
        return p.clone()
    gx, gy = _grid(m, h, w, p.device)
    t = theta[:, :, :, None, None]  # [M,2,3,1,1]
    sx = t[:, 0, 0] * gx + t[:, 0, 1] * gy + t[:, 0, 2]  # [M,H,W]
    sy = t[:, 1, 0] * gx + t[:, 1, 1] * gy + t[:, 1, 2]
    grid = torch.stack([sx, sy], dim=-1)
    out = F.grid_sample(p - fill, grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)
    return out.add_(fill)


def _theta(kind: str, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[M,2,3]`` output -> input maps in normalised units for one geometric op with signed
    amount ``v``: a shear factor, a translation in pixels, or an angle in degrees."""
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    if kind == "shear_x":  # x_in = x + v (y - cy), in pixels
        rows = [[one, v * (h / w), zero], [zero, one, zero]]
    elif kind == "shear_y":
        rows = [[one, zero, zero], [v * (w / h), one, zero]]
    elif kind == "translate_x":  # the content moves right by v pixels
        rows = [[one, zero, -2.0 * v / w], [zero, one, zero]]
    elif kind == "translate_y":
        rows = [[one, zero, zero], [zero, one, -2.0 * v / h]]
    elif kind == "rotate":  # counter-clockwise as displayed (y down), undistorted aspect
        a = torch.deg2rad(v)
        cos, sin = torch.cos(a), torch.sin(a)
        rows = [[cos, -sin * (h / w), zero], [sin * (w / h), cos, zero]]
    else:
        raise ValueError(f"unknown geometric op {kind!r}")
    return torch.stack([torch.stack(r, -1) for r in rows], 1)


def geometric(kind: str):
    """The op ``(p, v, fill) -> p`` for one geometric ``kind``."""

    def op(p: torch.Tensor, v: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        return affine(p, _theta(kind, v, p.shape[2], p.shape[3]), fill)

    op.__name__ = kind
    return op


# name -> (p [M,C,H,W], v [M]) -> [M,C,H,W]
PHOTOMETRIC = {"autocontrast": autocontrast, "brightness": brightness, "color": color,
               "contrast": contrast, "equalize": equalize, "hue": hue, "invert": invert,
               "posterize": posterize, "sharpness": sharpness, "solarize": solarize}
# name -> (p, v, fill [1,C,1,1]) -> [M,C,H,W]
GEOMETRIC = {k: geometric(k) for k in ("rotate", "shear_x", "shear_y", "translate_x",
                                       "translate_y")}
