"""Checked readers of the stage artifacts: the data, the latents, a circuit's fit and history.

    info = data_info("data.h5")                  # kind, num_vars, num_cats, image_shape, seq_len ...
    x = load_split("data.h5", "train")           # int64 [N, num_vars] (images flattened row-major)
    z, mode, K = load_latents("latents.h5", len(x), num_positions(info))  # z int64 [N, num_positions]
    check_circuit(c, info, "pc_init.h5")         # the circuit models this data
    records = history_of("pc_final.h5")          # the training stages it went through (lvd.training)

Every reader checks what it returns (format, shapes, value ranges) and fails with an
``io.ArtifactError`` naming the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lvd import io, pc
from lvd.pc.patches import check_patchable


@dataclass(frozen=True)
class DataInfo:
    path: str
    kind: str                          # "image" | "text"
    num_vars: int                      # H*W*Ch (image) or seq_len (text)
    num_cats: int                      # grey levels or vocab_size
    image_shape: tuple | None = None   # (H, W, Ch)
    patch_size: int = 0
    seq_len: int = 0


def _attr(f, name, path):
    if name not in f.attrs:
        raise io.ArtifactError(f"{path}: missing attribute {name!r}")
    v = f.attrs[name]
    return v.decode() if isinstance(v, bytes) else v


def data_info(path) -> DataInfo:
    """What a data.h5 (format lvd.data) holds, checked."""
    with io.open_artifact(path, "lvd.data") as f:
        kind = str(_attr(f, "kind", path))
        if kind == "image":
            d = io.require(f, "train", ndim=4, dtype_kind="u")
            shape = tuple(int(s) for s in d.shape[1:])
            return DataInfo(str(path), kind, int(np.prod(shape)), int(_attr(f, "num_cats", path)),
                            image_shape=shape, patch_size=int(_attr(f, "patch_size", path)))
        if kind == "text":
            d = io.require(f, "train", ndim=2, dtype_kind="iu")
            seq_len = int(_attr(f, "seq_len", path))
            if d.shape[1] != seq_len:
                raise io.ArtifactError(f"{path}: field 'train' has {d.shape[1]} columns, "
                                       f"expected seq_len={seq_len}")
            return DataInfo(str(path), kind, seq_len, int(_attr(f, "vocab_size", path)), seq_len=seq_len)
        raise io.ArtifactError(f"{path}: attribute 'kind' is {kind!r}, expected 'image' or 'text'")


def load_split(path, split: str, max_rows: int = 0, seed: int = 0) -> np.ndarray:
    """int64 [N, num_vars] of one split (images flattened row-major [H, W, Ch]).

    max_rows > 0 keeps a seeded random subset of that many rows (in file order).
    """
    info = data_info(path)
    with io.open_artifact(path, "lvd.data") as f:
        d = io.require(f, split, ndim=4 if info.kind == "image" else 2, dtype_kind="iu")
        if tuple(d.shape[1:]) != (info.image_shape or (info.seq_len,)):
            raise io.ArtifactError(f"{path}: field {split!r} has shape {d.shape}, expected rows of "
                                   f"{info.image_shape or (info.seq_len,)} like 'train'")
        n = d.shape[0]
        if n == 0:
            raise io.ArtifactError(f"{path}: field {split!r} is empty")
        if 0 < max_rows < n:
            rows = np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
            a = d[rows]
        else:
            a = d[()]
    x = a.reshape(len(a), -1).astype(np.int64)
    if x.min() < 0 or x.max() >= info.num_cats:
        raise io.ArtifactError(f"{path}: field {split!r} has values in [{x.min()}, {x.max()}], "
                               f"expected [0, {info.num_cats}) (num_cats / vocab_size)")
    return x


def load_latents(path, num_train: int, num_positions: int) -> tuple[np.ndarray, str, int]:
    """(z int64 [N, num_positions], mode, num_states) from latents.h5, checked against the data."""
    with io.open_artifact(path, "lvd.latents") as f:
        z = io.require(f, "z", ndim=2, dtype_kind="iu")[()].astype(np.int64)
        mode = str(_attr(f, "mode", path))
        k = int(_attr(f, "num_states", path))
    if z.shape != (num_train, num_positions):
        raise io.ArtifactError(f"{path}: field 'z' has shape {z.shape}, expected ({num_train}, "
                               f"{num_positions}) (train rows x positions of data.h5)")
    if mode not in ("position", "shared", "clusters"):
        raise io.ArtifactError(f"{path}: attribute 'mode' is {mode!r}, expected 'position', 'shared' or 'clusters'")
    if z.min() < 0 or z.max() >= k:
        raise io.ArtifactError(f"{path}: field 'z' has values in [{z.min()}, {z.max()}], "
                               f"expected [0, num_states={k})")
    return z, mode, k


def num_positions(info: DataInfo) -> int:
    """Patch positions of the images (the patch size must tile them) or positions of a window."""
    if info.kind == "text":
        return info.seq_len
    h, w, _ = info.image_shape
    check_patchable(h, w, info.patch_size, f"{info.path} (attribute 'patch_size')")
    return (h // info.patch_size) * (w // info.patch_size)


def check_circuit(c, info: DataInfo, pc_path) -> None:
    """Raise ArtifactError when the circuit in ``pc_path`` does not model ``info``'s data."""
    if info.kind == "image" and not isinstance(c, pc.LVDCircuit) and getattr(c, "kind", "") == "hclt":
        got, want = (c.num_vars, c.num_cats), (info.num_vars, info.num_cats)
        fields = "(num_vars, num_cats) of the HCLT"
    elif info.kind == "image":
        if not isinstance(c, pc.LVDCircuit):
            raise io.ArtifactError(f"{pc_path}: attribute 'circuit' is not 'lvd' (nor an HCLT), but "
                                   f"{info.path} holds images")
        got, want = (c.image_shape, c.patch_size, c.num_cats), (info.image_shape, info.patch_size, info.num_cats)
        fields = "(image shape, patch_size, num_cats)"
    else:
        if isinstance(c, pc.LVDCircuit):
            raise io.ArtifactError(f"{pc_path}: an LVD image circuit, but {info.path} holds text")
        got, want = (c.num_vars, c.num_cats), (info.seq_len, info.num_cats)
        fields = "(seq_len, vocab_size)"
    if tuple(got) != tuple(want):
        raise io.ArtifactError(f"{pc_path}: the circuit has {fields} = {got}, but {info.path} has {want}")


def history_of(path) -> list:
    """The ``history`` attribute of a saved circuit ([] when absent)."""
    h = pc.load_attrs(path).get("history", [])
    return h if isinstance(h, list) else []
