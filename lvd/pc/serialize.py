"""Save and load circuits as HDF5 (format "lvd.pc"): structure, parameters, sizes. No pickle.

Layout: root attribute ``circuit`` = "tree" or "lvd". A tree lives in a group with datasets
parents, edge_index, leaf_index, params/<name>, optional masks/<name> (bool, LVD-PG's
pruned entries) and optional var_map (int64 [G, V], per-group trees, lvd.pc.varmap), and attributes num_latents, num_cats,
num_groups, num_heads, kind, meta (JSON). An LVD circuit has groups ``patch`` and ``top`` and
attributes image_shape, patch_size, mode. Extra keyword attributes given to ``save`` (stage
config, training history as JSON...) are stored on the root and returned by ``load_attrs``.
Every tree group also holds ``sha256``, per-field checksums of its arrays; ``load`` checks every
table, index and checksum (lvd.pc.validate) and fails naming the file and the field.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from lvd import io
from lvd.pc import validate, varmap
from lvd.pc.circuit import TreeCircuit
from lvd.pc.lvdcircuit import LVDCircuit
from lvd.pc.tree import TreeStructure


def _write_tree(g, tc: TreeCircuit) -> None:
    st = tc.structure
    arrays = {"parents": st.parents, "edge_index": st.edge_index, "leaf_index": st.leaf_index,
              **{f"params/{name}": t.detach().cpu().numpy() for name, t in tc.params.items()},
              **{f"masks/{name}": m.cpu().numpy() for name, m in tc.masks.items()}}
    if tc.var_map is not None:
        arrays["var_map"] = tc.var_map.cpu().numpy()
    for name, a in arrays.items():
        g[name] = a
    g.attrs.update(num_latents=tc.num_latents, num_cats=tc.num_cats, num_groups=tc.num_groups,
                   num_heads=tc.num_heads, kind=tc.kind, meta=json.dumps(tc.meta))
    g.attrs[validate.CHECKSUM_ATTR] = json.dumps(validate.checksums(arrays))


def _read_tree(g, device) -> TreeCircuit:
    where = f"{g.file.filename}:{g.name}"
    for field in ("parents", "edge_index", "leaf_index", "params/edges", "params/root"):
        if field not in g:
            raise io.ArtifactError(f"{where}: missing field {field!r}")
    arrays = {k: np.asarray(g[k][()]) for k in ("parents", "edge_index", "leaf_index")}
    tables = {k: np.asarray(v[()]) for k, v in g["params"].items()}
    masks = {k: np.asarray(v[()]) for k, v in g["masks"].items()} if "masks" in g else {}
    validate.check_tree(where, g.attrs, arrays, tables)  # every table and index (lvd.pc.validate)
    validate.check_masks(where, masks, tables)
    var_map = np.asarray(g["var_map"][()]) if "var_map" in g else None
    extra = {}
    if var_map is not None:
        why = varmap.problems(var_map, arrays["parents"], arrays["edge_index"], arrays["leaf_index"],
                              int(g.attrs["num_groups"]))
        if why:
            raise io.ArtifactError(f"{where}: field 'var_map' {why}")
        extra["var_map"] = var_map
    validate.check_checksums(where, g.attrs.get(validate.CHECKSUM_ATTR),
                             {**arrays, **{f"params/{k}": v for k, v in tables.items()},
                              **{f"masks/{k}": v for k, v in masks.items()}, **extra})
    st = TreeStructure(arrays["parents"], arrays["edge_index"], arrays["leaf_index"])
    params = {k: torch.from_numpy(v) for k, v in tables.items()}
    a = g.attrs
    tc = TreeCircuit(st, int(a["num_latents"]), int(a["num_cats"]), num_groups=int(a["num_groups"]),
                     num_heads=int(a["num_heads"]), kind=str(a["kind"]), params=params,
                     device=device, meta=json.loads(a.get("meta", "{}")),
                     masks={k: torch.from_numpy(v) for k, v in masks.items()}, var_map=var_map)
    K, G, H = tc.num_latents, tc.num_groups, tc.num_heads
    expect = {"edges": (G, K, K), "root": (G, H, K)}
    for name, tail in expect.items():
        shape = tuple(tc.params[name].shape)
        if shape[-len(tail):] != tail:
            raise io.ArtifactError(f"{where}: params/{name} has shape {shape}, expected [..., {tail}]")
    return tc


def save(circuit, path, writer: str = "lvd.pc", config: dict | None = None, **attrs) -> None:
    """Write ``circuit`` to ``path`` atomically (temporary name, then rename)."""
    with io.create(path, "lvd.pc", writer, config) as f:
        for key, value in attrs.items():
            f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
        if isinstance(circuit, LVDCircuit):
            f.attrs["circuit"] = "lvd"
            f.attrs.update(image_shape=list(circuit.image_shape), patch_size=circuit.patch_size,
                           mode=circuit.mode)
            _write_tree(f.create_group("patch"), circuit.patch)
            _write_tree(f.create_group("top"), circuit.top)
        else:
            f.attrs["circuit"] = "tree"
            _write_tree(f.create_group("tree"), circuit)


def load(path, device="cpu"):
    """Read a circuit written by ``save``."""
    with io.open_artifact(path, "lvd.pc") as f:
        kind = f.attrs.get("circuit")
        if kind == "lvd":
            for field in ("patch", "top"):
                if field not in f:
                    raise io.ArtifactError(f"{path}: missing field {field!r}")
            for attr in ("image_shape", "patch_size", "mode"):
                if attr not in f.attrs:
                    raise io.ArtifactError(f"{path}: missing attribute {attr!r}")
            try:
                return LVDCircuit(_read_tree(f["patch"], device), _read_tree(f["top"], device),
                                  tuple(int(s) for s in f.attrs["image_shape"]),
                                  int(f.attrs["patch_size"]), str(f.attrs["mode"]))
            except ValueError as e:  # patch and top trees inconsistent with the image attributes
                if isinstance(e, io.ArtifactError):
                    raise
                raise io.ArtifactError(f"{path}: attributes 'image_shape', 'patch_size', 'mode' and the "
                                       f"'patch' and 'top' trees do not fit together: {e}") from e
        if kind == "tree":
            return _read_tree(f["tree"], device)
        raise io.ArtifactError(f"{path}: attribute 'circuit' is {kind!r}, expected 'tree' or 'lvd'")


def load_attrs(path) -> dict:
    """Root attributes of a saved circuit (JSON values decoded where possible)."""
    with io.open_artifact(path, "lvd.pc") as f:
        out = {}
        for k, v in f.attrs.items():
            v = v.item() if isinstance(v, np.generic) else v
            if isinstance(v, str):
                try:
                    v = json.loads(v)
                except ValueError:
                    pass
            out[k] = v
        return out
