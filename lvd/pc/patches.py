"""Patch geometry: the one definition of how an image's variables split into patches.

An image of shape [H, W, Ch] flattens row-major to ``num_vars = H * W * Ch`` variables.
Patches are non-overlapping ``p x p`` blocks (all channels), numbered row-major over the
``(H // p) x (W // p)`` grid; inside a patch variables are ordered row-major (h, w, ch).
"""

from __future__ import annotations

import numpy as np


def check_patchable(height: int, width: int, patch_size: int, where: str = "image") -> None:
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise ValueError(f"{where}: size {height}x{width} is not divisible by patch_size={patch_size}")


def patch_index(height: int, width: int, channels: int, patch_size: int) -> np.ndarray:
    """int64 [num_positions, patch_size**2 * channels]: flat variable indices of each patch."""
    check_patchable(height, width, patch_size)
    p = patch_size
    flat = np.arange(height * width * channels).reshape(height, width, channels)
    # [gh, p, gw, p, Ch] -> [gh, gw, p, p, Ch]
    blocks = flat.reshape(height // p, p, width // p, p, channels).transpose(0, 2, 1, 3, 4)
    return blocks.reshape((height // p) * (width // p), p * p * channels).astype(np.int64)


def grid_shape(height: int, width: int, patch_size: int) -> tuple[int, int]:
    check_patchable(height, width, patch_size)
    return height // patch_size, width // patch_size
