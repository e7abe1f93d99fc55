"""Checks of a circuit read from disk: every table and index, before the engine sees them.

A latent tree stored by lvd.pc.serialize (one HDF5 group) must have

    attributes  num_latents K >= 1, num_cats C >= 0, num_groups G >= 1, num_heads H >= 1
    parents     int [V], exactly one -1 (the root), the rest in [0, V), every node reachable
    edge_index  int [V], values in [0, E_t)        (E_t = rows of params/edges); -1 at a
                                                   non-root node: a copy of its parent's latent
    leaf_index  int [V], values in [0, L_t) when the tree has leaves (C > 0)
    params/edges   float [E_t, G, K, K]  rows sum to 1 over the last dim
    params/root    float [G, H, K]       sums to 1 over the last dim
    params/leaves  float [L_t, G, C, K]  sums to 1 over dim 2; present exactly when C > 0

    masks/<name>   bool, shaped like params/<name> (optional; LVD-PG's pruned entries): every
                   distribution keeps at least one allowed entry, and the table is zero outside
    var_map        int [G, V] (optional; per-group trees in a super-tree): the checks of
                   lvd.pc.varmap.problems (each group's real nodes one-to-one onto the
                   variables, padding only below real nodes, an untied tree)

Tables must be finite and non-negative, and every distribution must sum to 1 within
``TOLERANCE`` (EM and counting keep them normalized to float32 rounding, far below it).
``checksums`` are per-field SHA-256 digests of the stored arrays (dtype, shape and bytes),
written by ``save`` as the group attribute ``sha256`` (JSON) and verified on load when present,
so a flipped bit that leaves a plausible table is still caught. Errors are
``lvd.io.ArtifactError`` naming the file, the group and the field.
"""

from __future__ import annotations


import numpy as np

from lvd import io

TOLERANCE = 1e-3
NORM_DIMS = {"edges": -1, "root": -1, "leaves": 2}
CHECKSUM_ATTR = io.CHECKSUM_ATTR


def _fail(where: str, field: str, problem: str):
    raise io.ArtifactError(f"{where}: field {field!r} {problem}")


checksums = io.checksums          # {field: SHA-256 of its dtype, shape and bytes}, the one definition


def check_checksums(where: str, stored, arrays: dict[str, np.ndarray]) -> None:
    """Compare ``arrays`` with the JSON ``stored`` attribute (None: an older file, unchecked)."""
    io.check_checksums(where, CHECKSUM_ATTR, stored, arrays)


def check_table(where: str, field: str, a: np.ndarray, shape: tuple, norm_dim: int,
                tol: float = TOLERANCE) -> None:
    """A probability table: float, of ``shape``, finite, >= 0, summing to 1 over ``norm_dim``."""
    if a.dtype.kind != "f":
        _fail(where, field, f"has dtype {a.dtype}, expected floating point")
    if tuple(a.shape) != tuple(shape):
        _fail(where, field, f"has shape {tuple(a.shape)}, expected {tuple(shape)}")
    finite = np.isfinite(a)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        _fail(where, field, f"has {int((~finite).sum())} NaN or infinite entries (first at {first})")
    if (a < 0).any():
        first = tuple(int(i) for i in np.argwhere(a < 0)[0])
        _fail(where, field, f"has {int((a < 0).sum())} negative entries (first {float(a[first]):.4g} at {first})")
    if a.size:
        sums = a.sum(axis=norm_dim, dtype=np.float64)
        dev = np.abs(sums - 1.0)
        if float(dev.max()) > tol:
            first = tuple(int(i) for i in np.unravel_index(int(dev.argmax()), dev.shape))
            _fail(where, field, f"is not normalized over dim {norm_dim}: a distribution sums to "
                                f"{float(sums[first]):.6g} (at {first}), expected 1 within {tol}")


def check_index(where: str, field: str, a: np.ndarray, length: int, high: int | None, low: int = 0) -> None:
    """An int [length] array with values in [low, high) (high None: values unchecked)."""
    if a.dtype.kind not in "iu":
        _fail(where, field, f"has dtype {a.dtype}, expected integers")
    if a.shape != (length,):
        _fail(where, field, f"has shape {a.shape}, expected ({length},) (one entry per node)")
    if high is not None and length and (a.min() < low or a.max() >= high):
        _fail(where, field, f"has values in [{int(a.min())}, {int(a.max())}], expected [{low}, {high})")


def check_parents(where: str, parents: np.ndarray) -> None:
    """A rooted tree: one -1, the rest node indices, every node reachable from the root."""
    if parents.dtype.kind not in "iu" or parents.ndim != 1 or len(parents) == 0:
        _fail(where, "parents", f"has dtype {parents.dtype} and shape {parents.shape}, expected int [V], V >= 1")
    v = len(parents)
    roots = np.flatnonzero(parents == -1)
    if len(roots) != 1:
        _fail(where, "parents", f"has {len(roots)} roots (entries -1), expected exactly one")
    others = np.delete(parents, roots)
    if len(others) and (others.min() < 0 or others.max() >= v):
        _fail(where, "parents", f"has values in [{int(others.min())}, {int(others.max())}], expected -1 or [0, {v})")
    children: list[list[int]] = [[] for _ in range(v)]
    for node, par in enumerate(parents.tolist()):
        if par >= 0:
            children[par].append(node)
    seen, stack = 1, [int(roots[0])]
    while stack:
        kids = children[stack.pop()]
        seen += len(kids)
        stack.extend(kids)
        if seen > v:
            break
    if seen != v:
        _fail(where, "parents", "does not form a tree (a cycle, or nodes unreachable from the root)")


def _int_attr(where: str, attrs, name: str, low: int) -> int:
    if name not in attrs:
        raise io.ArtifactError(f"{where}: missing attribute {name!r}")
    value = attrs[name]
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise io.ArtifactError(f"{where}: attribute {name!r} is {value!r}, expected an integer >= {low}")
    return int(value)


def check_tree(where: str, attrs, arrays: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> None:
    """Every field of one stored latent tree (see the module docstring); ``where`` names the
    file and group in errors."""
    K = _int_attr(where, attrs, "num_latents", 1)
    C = _int_attr(where, attrs, "num_cats", 0)
    G = _int_attr(where, attrs, "num_groups", 1)
    H = _int_attr(where, attrs, "num_heads", 1)
    check_parents(where, arrays["parents"])
    V = len(arrays["parents"])
    wanted = {"edges", "root"} | ({"leaves"} if C > 0 else set())
    for name in sorted(set(params) - wanted):
        _fail(where, f"params/{name}", f"is not expected (a tree with num_cats={C} has params {sorted(wanted)})")
    for name in sorted(wanted - set(params)):
        raise io.ArtifactError(f"{where}: missing field 'params/{name}'")
    edges = params["edges"]
    if edges.ndim != 4 or edges.shape[0] < 1:
        _fail(where, "params/edges", f"has shape {edges.shape}, expected [E_t >= 1, {G}, {K}, {K}]")
    check_table(where, "params/edges", edges, (edges.shape[0], G, K, K), NORM_DIMS["edges"])
    check_table(where, "params/root", params["root"], (G, H, K), NORM_DIMS["root"])
    check_index(where, "edge_index", arrays["edge_index"], V, edges.shape[0], low=-1)
    if C > 0:
        leaves = params["leaves"]
        if leaves.ndim != 4 or leaves.shape[0] < 1:
            _fail(where, "params/leaves", f"has shape {leaves.shape}, expected [L_t >= 1, {G}, {C}, {K}]")
        check_table(where, "params/leaves", leaves, (leaves.shape[0], G, C, K), NORM_DIMS["leaves"])
        check_index(where, "leaf_index", arrays["leaf_index"], V, leaves.shape[0])
    else:
        check_index(where, "leaf_index", arrays["leaf_index"], V, None)


def check_masks(where: str, masks: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> None:
    """Optional masks (lvd.pc.circuit.TreeCircuit.masks): bool, shaped like their tables, at
    least one allowed entry per distribution, and the table zero (within TOLERANCE) outside."""
    for name, m in sorted(masks.items()):
        field = f"masks/{name}"
        if name not in params:
            _fail(where, field, f"masks no table (tables: {sorted(params)})")
        a = params[name]
        if m.dtype != np.bool_:
            _fail(where, field, f"has dtype {m.dtype}, expected bool")
        if m.shape != a.shape:
            _fail(where, field, f"has shape {m.shape}, expected {a.shape} (that of params/{name})")
        dim = NORM_DIMS[name]
        if m.size and not m.any(axis=dim).all():
            first = tuple(int(i) for i in np.argwhere(~m.any(axis=dim))[0])
            _fail(where, field, f"allows no entry of a distribution of params/{name} (at {first})")
        outside = np.where(m, 0.0, a)
        if outside.size and float(outside.max()) > TOLERANCE:
            first = tuple(int(i) for i in np.unravel_index(int(outside.argmax()), outside.shape))
            _fail(where, field, f"masks out an entry of params/{name} that is {float(outside[first]):.4g} "
                                f"(at {first}), expected 0")
