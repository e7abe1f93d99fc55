"""Dataset readers: images (scikit-learn digits, idx files, user arrays) and text (WikiText-2).

The readers turn raw files into checked numpy arrays; ``lvd.stages.prepare_data`` writes them
into ``data.h5`` (format ``lvd.data``). Later stages read ``data.h5`` back with ``load_split``
and ``data_info``, never the raw files.

Every problem with the input raises ``DataError`` naming the file, the field and what was
expected.
"""

from __future__ import annotations

import os

import numpy as np

SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """The input data is missing or not what the reader expects."""


def data_info(path: str | os.PathLike) -> dict:
    """Root attributes of a ``data.h5`` (kind, num_cats, sizes, ...) as plain Python values."""
    from lvd import io

    with io.open_artifact(path, "lvd.data") as f:
        return {k: _plain(v) for k, v in f.attrs.items()}


PROTOCOL_KEYS = ("dataset", "color", "lossless", "crop", "crop_train", "crop_eval", "crops_per_image", "protocol")


def protocol(path: str | os.PathLike) -> dict:
    """What the likelihoods of a ``data.h5``'s images measure, for metrics and reports.

    The image attributes of PROTOCOL_KEYS (dataset, colour space, whether it is lossless, the
    crops and the one-sentence ``protocol``); a file written before they existed gets whole
    images in RGB. Text data: {"dataset": ...} only.
    """
    info = data_info(path)
    if info.get("kind") != "image":
        return {"dataset": info.get("dataset")}
    old = {"color": "rgb", "lossless": True, "crop": 0, "crop_train": "random", "crop_eval": "topleft",
           "crops_per_image": 1}
    out = {k: info.get(k, old.get(k)) for k in PROTOCOL_KEYS}
    if out["protocol"] is None:
        from lvd.data.color import DESCRIPTIONS

        shape = f"{info.get('height')}x{info.get('width')}"
        out["protocol"] = f"{info.get('dataset')}, whole {shape} images, {DESCRIPTIONS.get(out['color'], out['color'])}"
    return out


def load_split(path: str | os.PathLike, name: str) -> np.ndarray:
    """One dataset of a ``data.h5`` in memory.

    ``name`` is a split (images: uint8 [N, H, W, Ch]; text: int32 windows [N, seq_len]) or,
    for text, ``"train_tokens"`` / ``"valid_tokens"`` / ``"test_tokens"`` (int32 streams) or
    ``"vocab"`` (an object array of str in id order).
    """
    from lvd import io

    with io.open_artifact(path, "lvd.data") as f:
        d = io.require(f, name)
        if d.dtype.kind == "O":  # variable-length strings (the vocabulary)
            return np.array(d.asstr()[()], dtype=object)
        return d[()]


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v
