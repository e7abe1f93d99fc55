"""Colour transforms for 8-bit RGB images (``data.color``): rgb, ycbcr (lossy), ycocg_r (lossless).

ycbcr: 8-bit YCbCr with BT.709 coefficients,

    Y  = 0.2126 R + 0.7152 G + 0.0722 B
    Cb = (B - Y) / 1.8556 + 128
    Cr = (R - Y) / 1.5748 + 128

each rounded to the nearest integer and clipped to [0, 255] (full range, no studio-swing
offsets). Rounding to 8 bits makes it lossy: several RGB triples share one YCbCr triple, so a
likelihood in this space is not a likelihood of the RGB image (method.md section 6: LVD-PG's
ImageNet32 figures are in such a space; bpd here must say so). The inverse (``ycbcr_to_rgb``)
is for viewing samples only.

ycocg_r: YCoCg-R, the lifting form of YCoCg (integer steps, each undone exactly),

    Co = R - B;   t = B + (Co >> 1);   Cg = G - t;   Y = t + (Cg >> 1)

where ``>>`` is the floor halving. Exact YCoCg-R needs 9 bits for Co and Cg (-255..255). Here
every step is taken modulo 256 instead, with the chroma differences wrapped into -128..127 and
stored offset by 128:

    co = wrap(R - B);  t = (B + (co >> 1)) mod 256;  cg = wrap(G - t);  Y = (t + (cg >> 1)) mod 256
    stored: (Y, co + 128, cg + 128),   wrap(d) = ((d + 128) mod 256) - 128

A lifting step x <- x + f(other) is invertible modulo 256 whatever f is, so this is a bijection
of the 256^3 colour triples onto themselves (tests check all of them): a likelihood of the
transformed image IS the likelihood of the RGB image, bits per dimension mean the same as
RGB's, and num_cats stays 256 for every channel (no wasted mass on codes that no colour
produces, as 512 chroma levels would have). Where |R - B| <= 127 and |G - t| <= 127 the stored
values are exactly YCoCg-R with chroma offset by 128; more saturated colours wrap around, a
discontinuity the model has to learn (0.6% of the pixels of scikit-learn's sample photograph
china.jpg, 12% of flower.jpg with its saturated petals). Every sample decodes to a valid RGB
image (``ycocg_r_to_rgb``).
"""

from __future__ import annotations

import numpy as np

KR, KB = 0.2126, 0.0722
KG = 1.0 - KR - KB
COLORS = ("rgb", "ycbcr", "ycocg_r")
LOSSLESS = {"rgb": True, "ycbcr": False, "ycocg_r": True}
DESCRIPTIONS = {"rgb": "RGB", "ycbcr": "lossy 8-bit BT.709 YCbCr",
                "ycocg_r": "lossless YCoCg-R (chroma modulo 256)"}


def _check_rgb(x: np.ndarray, space: str) -> np.ndarray:
    x = np.asarray(x)
    if x.shape[-1] != 3:
        raise ValueError(f"{space} needs 3 colour channels, got shape {x.shape}")
    return x


def rgb_to_ycbcr(x: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] RGB -> uint8 [..., 3] YCbCr (BT.709, rounded, clipped)."""
    x = _check_rgb(x, "YCbCr")
    r, g, b = (x[..., i].astype(np.float64) for i in range(3))
    y = KR * r + KG * g + KB * b
    cb = (b - y) / (2 * (1 - KB)) + 128
    cr = (r - y) / (2 * (1 - KR)) + 128
    return np.clip(np.rint(np.stack([y, cb, cr], -1)), 0, 255).astype(np.uint8)


def ycbcr_to_rgb(x: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] YCbCr -> uint8 [..., 3] RGB (the exact inverse before rounding)."""
    y, cb, cr = (np.asarray(x)[..., i].astype(np.float64) for i in range(3))
    r = y + 2 * (1 - KR) * (cr - 128)
    b = y + 2 * (1 - KB) * (cb - 128)
    g = (y - KR * r - KB * b) / KG
    return np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)


def _wrap(d: np.ndarray) -> np.ndarray:
    """Differences modulo 256 as signed values -128..127."""
    return ((d + 128) & 255) - 128


def rgb_to_ycocg_r(x: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] RGB -> uint8 [..., 3] (Y, Co + 128, Cg + 128), YCoCg-R modulo 256 (lossless)."""
    x = _check_rgb(x, "YCoCg-R")
    r, g, b = (x[..., i].astype(np.int32) for i in range(3))
    co = _wrap(r - b)
    t = (b + (co >> 1)) & 255
    cg = _wrap(g - t)
    y = (t + (cg >> 1)) & 255
    return np.stack([y, co + 128, cg + 128], -1).astype(np.uint8)


def ycocg_r_to_rgb(x: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] (Y, Co + 128, Cg + 128) -> uint8 [..., 3] RGB: ``rgb_to_ycocg_r`` undone exactly."""
    x = _check_rgb(x, "YCoCg-R")
    y, co, cg = (x[..., i].astype(np.int32) for i in range(3))
    co, cg = co - 128, cg - 128
    t = (y - (cg >> 1)) & 255
    g = (cg + t) & 255
    b = (t - (co >> 1)) & 255
    r = (b + co) & 255
    return np.stack([r, g, b], -1).astype(np.uint8)


CHUNK = 8192   # images converted at a time: the float64 / int32 temporaries stay ~0.5 GB at 64x64


def _chunked(f, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2 or len(x) <= CHUNK:
        return f(x)
    out = np.empty(x.shape, np.uint8)
    for s in range(0, len(x), CHUNK):
        out[s:s + CHUNK] = f(x[s:s + CHUNK])
    return out


def from_rgb(x: np.ndarray, color: str) -> np.ndarray:
    """uint8 [..., 3] RGB in the colour space ``color`` (one of COLORS), CHUNK images at a time."""
    if color == "rgb":
        return np.asarray(x)
    return _chunked({"ycbcr": rgb_to_ycbcr, "ycocg_r": rgb_to_ycocg_r}[color], x)


def to_rgb(x: np.ndarray, color: str) -> np.ndarray:
    """uint8 [..., 3] images of colour space ``color`` back in RGB, for figures (ycbcr: approximately)."""
    if color == "rgb":
        return np.asarray(x)
    return _chunked({"ycbcr": ycbcr_to_rgb, "ycocg_r": ycocg_r_to_rgb}[color], x)
