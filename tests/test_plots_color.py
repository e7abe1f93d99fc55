"""Figures show every colour space's images in RGB: plots.to_rgb goes through
lvd.data.color.to_rgb, exact for the lossless YCoCg-R (chroma modulo 256)."""

import numpy as np

from lvd import plots
from lvd.data import color


def test_ycocg_r_images_are_shown_in_their_true_colours(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    rgb[0, 0, 0] = (255, 0, 0)                     # chroma that wraps modulo 256
    rgb[0, 0, 1] = (0, 255, 255)
    y = color.rgb_to_ycocg_r(rgb)
    np.testing.assert_array_equal(plots.to_rgb(y, 256, color="ycocg_r"), rgb / 255.0)
    assert not np.allclose(plots.to_rgb(y, 256), rgb / 255.0, atol=0.1)      # drawn raw, it is not
    missing = np.zeros(rgb.shape, bool)
    missing[1, 2, 3] = True
    shown = plots.to_rgb(y, 256, missing=missing, color="ycocg_r")
    np.testing.assert_array_equal(shown[1, 2, 3], plots.MISSING_RGB)
    plots.samples_figure(tmp_path / "s.png", [("x", y)], 256, color="ycocg_r")
    assert (tmp_path / "s.png").stat().st_size > 0


def test_grey_and_rgb_images_are_unchanged():
    grey = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(plots.to_rgb(grey, 16, color="ycocg_r"), np.repeat(grey / 15.0, 3, -1))
    rgb = np.full((1, 2, 2, 3), 51, np.uint8)
    np.testing.assert_array_equal(plots.to_rgb(rgb, 256, color="rgb"), rgb / 255.0)
