"""Lossy colour transform for RGB images: 8-bit YCbCr with BT.709 coefficients.

    Y  = 0.2126 R + 0.7152 G + 0.0722 B
    Cb = (B - Y) / 1.8556 + 128
    Cr = (R - Y) / 1.5748 + 128

each rounded to the nearest integer and clipped to [0, 255] (full range, no studio-swing
offsets). Rounding to 8 bits makes it lossy: several RGB triples share one YCbCr triple, so a
likelihood in this space is not a likelihood of the RGB image (method.md section 6: LVD-PG's
ImageNet32 figures are in such a space; bpd here must say so). The inverse (``ycbcr_to_rgb``)
is for viewing samples only.
"""

from __future__ import annotations

import numpy as np

KR, KB = 0.2126, 0.0722
KG = 1.0 - KR - KB
COLORS = ("rgb", "ycbcr")


def rgb_to_ycbcr(x: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] RGB -> uint8 [..., 3] YCbCr (BT.709, rounded, clipped)."""
    x = np.asarray(x)
    if x.shape[-1] != 3:
        raise ValueError(f"YCbCr needs 3 colour channels (RGB), got shape {x.shape}")
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
