"""Artifacts on disk: the one place that reads and writes them.

Every artifact between stages is an HDF5 file whose root attributes say what it is:

    format          e.g. "lvd.data", "lvd.embeddings", "lvd.latents", "lvd.pc"
    format_version  integer; readers refuse other versions
    writer          "lvd <version> <module>"
    created         ISO time (UTC)
    config          JSON of the stage config that wrote it
    host, device, slurm_job_id, cuda_visible_devices   where it was computed (lvd.devices.provenance)

Files are written to a temporary name beside the target and renamed when complete,
so a killed job never leaves a half-written artifact under the final name, and an
existing artifact is replaced only by a complete one.

Teacher checkpoints are torch files holding only tensors and plain Python values;
they are loaded with ``torch.load(..., weights_only=True)``. Nothing here unpickles.

Shards (format lvd.pc_shard) and the scratch file of an array too large for memory live in
lvd.shardio, on top of this module.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from lvd import __version__

FORMAT_VERSIONS = {
    "lvd.data": 1,
    "lvd.embeddings": 1,
    "lvd.latents": 1,
    "lvd.pc": 1,
    "lvd.pc_shard": 1,
}


class ArtifactError(ValueError):
    """An artifact is missing, of the wrong format or version, or lacks a field."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _provenance() -> dict[str, str]:
    try:
        from lvd.devices import provenance
    except ImportError:  # pragma: no cover - devices is part of the package
        return {"host": socket.gethostname()}
    return provenance()


def stamp(f: h5py.File, fmt: str, writer: str, config: dict | None = None, **extra: Any) -> None:
    """Write the self-describing root attributes of an artifact."""
    if fmt not in FORMAT_VERSIONS:
        raise ValueError(f"unknown artifact format {fmt!r}; known: {sorted(FORMAT_VERSIONS)}")
    f.attrs["format"] = fmt
    f.attrs["format_version"] = FORMAT_VERSIONS[fmt]
    f.attrs["writer"] = f"lvd {__version__} {writer}"
    f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    f.attrs["config"] = json.dumps(config or {}, sort_keys=True, default=str)
    for key, value in {**_provenance(), **extra}.items():
        f.attrs[key] = value if value is not None else ""


@contextlib.contextmanager
def create(path: str | os.PathLike, fmt: str, writer: str, config: dict | None = None,
           **extra: Any) -> Iterator[h5py.File]:
    """Open a new artifact for writing (atomically); the root is stamped first.

    >>> with create("out.h5", "lvd.latents", __name__, cfg) as f:
    ...     f["z"] = z
    """
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            stamp(f, fmt, writer, config, **extra)
            yield f


def open_artifact(path: str | os.PathLike, fmt: str) -> h5py.File:
    """Open an artifact for reading after checking its format and version.

    Raises ArtifactError naming the file and what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file not found (expected a {fmt} artifact)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ArtifactError(f"{path}: not a readable HDF5 file ({e}); expected a {fmt} artifact") from e
    found = f.attrs.get("format")
    if isinstance(found, bytes):
        found = found.decode()
    if found != fmt:
        f.close()
        raise ArtifactError(f"{path}: attribute 'format' is {found!r}, expected {fmt!r}")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSIONS[fmt]:
        f.close()
        raise ArtifactError(
            f"{path}: attribute 'format_version' is {version}, expected {FORMAT_VERSIONS[fmt]} for {fmt}")
    return f


def require(f: h5py.File, name: str, ndim: int | None = None, dtype_kind: str | None = None) -> h5py.Dataset:
    """Return dataset ``name`` of an open artifact, checking rank and dtype kind ('i', 'u', 'f', 'b')."""
    if name not in f:
        raise ArtifactError(f"{f.filename}: missing field {name!r}")
    d = f[name]
    if ndim is not None and d.ndim != ndim:
        raise ArtifactError(f"{f.filename}: field {name!r} has shape {d.shape}, expected {ndim} dimensions")
    if dtype_kind is not None and d.dtype.kind not in dtype_kind:
        raise ArtifactError(f"{f.filename}: field {name!r} has dtype {d.dtype}, expected kind {dtype_kind!r}")
    return d


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (metrics, summaries)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike, what: str = "a JSON file") -> Any:
    """The JSON value in ``path``; ArtifactError naming the file for a missing file, bytes that
    are not UTF-8, or invalid JSON (with its line and column)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found (expected {what})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); expected {what}") from e
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read ({e.strerror}); expected {what}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                            f"expected {what}") from e


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """torch.save a dict of tensors and plain values, atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a teacher checkpoint without unpickling arbitrary objects."""
    import torch

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise ArtifactError(f"{path}: not a loadable checkpoint (weights_only=True): {e}") from e


# --------------------------------------------------------------------------- checksums
CHECKSUM_ATTR = "sha256"


def checksums(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """{field: SHA-256 hex of its dtype, shape and bytes} (the digests lvd.pc.validate writes too)."""
    out = {}
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        out[name] = h.hexdigest()
    return out


def check_checksums(path, attr: str, stored, arrays: dict[str, np.ndarray]) -> None:
    """Compare ``arrays`` with the JSON digests of attribute ``attr`` (None: a file written
    without them, unchecked). ArtifactError naming the file, the field and the attribute."""
    if stored is None:
        return
    try:
        want = json.loads(stored)
        assert isinstance(want, dict)
    except (ValueError, TypeError, AssertionError):
        raise ArtifactError(f"{path}: attribute {attr!r} is not a JSON object of digests") from None
    got = checksums(arrays)
    for name in sorted(set(want) | set(got)):
        if want.get(name) != got.get(name):
            what = "has no checksum" if name not in want else (
                "is missing" if name not in got else "does not match its checksum")
            raise ArtifactError(f"{path}: field {name!r} {what} (attribute {attr!r}): the file is corrupt "
                                f"or was edited; rerun the stage that wrote it")
