"""Fingerprints of what a job depends on: artifacts, settings and the code version.

    fingerprint("pc_init.h5")       # an HDF5 artifact: its ``created`` attribute and datasets
    resume_key(stage, fp, cfg, ...) # a digest of JSON-able parts (dataclasses as dicts)
    code_digest()                   # the lvd package's Python sources

A shard records the fingerprints of the circuit and latents it was trained from (latent_em;
latent_top_em refuses shards of other inputs), random_latents the fingerprint of its source,
and a resumable job's checkpoint the resume_key of its input, data, config and code version
(lvd.training, train_teacher): only the same job interrupted resumes from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from lvd import __version__


def fingerprint(path, contents: bool = True) -> str:
    """Digest of an HDF5 artifact: its ``created`` attribute and every dataset's name, shape,
    dtype and (with ``contents``) bytes."""
    import h5py

    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        h.update(str(f.attrs.get("created", "")).encode())
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in sorted(names):
            d = f[name]
            h.update(f"{name}{d.shape}{d.dtype}".encode())
            if contents:
                h.update(np.ascontiguousarray(d[()]).tobytes())
    return h.hexdigest()[:20]


def resume_key(*parts) -> str:
    """A short digest of JSON-able parts (input fingerprints, the stage config)."""
    text = json.dumps([dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


_CODE_DIGEST: str | None = None


def code_digest() -> str:
    """SHA-256 (first 20 hex digits) of the lvd package's Python sources (relative paths and
    bytes, sorted): the code version a resumable job's checkpoint must match. Computed once."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256(__version__.encode())
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
        _CODE_DIGEST = h.hexdigest()[:20]
    return _CODE_DIGEST
