"""Per-group trees in one batched circuit: a shared super-tree and a variable map per group.

The engine runs every parameter group of a TreeCircuit over one tree structure (one batched
matmul per level for all groups). LVD-PG gives every cluster a Chow-Liu tree of its own
(method.md section 3): G trees over the same P patch variables, of different shapes. They are
run together by embedding all of them in one *super-tree* S:

    every group's tree T_g maps into S root to root, parent-child edges onto parent-child
    edges (an injective map of T_g's nodes onto S's slots); the slots of S that T_g does not
    use are *padding* in group g.

``var_map`` int64 [G, V_S] says, for group g and slot v of S, which input variable that slot
observes (-1: padding). A padding slot observes nothing and has only padding below it, so its
upward value is the all-ones vector and the message it sends its parent is W 1 = 1 exactly
(rows of W sum to 1): padding changes no likelihood, no flow of a real slot and no sample of
a real variable, whatever its tables hold. Its tables are not parameters of the model
(``TreeCircuit.num_params`` leaves them out). The batched passes then see ordinary inputs
[B, G, V_S] with padding slots missing (``to_nodes``); samples come back through
``from_nodes``.

``super_tree`` builds S greedily: each tree, rooted where it adds the fewest slots, is embedded
from the root down, a node's children matched in decreasing subtree size to the slot's
existing children in decreasing size of what they already hold, a new slot made where none is
left. For the teacher's 16 clusters of Fashion-MNIST 4x4 patches in the 5,000-image study S
has 28 slots (16 per tree): the patch passes do about 1.75x the work of one shared tree
(measured: growing and fine-tuning took 1.4-1.8x the pooled tree's time), and every cluster
has its own tree.
"""

from __future__ import annotations

import numpy as np
import torch


def _children(parents: np.ndarray) -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in parents]
    for v, p in enumerate(parents.tolist()):
        if p >= 0:
            kids[p].append(v)
    return kids


def _sizes(kids: list[list[int]], root: int) -> np.ndarray:
    size = np.ones(len(kids), dtype=np.int64)
    order, stack = [], [root]
    while stack:
        v = stack.pop()
        order.append(v)
        stack.extend(kids[v])
    for v in reversed(order):
        for c in kids[v]:
            size[v] += size[c]
    return size


class _Super:
    """The super-tree under construction: parent, children and the largest subtree embedded
    at every slot."""

    def __init__(self):
        self.parent, self.kids, self.load = [-1], [[]], [0]

    def copy(self) -> "_Super":
        c = _Super()
        c.parent, c.kids, c.load = list(self.parent), [list(k) for k in self.kids], list(self.load)
        return c

    def embed(self, par: np.ndarray, root: int) -> np.ndarray:
        """Embed the tree ``par`` rooted at ``root`` (mutates); returns the slot of every node."""
        kids = _children(par)
        size = _sizes(kids, root)
        slot_of = np.full(len(par), -1, dtype=np.int64)
        stack = [(root, 0)]
        while stack:
            v, s = stack.pop()
            slot_of[v] = s
            self.load[s] = max(self.load[s], int(size[v]))
            mine = sorted(kids[v], key=lambda c: (-int(size[c]), c))
            free = sorted(self.kids[s], key=lambda t: (-self.load[t], t))
            for i, c in enumerate(mine):
                if i < len(free):
                    t = free[i]
                else:
                    t = len(self.parent)
                    self.parent.append(s)
                    self.kids.append([])
                    self.load.append(0)
                    self.kids[s].append(t)
                stack.append((c, t))
        return slot_of


def super_tree(trees, reroot: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(parents [V_S] of the super-tree, var_map int64 [G, V_S]) for G rooted trees given as
    parents arrays over the same P variables (root -1). Slot 0 is the root; group g's slot v
    observes variable var_map[g, v] (-1: padding). Deterministic (ties by node index).

    reroot: the trees are undirected models (a latent tree is the same family rooted at any
    node, up to where the root distribution sits), so each is embedded at the root, of its P
    candidates, that adds the fewest new slots (ties: its own root first, then the smallest
    node). Measured on Chow-Liu trees of 4x4 patches of 5,000 Fashion-MNIST images in
    MiniBatchKMeans clusters of the pixels: 16 clusters, 27 slots instead of 33 with the given
    (center) roots; 100 clusters, 58 instead of 78."""
    from lvd.pc.structures import reroot as rerooted   # (structures imports the circuit, which imports this)

    trees = [np.asarray(t, dtype=np.int64) for t in trees]
    if not trees:
        raise ValueError("super_tree: no trees")
    P = len(trees[0])
    if any(len(t) != P for t in trees):
        raise ValueError(f"super_tree: trees over different numbers of variables {sorted({len(t) for t in trees})}")
    sup = _Super()
    maps = []
    for g, par in enumerate(trees):
        roots = np.flatnonzero(par < 0)
        if len(roots) != 1:
            raise ValueError(f"super_tree: tree {g} has {len(roots)} roots, expected one")
        own = int(roots[0])
        if int(_sizes(_children(par), own)[own]) != P:
            raise ValueError(f"super_tree: tree {g} is not a tree over all {P} variables")
        best = (own, par)
        if reroot and g > 0:
            base = len(sup.parent)
            trial = sup.copy()
            trial.embed(par, own)
            fewest = len(trial.parent) - base
            for r in range(P):
                if fewest == 0:
                    break
                if r == own:
                    continue
                rp = rerooted(par, r)
                trial = sup.copy()
                trial.embed(rp, r)
                if len(trial.parent) - base < fewest:
                    fewest, best = len(trial.parent) - base, (r, rp)
        maps.append(sup.embed(best[1], best[0]))
    V = len(sup.parent)
    var_map = np.full((len(trees), V), -1, dtype=np.int64)
    for g, slot_of in enumerate(maps):
        var_map[g, slot_of] = np.arange(P)
    return np.asarray(sup.parent, dtype=np.int64), var_map


def problems(var_map: np.ndarray, parents: np.ndarray, edge_index: np.ndarray, leaf_index: np.ndarray,
             num_groups: int) -> str | None:
    """Why ``var_map`` does not fit the tree (None when it does): int [G, V]; each row maps its
    real slots one-to-one onto 0..P-1 (P = real slots of row 0) and -1 elsewhere; the root is
    real in every group; a real slot's parent is real (padding hangs below real slots only);
    every slot has its own edge row and leaf row (padding tables must not be shared)."""
    V = len(parents)
    if var_map.dtype.kind not in "iu" or var_map.shape != (num_groups, V):
        return f"has dtype {var_map.dtype} and shape {var_map.shape}, expected int [{num_groups}, {V}] (groups, nodes)"
    if num_groups == 0:
        return None
    real = var_map >= 0
    if (var_map < -1).any():
        return "has values below -1"
    root = int(np.flatnonzero(parents < 0)[0])
    if not real[:, root].all():
        return f"the root (node {root}) is padding in group {int(np.flatnonzero(~real[:, root])[0])}"
    P = int(real[0].sum())
    for g in range(num_groups):
        vals = np.sort(var_map[g][real[g]])
        if len(vals) != P or not np.array_equal(vals, np.arange(P)):
            return f"row {g} does not map its nodes one-to-one onto variables 0..{P - 1} (and -1 for padding)"
    child = np.flatnonzero(parents >= 0)
    bad = real[:, child] & ~real[:, parents[child]]
    if bad.any():
        g, i = (int(a[0]) for a in np.nonzero(bad))
        return f"node {int(child[i])} is real in group {g} but its parent {int(parents[child[i]])} is padding"
    e = edge_index[child]
    if (e < 0).any() or len(np.unique(e)) != len(e) or len(np.unique(leaf_index)) != V:
        return "needs an untied tree without copies (every node its own edge row and leaf row)"
    return None


def num_inputs(var_map: np.ndarray) -> int:
    return int((var_map[0] >= 0).sum())


class Slots:
    """The index tensors of one var_map on one device, made once (TreeCircuit.slots): ``flat``
    int64 [G * V] = g * P + var_map[g, v] (0 at padding), ``pad`` bool [G, V], ``slot`` int64
    [G, P] = the slot of variable p in group g."""

    def __init__(self, var_map: torch.Tensor, num_inputs: int):
        G, V = var_map.shape
        P = int(num_inputs)
        dev = var_map.device
        self.pad = var_map < 0
        self.flat = (var_map.clamp_min(0) + torch.arange(G, device=dev)[:, None] * P).reshape(-1)
        self.slot = torch.zeros(G, P, dtype=torch.long, device=dev)
        g, v = torch.nonzero(~self.pad, as_tuple=True)
        self.slot[g, var_map[g, v]] = v


def to_nodes(slots: Slots, x: torch.Tensor, missing: torch.Tensor | None):
    """Inputs over the variables, x [B, G, P] (missing like x or None), as inputs over the
    nodes: (x [B, G, V] with 0 at padding, missing [B, G, V]: padding and the missing
    variables' slots)."""
    B, G, P = x.shape
    flat, pad = slots.flat, slots.pad
    xn = x.reshape(B, G * P).index_select(1, flat).view(B, G, -1)
    mn = pad[None].expand(B, -1, -1)
    if missing is not None:
        mn = mn | missing.reshape(B, G * P).index_select(1, flat).view(B, G, -1)
    return xn.masked_fill(mn, 0), mn.contiguous()


def from_nodes(slots: Slots, xn: torch.Tensor) -> torch.Tensor:
    """Node values [B, G, V] back to the variables [B, G, P] (each variable's one slot)."""
    return torch.gather(xn, 2, slots.slot[None].expand(xn.shape[0], -1, -1))


def real_rows(var_map: np.ndarray, index: np.ndarray, rows: int) -> np.ndarray:
    """bool [rows, G]: table row r of group g belongs to a real (not padding) node; ``index``
    is the structure's edge_index or leaf_index (rows of nodes without one are skipped)."""
    G, V = var_map.shape
    used = np.zeros((rows, G), dtype=bool)
    ok = index >= 0                # (callers pass the root's edge entry as -1: it has no edge)
    used[index[ok]] = (var_map >= 0).T[ok]
    return used
