"""Shard files and spilled arrays, on top of lvd.io (format stamps, atomic writes, checksums).

Shards (format lvd.pc_shard, one job's share of latent_em or grow_patch_pcs) are written by
``write_shard`` and read by ``read_shard``, which checks them (layout below, at SHARD_FIELDS).
``SpillArray`` is the scratch file of an array too large for memory (latent_top_em's patch
likelihoods): removed when closed, never an artifact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lvd.io import ArtifactError, CHECKSUM_ATTR, check_checksums, checksums, create, open_artifact, require


# --------------------------------------------------------------------------- lvd.pc_shard
# One job's share of a sharded stage (latent_em, grow_patch_pcs); latent_top_em gathers them.
#
#   groups          int64   [g]              the parameter groups (clusters) the shard holds
#   num_examples    int64   [g]              member patches of each group
#   history         float64 [g, rounds]      mean log p(patch | head) per epoch (latent_em) or
#                                            growing round (grow_patch_pcs); NaN without members
#   params/<table>  float   the trained tables with the group axis cut to g (SHARD_GROUP_DIMS):
#                           edges [E_t, g, K, K], root [g, H, K], leaves [L_t, g, C, K]
#   grown fields (grow_patch_pcs only, all or none):
#   heads           int64   [sum num_examples]  every member's final head, groups in order
#   num_heads       int64   [g]              active heads after growing
#   pruned          int64   [g, rounds]      entries pruned per round
#   masks/edges     bool    like params/edges; masks/root bool like params/root
#   masks/active    bool    [V, g, K]        the active hidden states of every node
#   attrs           shard, num_shards, num_groups, pc_fingerprint, latents_fingerprint (and
#                   whatever else the stage records: seconds, rounds, ...); the digests of
#                   the common fields and tables in ``sha256``, of the grown fields in
#                   ``pg_checksums``
SHARD_FIELDS = ("groups", "num_examples", "history")
GROWN_FIELDS = ("heads", "num_heads", "pruned", "masks/edges", "masks/root", "masks/active")
GROWN_CHECKSUM_ATTR = "pg_checksums"
SHARD_ATTRS = ("shard", "num_shards", "num_groups", "pc_fingerprint", "latents_fingerprint")
SHARD_GROUP_DIMS = {"edges": 1, "root": 0, "leaves": 1}


@dataclass(frozen=True)
class Shard:
    """A checked lvd.pc_shard file (``read_shard``); arrays as stored, described above."""
    path: str
    shard: int
    num_shards: int
    num_groups: int
    groups: np.ndarray
    num_examples: np.ndarray
    history: np.ndarray
    params: dict[str, np.ndarray]
    grown: dict[str, np.ndarray] | None   # GROWN_FIELDS of a grow_patch_pcs shard, else None
    attrs: dict[str, Any]                 # every root attribute (fingerprints, config, seconds, ...)


class ShardError(ArtifactError):
    """Shard files that are incomplete or inconsistent with each other or with pc_init."""


def _check_shard_arrays(path, groups, num_examples, history, params, grown) -> None:
    """The layout above: dtypes, ranks and the group axis of every field (before writing and
    after reading). ShardError naming the file, the field and what was expected."""
    def need(name, a, kind, ndim, what):
        if a.dtype.kind not in kind or a.ndim != ndim:
            raise ShardError(f"{path}: field {name!r} is {a.dtype} {a.shape}, expected {what}")

    need("groups", groups, "iu", 1, "an integer array [groups]")
    g = len(groups)
    need("num_examples", num_examples, "iu", 1, f"an integer array [{g}] (one per group)")
    need("history", history, "f", 2, f"a float array [{g}, rounds]")
    for name, a in (("num_examples", num_examples), ("history", history)):
        if len(a) != g:
            raise ShardError(f"{path}: field {name!r} has {len(a)} rows, expected {g} (one per entry of 'groups')")
    if (num_examples < 0).any():
        raise ShardError(f"{path}: field 'num_examples' has negative entries")
    if not {"edges", "root"} <= set(params) <= set(SHARD_GROUP_DIMS):
        raise ShardError(f"{path}: tables {sorted('params/' + k for k in params)}, expected params/edges, "
                         f"params/root and (with leaves) params/leaves")
    for name, a in params.items():
        dim = SHARD_GROUP_DIMS[name]
        if a.dtype.kind != "f" or a.ndim <= dim or a.shape[dim] != g:
            raise ShardError(f"{path}: field 'params/{name}' is {a.dtype} {a.shape}, expected a float table "
                             f"of {g} group(s) on axis {dim} (one per entry of 'groups')")
    if grown is None:
        return
    missing = [k for k in GROWN_FIELDS if k not in grown]
    if missing:
        raise ShardError(f"{path}: missing field(s) {missing} (a grow_patch_pcs shard has all of {list(GROWN_FIELDS)})")
    need("heads", grown["heads"], "iu", 1, f"an integer array [{int(num_examples.sum())}] (sum of num_examples)")
    if len(grown["heads"]) != int(num_examples.sum()):
        raise ShardError(f"{path}: field 'heads' has {len(grown['heads'])} entries, expected "
                         f"{int(num_examples.sum())} (the shard's num_examples)")
    need("num_heads", grown["num_heads"], "iu", 1, f"an integer array [{g}]")
    need("pruned", grown["pruned"], "iu", 2, f"an integer array [{g}, rounds]")
    for name in ("num_heads", "pruned"):
        if len(grown[name]) != g:
            raise ShardError(f"{path}: field {name!r} has {len(grown[name])} rows, expected {g}")
    for name in ("edges", "root"):
        m, want = grown[f"masks/{name}"], params[name].shape
        if m.dtype != np.bool_ or m.shape != want:
            raise ShardError(f"{path}: field 'masks/{name}' is {m.dtype} {m.shape}, expected bool {want} "
                             f"(the shape of params/{name})")
    m = grown["masks/active"]
    if m.dtype != np.bool_ or m.ndim != 3 or m.shape[1] != g:
        raise ShardError(f"{path}: field 'masks/active' is {m.dtype} {m.shape}, expected bool [nodes, {g}, K]")


def write_shard(path: str | os.PathLike, writer: str, config: dict | None, attrs: dict[str, Any], *,
                groups, num_examples, history, params: dict, grown: dict | None = None) -> None:
    """Write one lvd.pc_shard file (atomically), its layout checked first. ``attrs``: the root
    attributes, SHARD_ATTRS and whatever else the stage records (seconds, ...); the arrays
    (numpy, or tensors on the CPU) are stored as given, with their checksums."""
    arrays = {"groups": np.asarray(groups), "num_examples": np.asarray(num_examples),
              "history": np.asarray(history),
              **{f"params/{k}": np.asarray(v) for k, v in params.items()}}
    grown = None if grown is None else {k: np.asarray(v) for k, v in grown.items()}
    missing = [k for k in SHARD_ATTRS if k not in attrs]
    if missing:
        raise ShardError(f"{path}: attributes {missing} not given (a shard records {list(SHARD_ATTRS)})")
    if not 0 <= attrs["shard"] < attrs["num_shards"]:
        raise ShardError(f"{path}: shard {attrs['shard']} is outside [0, num_shards {attrs['num_shards']})")
    _check_shard_arrays(path, arrays["groups"], arrays["num_examples"], arrays["history"],
                        {k: arrays[f"params/{k}"] for k in params}, grown)
    with create(path, "lvd.pc_shard", writer, config, **attrs) as f:
        for k, a in {**arrays, **(grown or {})}.items():
            f[k] = a
        f.attrs[CHECKSUM_ATTR] = json.dumps(checksums(arrays))
        if grown is not None:
            f.attrs[GROWN_CHECKSUM_ATTR] = json.dumps(checksums(grown))


def read_shard(path: str | os.PathLike) -> Shard:
    """Read and check one lvd.pc_shard file: format and version, the attributes SHARD_ATTRS,
    every field's dtype, rank and group axis, and the checksums (a file without them is read
    unchecked). Errors (ShardError, an ArtifactError) name the file, the field and what was
    expected. The tables' shapes and normalization against a circuit are the reader's to check."""
    with open_artifact(path, "lvd.pc_shard") as f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        for key in SHARD_ATTRS:
            if key not in attrs:
                raise ShardError(f"{path}: missing attribute {key!r} (expected a shard of latent_em or "
                                 f"grow_patch_pcs)")
        arrays = {k: require(f, k)[()] for k in SHARD_FIELDS}
        if "params" not in f or not isinstance(f["params"], h5py.Group):
            raise ShardError(f"{path}: missing group 'params' (the trained tables)")
        params = {k: require(f, f"params/{k}")[()] for k in f["params"]}
        unknown = set(params) - set(SHARD_GROUP_DIMS)
        if unknown:
            raise ShardError(f"{path}: unknown table(s) {sorted('params/' + k for k in unknown)}, expected "
                             f"{sorted('params/' + k for k in SHARD_GROUP_DIMS)}")
        present = [k for k in GROWN_FIELDS if k in f]
        if present and len(present) < len(GROWN_FIELDS):
            raise ShardError(f"{path}: has {present} but not {[k for k in GROWN_FIELDS if k not in f]} "
                             f"(a grow_patch_pcs shard has all of {list(GROWN_FIELDS)})")
        grown = {k: require(f, k)[()] for k in GROWN_FIELDS} if present else None
    check_checksums(path, CHECKSUM_ATTR, attrs.get(CHECKSUM_ATTR),
                    {**arrays, **{f"params/{k}": v for k, v in params.items()}})
    if grown is not None:
        check_checksums(path, GROWN_CHECKSUM_ATTR, attrs.get(GROWN_CHECKSUM_ATTR), grown)
    _check_shard_arrays(path, arrays["groups"], arrays["num_examples"], arrays["history"], params, grown)
    try:
        s, S, G = (int(attrs[k]) for k in ("shard", "num_shards", "num_groups"))
    except (TypeError, ValueError):
        raise ShardError(f"{path}: attributes 'shard', 'num_shards', 'num_groups' are "
                         f"{[attrs[k] for k in ('shard', 'num_shards', 'num_groups')]}, expected integers") from None
    if not 0 <= s < S:
        raise ShardError(f"{path}: attribute 'shard' is {s}, expected 0 <= shard < num_shards={S}")
    g = arrays["groups"]
    if len(g) and (g.min() < 0 or g.max() >= G or (np.diff(g) <= 0).any()):
        raise ShardError(f"{path}: field 'groups' is {g.tolist()[:8]}..., expected increasing groups in "
                         f"[0, num_groups={G})")
    return Shard(str(path), s, S, G, arrays["groups"], arrays["num_examples"], arrays["history"], params,
                 grown, attrs)


# --------------------------------------------------------------------------- spilled arrays
class SpillArray:
    """A float32 array [N, ..., K] too large for memory, kept in a temporary HDF5 file.

    Stored as float16 minus its maximum over the last axis (clamped at -6e4, so -inf stays
    finite), the float32 maxima [N, ...] kept in memory; reading adds them back, so values
    near each row's maximum keep float16's relative precision (latent_top_em's patch_lls).
    Rows are written in blocks (``write``) and read by ``a[rows]`` (float32; ``rows`` sorted
    first, a contiguous run read as one slice). The file is removed by ``close`` (also on
    an error while it is created, and on leaving a ``with`` block); it is a scratch file,
    never an artifact, named ``.<name>.<tag>-<pid>.h5`` beside ``near``.
    """

    def __init__(self, near: str | os.PathLike, shape: tuple[int, ...], tag: str = "spill"):
        near = Path(near)
        near.parent.mkdir(parents=True, exist_ok=True)
        self.path = near.with_name(f".{near.name}.{tag}-{os.getpid()}.h5")
        self.shape = tuple(int(s) for s in shape)
        self.offset = np.empty(self.shape[:-1], dtype=np.float32)     # [N, ...]
        self.file = h5py.File(self.path, "w")
        try:
            row = int(np.prod(self.shape[1:])) * 2                      # bytes of one float16 row
            rows = min(self.shape[0], max(1, 2**20 // max(row, 1)))     # about 1 MiB chunks
            self.data = self.file.create_dataset("values", shape=self.shape, dtype=np.float16,
                                                 chunks=(rows, *self.shape[1:]) if rows and row else None)
        except BaseException:
            self.close()
            raise

    def write(self, start: int, block: np.ndarray) -> None:
        """Rows start .. start + len(block) - 1 from float32 ``block``."""
        block = np.asarray(block, dtype=np.float32)
        mx = block.max(-1)
        self.offset[start:start + len(block)] = mx
        self.data[start:start + len(block)] = np.maximum(block - mx[..., None], np.float32(-6e4)).astype(np.float16)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.sort(np.asarray(rows))
        if len(rows) and np.all(np.diff(rows) == 1):
            a = self.data[rows[0]:rows[-1] + 1]
        else:
            a = self.data[rows]
        return a.astype(np.float32) + self.offset[rows][..., None]

    def close(self) -> None:
        """Close and remove the file (idempotent)."""
        self.file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "SpillArray":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
