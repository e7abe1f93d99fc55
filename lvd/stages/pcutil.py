"""Helpers shared by the PC stages (materialize_pc .. evaluate): data, latents, metrics, EM runs.

    info = data_info("data.h5")                  # kind, num_vars, num_cats, image_shape, seq_len ...
    x = load_split("data.h5", "train")           # int64 [N, num_vars] (images flattened row-major)
    z, mode, K = load_latents("latents.h5", len(x), num_positions)
    circuit, history = train(circuit, x, TrainSchedule(...), valid=..., ckpt=path, ...)

History: every PC artifact carries the attribute ``history``, a JSON list with one record per
training stage it went through, in order::

    {"stage": "finetune", "epochs": 5, "full_batch_epochs": 1, "train_ll": [...],
     "valid_ll": [...], "seconds": 12.3}

``train_ll[e]`` is the engine's mean train log-likelihood during epoch e (mini-batch: averaged
while the parameters move; full-batch: at the start of the epoch), ``valid_ll[e]`` the mean
valid log-likelihood after epoch e. Stages append their record to the input's list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lvd import io, pc
from lvd.pc.circuit import TreeCircuit
from lvd.pc.patches import check_patchable

log = logging.getLogger("lvd.pc_stages")


# ---------------------------------------------------------------------------- data and latents
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
    if mode not in ("position", "shared"):
        raise io.ArtifactError(f"{path}: attribute 'mode' is {mode!r}, expected 'position' or 'shared'")
    if z.min() < 0 or z.max() >= k:
        raise io.ArtifactError(f"{path}: field 'z' has values in [{z.min()}, {z.max()}], "
                               f"expected [0, num_states={k})")
    return z, mode, k


def num_positions(info: DataInfo) -> int:
    if info.kind == "text":
        return info.seq_len
    h, w, _ = info.image_shape
    check_patchable(h, w, info.patch_size, f"{info.path} (attribute 'patch_size')")
    return (h // info.patch_size) * (w // info.patch_size)


def bpd(mean_ll: float, num_vars: int) -> float:
    """Bits per dimension: - mean ll (nats) / (ln 2 * num_vars)."""
    return -mean_ll / (math.log(2) * num_vars)


def perplexity(mean_ll: float, seq_len: int) -> float:
    """Per-token perplexity of windows: exp(- mean window ll / seq_len)."""
    return math.exp(-mean_ll / seq_len)


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


def random_like(circuit, seed: int):
    """The same structure and sizes as ``circuit`` with fresh random (seeded) parameters."""
    def fresh(tc: TreeCircuit, s: int) -> TreeCircuit:
        return TreeCircuit(tc.structure, tc.num_latents, tc.num_cats, num_groups=tc.num_groups,
                           num_heads=tc.num_heads, kind=tc.kind, seed=s, device=tc.device, meta=tc.meta)
    if isinstance(circuit, pc.LVDCircuit):
        return pc.LVDCircuit(fresh(circuit.patch, seed), fresh(circuit.top, seed + 1),
                             circuit.image_shape, circuit.patch_size, circuit.mode)
    return fresh(circuit, seed)


# --------------------------------------------------------------------------------- EM runs
@dataclass(frozen=True)
class Schedule:
    """Mini-batch epochs with the step size annealed linearly over all their steps, then
    full-batch epochs (step 1.0). Epoch e shuffles with a seed derived from (seed, e)."""
    epochs: int
    full_batch_epochs: int = 0
    batch_size: int = 512
    step_size: float = 0.1
    step_size_end: float = 0.01
    pseudocount: float = 0.1
    seed: int = 0

    @property
    def total(self) -> int:
        return self.epochs + self.full_batch_epochs

    def steps(self, epoch: int, num_batches: int) -> tuple[float, float]:
        """(step size of the first, of the last mini-batch step of ``epoch``)."""
        last = max(self.epochs * num_batches - 1, 1)
        s = lambda t: self.step_size + (self.step_size_end - self.step_size) * t / last  # noqa: E731
        return s(epoch * num_batches), s(epoch * num_batches + num_batches - 1)

    def epoch_seed(self, epoch: int) -> int:
        return int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])


def check_schedule(cfg, section: str, prefix: str = "") -> None:
    """Raise ValueError naming ``section.<field>`` when an EM setting is out of range."""
    for name in ("epochs", "full_batch_epochs", "batch_size"):
        if hasattr(cfg, prefix + name):
            v = getattr(cfg, prefix + name)
            lo = 1 if name == "batch_size" else 0
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{section}.{prefix}{name} is {v!r}, expected an integer >= {lo}")
    for name in ("step_size", "step_size_end"):
        v = getattr(cfg, prefix + name)
        if not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"{section}.{prefix}{name} is {v!r}, expected a number in (0, 1]")
    if getattr(cfg, "pseudocount", 0) < 0:
        raise ValueError(f"{section}.pseudocount is {cfg.pseudocount!r}, expected >= 0")


def train(circuit, x, sched: Schedule, *, stage: str, valid=None, ckpt=None, resume_key: str = "",
          writer: str = "lvd.stages.pcutil", config: dict | None = None, shuffle: bool = True, **arrays):
    """Run ``sched`` on ``circuit`` (EM on x [N, V] and/or ``arrays``); returns (circuit, record).

    valid(circuit) -> mean valid ll, called after every epoch. ckpt: a path; after every epoch
    the circuit is saved there (atomically) with the epoch count, the record so far and
    ``resume_key``; a run finding a checkpoint with the same key resumes after its last epoch
    (and returns the loaded circuit), one with another key is ignored (logged).
    """
    record = {"stage": stage, "epochs": sched.epochs, "full_batch_epochs": sched.full_batch_epochs,
              "train_ll": [], "valid_ll": [], "seconds": 0.0}
    start = 0
    if ckpt is not None and Path(ckpt).exists():
        try:
            attrs = pc.load_attrs(ckpt)
        except io.ArtifactError as e:
            log.warning("ignoring unreadable checkpoint %s (%s)", ckpt, e)
            attrs = {}
        if attrs and attrs.get("resume_key") == resume_key:
            circuit = pc.load(ckpt, device=circuit.device)
            record, start = attrs["record"], int(attrs["epoch"])
            log.info("%s: resuming from %s after epoch %d/%d", stage, ckpt, start, sched.total)
        elif attrs:
            log.warning("%s: ignoring checkpoint %s from another input or config", stage, ckpt)
    N = len(x) if x is not None else len(next(a for a in arrays.values() if a is not None))
    nb = math.ceil(N / sched.batch_size)
    for epoch in range(start, sched.total):
        t0 = time.perf_counter()
        if epoch < sched.epochs:
            s0, s1 = sched.steps(epoch, nb)
            hist = pc.em(circuit, x, epochs=1, batch_size=sched.batch_size, step_size=s0,
                         step_size_end=s1, pseudocount=sched.pseudocount,
                         seed=sched.epoch_seed(epoch), shuffle=shuffle, **arrays)
        else:
            s0 = s1 = 1.0
            hist = pc.em(circuit, x, epochs=1, batch_size=sched.batch_size, step_size=1.0,
                         pseudocount=sched.pseudocount, full_batch=True, **arrays)
        record["train_ll"].append(float(hist[0]))
        if valid is not None:
            record["valid_ll"].append(float(valid(circuit)))
        record["seconds"] += time.perf_counter() - t0
        log.info("%s epoch %d/%d (%s, step %.4g -> %.4g): train ll %.4f, valid ll %s (%.1f s)",
                 stage, epoch + 1, sched.total, "mini-batch" if epoch < sched.epochs else "full-batch",
                 s0, s1, record["train_ll"][-1],
                 f"{record['valid_ll'][-1]:.4f}" if record["valid_ll"] else "-", time.perf_counter() - t0)
        if ckpt is not None:
            pc.save(circuit, ckpt, writer=writer, config=config, epoch=epoch + 1, record=record,
                    resume_key=resume_key)
    return circuit, record


def schedule_from(cfg, prefix: str = "", full_batch_epochs: int = 0) -> Schedule:
    """A Schedule from a stage Config's fields (``prefix`` selects e.g. the ``top_`` ones)."""
    g = lambda name: getattr(cfg, prefix + name)  # noqa: E731
    return Schedule(epochs=g("epochs"), full_batch_epochs=full_batch_epochs, batch_size=g("batch_size"),
                    step_size=g("step_size"), step_size_end=g("step_size_end"),
                    pseudocount=cfg.pseudocount, seed=cfg.seed)


def resume_key(*parts) -> str:
    """A short digest of JSON-able parts (input fingerprints, the stage config)."""
    text = json.dumps([dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]
