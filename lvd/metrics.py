"""The metric formulas: bits per dimension, perplexity, the spread over seeds, impossible values.

    bpd(mean_ll, num_vars)          # images: - mean ll (nats) / (ln 2 * num_vars)
    perplexity(mean_ll, seq_len)    # text: exp(- mean window ll / seq_len)
    spread(values)                  # sample standard deviation over seeds (0 for one seed)
    check_metric(value, kind, path) # NaN, a negative bpd or a perplexity below 1: ArtifactError
"""

from __future__ import annotations

import math

import numpy as np

from lvd import io


def bpd(mean_ll: float, num_vars: int) -> float:
    """Bits per dimension: - mean ll (nats) / (ln 2 * num_vars)."""
    return -mean_ll / (math.log(2) * num_vars)


def perplexity(mean_ll: float, seq_len: int) -> float:
    """Per-token perplexity of windows: exp(- mean window ll / seq_len)."""
    return math.exp(-mean_ll / seq_len)


def spread(values) -> float:
    """Sample standard deviation over seeds (0.0 for a single seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def size_weighted_means(curves, sizes) -> np.ndarray:
    """Per column (a growing round) the mean of ``curves`` [G, R] over its finite rows, each row
    weighted by its size (a cluster's patches): [R]; 0 where no row is finite."""
    c = np.asarray(curves, dtype=np.float64)
    w = np.asarray(sizes, dtype=np.float64)[:, None] * np.isfinite(c)
    return np.nansum(c * w, 0) / np.maximum(w.sum(0), 1)


def check_metric(value: float, kind: str, path) -> float:
    """Refuse a metric no model can have: NaN, a negative bpd (kind "image"), a perplexity below
    1 (kind "text"); the error names the circuit file ``path``."""
    if not np.isfinite(value) or (kind == "image" and value < 0) or (kind == "text" and value < 1):
        what = "bpd" if kind == "image" else "perplexity"
        raise io.ArtifactError(f"{path}: test {what} {value!r} is impossible; the circuit is corrupt "
                               f"(rerun the stage that wrote it)")
    return float(value)
