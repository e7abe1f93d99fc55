"""Figures of the evaluate stage (matplotlib, Agg backend, small PNGs).

Images are int arrays [n, H, W, Ch] with values in [0, num_cats); missing pixels (bool masks of
the same shape) are drawn in red.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lvd import io, metrics
from lvd.data import color as color_mod

MISSING_RGB = (0.85, 0.15, 0.15)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    plt = _pyplot()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def to_rgb(images, num_cats: int, missing=None, color: str = "rgb") -> np.ndarray:
    """float [n, H, W, 3] in [0, 1]; grey images repeated over 3 channels, missing pixels red.
    color (data.color) other than "rgb": 3-channel images in that space ("ycbcr", "ycocg_r") are
    converted back to RGB for viewing (lvd.data.color.to_rgb; exact for ycocg_r)."""
    images = np.asarray(images)
    if color != "rgb" and images.shape[-1] == 3:
        images = color_mod.to_rgb(np.clip(np.rint(images), 0, 255).astype(np.uint8), color)
    x = np.asarray(images, dtype=np.float64) / max(num_cats - 1, 1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, -1)
    elif x.shape[-1] != 3:
        x = np.repeat(x.mean(-1, keepdims=True), 3, -1)
    if missing is not None:
        miss = np.asarray(missing, dtype=bool).any(-1)
        x[miss] = MISSING_RGB
    return x


def mosaic(rgb: np.ndarray, ncols: int, pad: int = 1) -> np.ndarray:
    """Tile [n, H, W, 3] row-major into one [rows*(H+pad)-pad, ncols*(W+pad)-pad, 3] picture."""
    n, H, W, _ = rgb.shape
    nrows = max(1, math.ceil(n / ncols))
    out = np.ones((nrows * (H + pad) - pad, ncols * (W + pad) - pad, 3))
    for i in range(n):
        r, c = divmod(i, ncols)
        out[r * (H + pad):r * (H + pad) + H, c * (W + pad):c * (W + pad) + W] = rgb[i]
    return out


def samples_figure(path, blocks: list[tuple[str, np.ndarray]], num_cats: int, ncols: int = 8,
                   color: str = "rgb") -> None:
    """One panel per (label, images [n, H, W, Ch]), stacked top to bottom (``color``: to_rgb's)."""
    plt = _pyplot()
    H, W = blocks[0][1].shape[1:3]
    heights = [max(1, math.ceil(len(imgs) / ncols)) for _, imgs in blocks]
    inch = min(0.35 * min(max(H, W), 16) / 8, 6.5 / ncols)             # per image
    fig, axes = plt.subplots(len(blocks), 1, figsize=(inch * ncols + 1.5, inch * sum(heights) + 0.4 * len(blocks)),
                             dpi=100, gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (label, imgs) in zip(axes[:, 0], blocks):
        ax.imshow(mosaic(to_rgb(imgs, num_cats, color=color), ncols), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def inpainting_figure(path, originals, missing, columns: list[tuple[str, list[np.ndarray]]],
                      num_cats: int, color: str = "rgb") -> None:
    """Rows = images. Panels: originals, masked (missing in red), then per (label, samples) the
    conditional samples (a list of [n, H, W, Ch] arrays, one per draw) side by side
    (``color``: to_rgb's)."""
    plt = _pyplot()
    panels = [("original", [originals]), ("masked", [np.where(missing, 0, originals)])] + columns
    n, H, W = originals.shape[:3]
    widths = [len(draws) for _, draws in panels]
    inch = 0.5 * min(max(H, W), 16) / 8                                 # per image, capped for big images
    fig, axes = plt.subplots(1, len(panels), figsize=(inch * sum(widths) + 1, inch * n + 0.6),
                             dpi=100, gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, (label, draws) in zip(axes[0], panels):
        stacked = np.stack(draws, 1)                                   # [n, k, H, W, Ch]
        miss = np.broadcast_to(missing[:, None], stacked.shape) if label == "masked" else None
        rgb = to_rgb(stacked.reshape(-1, *stacked.shape[2:]), num_cats,
                     None if miss is None else miss.reshape(-1, *stacked.shape[2:]), color=color)
        ax.imshow(mosaic(rgb, len(draws)), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def curves_figure(path, series: list[dict], reference: float | None = None, ylabel: str = "bits per dimension",
                  reference_label: str = "teacher (test)") -> None:
    """Lines {label, x, y, style}; a horizontal reference line (e.g. the teacher) when given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    for s in series:
        if len(s["x"]):
            ax.plot(s["x"], s["y"], s.get("style", "-"), label=s["label"], markersize=3, color=s.get("color"))
    if reference is not None and np.isfinite(reference):
        ax.axhline(reference, color="grey", linestyle=":", label=reference_label)
    ax.set_xlabel("epoch (passes of EM over the training set)")
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:     # no curve and no reference: no legend to draw
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def perplexity_figure(path, bars: dict[str, float | None], series: list[dict]) -> None:
    """Left: test perplexity bars (None values skipped). Right: valid perplexity per epoch."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.4), dpi=100)
    items = [(k, v) for k, v in bars.items() if v is not None and np.isfinite(v)]
    colors = [f"C{i}" if i < 2 else "grey" for i, k in enumerate(bars) if k in dict(items)]
    ax1.bar([k for k, _ in items], [v for _, v in items], color=colors)
    for i, (_, v) in enumerate(items):
        ax1.text(i, v, f"{v:.4g}", ha="center", va="bottom", fontsize=8)
    ax1.set_ylabel("test perplexity")
    for s in series:
        if len(s["x"]):
            ax2.plot(s["x"], s["y"], s.get("style", "-"), label=s["label"], markersize=3, color=s.get("color"))
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("valid perplexity")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def growing_figure(path, panels: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """LVD-PG's growing curves: one panel per (label, curves [G, rounds], cluster sizes [G]):
    the mean log-likelihood of each cluster's patches under their own heads after every growing
    round (thin lines, one per cluster) and their size-weighted mean (bold)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), dpi=100, squeeze=False,
                             sharey=True)
    for ax, (label, curves, sizes) in zip(axes[0], panels):
        curves = np.asarray(curves, dtype=np.float64)
        rounds = np.arange(1, curves.shape[1] + 1)
        for row in curves:
            if np.isfinite(row).any():
                ax.plot(rounds, row, "-", color="C0", alpha=0.25, linewidth=0.8)
        mean = metrics.size_weighted_means(curves, sizes)
        ax.plot(rounds, mean, "o-", color="C3", linewidth=2, markersize=4, label="all clusters (weighted)")
        ax.set_xticks(rounds)
        ax.set_xlabel("growing round (heads: initial + round - 1)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("mean log p(patch | own head), nats")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def mean_curve(curves: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seconds, value, value's std) per point index over the seeds' curves (points {seconds,
    <key>}); as many points as the shortest curve, the seconds and values averaged over seeds."""
    n = min(len(c) for c in curves)
    xs = np.array([[c[i]["seconds"] for i in range(n)] for c in curves], dtype=np.float64)
    ys = np.array([[c[i][key] for i in range(n)] for c in curves], dtype=np.float64)
    sd = ys.std(0, ddof=1) if len(curves) > 1 else np.zeros(n)
    return xs.mean(0), ys.mean(0), sd


def compute_figure(path, arms: dict[str, tuple[list[list[dict]], str]], key: str, lvd_seconds: float | None,
                   ylabel: str = "test bits per dimension") -> None:
    """``key`` (a test metric) against cumulative training seconds: one line per arm {label:
    (one curve per seed, colour)}, the mean over seeds with their standard deviation as error
    bars; LVD's training seconds as a dotted vertical line (the equal-time budget)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.8, 3.8), dpi=100)
    for label, (curves, color) in arms.items():
        if not curves or not min(len(c) for c in curves):
            continue
        x, y, sd = mean_curve(curves, key)
        ax.errorbar(x, y, yerr=sd, fmt="o-", color=color, label=label, capsize=3, markersize=4)
    if lvd_seconds is not None and np.isfinite(lvd_seconds):
        ax.axvline(lvd_seconds, color="grey", linestyle=":", label="LVD's training seconds")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("cumulative training seconds (summed job seconds; shared teacher and k-means not included)",
                  fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
