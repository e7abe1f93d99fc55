"""Tiny data.h5 / latents.h5 / teacher_metrics.json files for the PC stage tests, written with
lvd.io the way prepare_data, assign_latents and train_teacher write theirs."""

from __future__ import annotations

import json

import numpy as np

from lvd import io
from lvd.pc.patches import patch_index
from treehelp import group_parents  # noqa: F401  (re-exported for the stage tests)


def write_digits(path, n_train=200, n_valid=40, n_test=40, num_cats=17, patch_size=2):
    """sklearn digits 8x8, 17 levels, as uint8 [N, 8, 8, 1] splits."""
    from sklearn.datasets import load_digits

    imgs = np.minimum(load_digits().images, num_cats - 1).astype(np.uint8)[..., None]
    a, b = n_train, n_train + n_valid
    with io.create(path, "lvd.data", "tests.stages", {}) as f:
        f["train"], f["valid"], f["test"] = imgs[:a], imgs[a:b], imgs[b:b + n_test]
        f.attrs.update(kind="image", height=8, width=8, channels=1, num_cats=num_cats,
                       patch_size=patch_size, dataset="digits")
    return path


def kmeans_latents(x_images, patch_size, K, mode="position", seed=0):
    """z [N, m] by k-means on the raw patches (per position or shared)."""
    from sklearn.cluster import KMeans

    n, H, W, Ch = x_images.shape
    idx = patch_index(H, W, Ch, patch_size)
    patches = x_images.reshape(n, -1)[:, idx].astype(np.float64)        # [N, m, P]
    if mode == "position":
        return np.stack([KMeans(K, n_init=1, random_state=seed).fit_predict(patches[:, i])
                         for i in range(idx.shape[0])], 1).astype(np.int32)
    flat = patches.reshape(-1, idx.shape[1])
    return KMeans(K, n_init=1, random_state=seed).fit_predict(flat).reshape(n, -1).astype(np.int32)


def write_latents(path, z, K, mode="position"):
    with io.create(path, "lvd.latents", "tests.stages", {}) as f:
        f["z"] = np.asarray(z, dtype=np.int32)
        f.attrs.update(mode=mode, num_states=K)
    return path


def write_text(path, windows: dict, vocab_size: int):
    """windows: split -> int [N, seq_len]."""
    seq_len = next(iter(windows.values())).shape[1]
    with io.create(path, "lvd.data", "tests.stages", {}) as f:
        for s, w in windows.items():
            f[s] = np.asarray(w, dtype=np.int32)
        f.attrs.update(kind="text", vocab_size=vocab_size, num_cats=vocab_size, seq_len=seq_len,
                       stride=1, dataset="synthetic")
    return path


def write_teacher_metrics(path, **metrics):
    path.write_text(json.dumps({"seconds": 1.0, **metrics}))
    return path


# ------------------------------------------------------------------ hand computations
def normalize_counts(counts, axis, pseudocount):
    """The engine's smoothing rule: (count + a / n) / (sum + a) over ``axis`` of size n."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.shape[axis]
    return (counts + pseudocount / n) / (counts.sum(axis, keepdims=True) + pseudocount)


def hmm_hand_counts(z, x, H, V):
    """(initial [H], transition [H, H], emission [H, V]) counts of a toy corpus, by loops."""
    init, trans, emit = np.zeros(H), np.zeros((H, H)), np.zeros((H, V))
    for zs, xs in zip(z, x):
        init[zs[0]] += 1
        for t in range(len(zs)):
            emit[zs[t], xs[t]] += 1
            if t + 1 < len(zs):
                trans[zs[t], zs[t + 1]] += 1
    return init, trans, emit


def hmm_forward_ll(init, trans, emit, x):
    """log p(window) by the scaled forward algorithm in float64 numpy. emit: [H, V]."""
    out = []
    for xs in x:
        alpha = init * emit[:, xs[0]]
        ll = np.log(alpha.sum())
        alpha /= alpha.sum()
        for w in xs[1:]:
            alpha = (alpha @ trans) * emit[:, w]
            ll += np.log(alpha.sum())
            alpha /= alpha.sum()
        out.append(ll)
    return np.array(out)


def write_benchmark(path, seconds, cpu=None):
    """A Snakemake benchmark file: rows of wall seconds ``s``; with ``cpu`` (one value a row) the
    ``cpu_time`` column too, as Snakemake writes it (older versions have no such column)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if cpu is None:
        path.write_text("s\th:m:s\tmax_rss\n" + "".join(f"{s}\t0:00:01\t10.0\n" for s in seconds))
    else:
        path.write_text("s\th:m:s\tmax_rss\tmean_load\tcpu_time\n"
                        + "".join(f"{s}\t0:00:01\t10.0\t99.0\t{c}\n" for s, c in zip(seconds, cpu, strict=True)))
