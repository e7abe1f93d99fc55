"""Tiny data.h5 files for the teacher tests, written with lvd.io like prepare_data would.

(A uniquely named module, so that tests can import it whatever other conftest.py files exist.)
"""

from __future__ import annotations

import numpy as np

from lvd import io


def write_image_data(path, n_train=120, n_test=40, n_valid=20, num_cats=17, patch_size=2, digits=True, seed=0):
    """8x8 grey images with ``num_cats`` levels (sklearn digits, or random when digits=False)."""
    rng = np.random.default_rng(seed)
    n = n_train + n_valid + n_test
    if digits:
        from sklearn.datasets import load_digits

        imgs = load_digits().images[:n].astype(np.uint8)  # values 0..16
        imgs = np.minimum(imgs, num_cats - 1)
    else:
        imgs = rng.integers(0, num_cats, size=(n, 8, 8)).astype(np.uint8)
    imgs = imgs[..., None]  # [N, 8, 8, 1]
    with io.create(path, "lvd.data", "tests.teachers", {}) as f:
        f["train"], f["valid"] = imgs[:n_train], imgs[n_train:n_train + n_valid]
        f["test"] = imgs[n_train + n_valid:]
        f.attrs.update(kind="image", height=8, width=8, channels=1, num_cats=num_cats, patch_size=patch_size,
                       dataset="digits" if digits else "random")
    return path


def write_text_data(path, vocab_size=20, seq_len=8, n_train=200, n_test=50, seed=0):
    """Windows of a repetitive token stream (a noisy cycle), so an LM can learn something."""
    rng = np.random.default_rng(seed)

    def stream(n):
        s = (np.arange(n) % vocab_size + (rng.random(n) < 0.2) * rng.integers(0, vocab_size, n)) % vocab_size
        return s.astype(np.int32)

    splits = {"train": n_train, "valid": n_test, "test": n_test}
    with io.create(path, "lvd.data", "tests.teachers", {}) as f:
        for name, n in splits.items():
            tokens = stream(n * seq_len)
            f[f"{name}_tokens"] = tokens
            f[name] = tokens.reshape(n, seq_len)
        f.attrs.update(kind="text", vocab_size=vocab_size, seq_len=seq_len, stride=seq_len, dataset="synthetic")
    return path
