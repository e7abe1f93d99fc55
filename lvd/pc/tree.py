"""Latent tree circuits: structure and the batched likelihood / flow passes.

Every circuit the engine builds (HCLT, HMM, the patch and top parts of an LVD circuit) is a
*latent tree*: a rooted tree of V nodes, each a categorical latent variable with K states
("sum node with K components" in circuit terms), each node optionally emitting one
categorical observed variable with C values. Compiled to a circuit this is a smooth,
decomposable PC: for node v and state k the product of the leaf theta_v[k, x_v] and, for every
child c, the sum node sum_j W_c[k, j] * (subcircuit of c in state j).

Shapes (the one tensor contract of the engine; G = parameter groups, H = heads):
    edges  [E_t, G, K, K]   W[e, g, k, j] = p(child = j | parent = k), rows sum to 1
    root   [G, H, K]        one root distribution per head, sums to 1 over K
    leaves [L_t, G, C, K]   theta[l, g, c, k] = p(x = c | state k), sums to 1 over C
    x      [B, G, V] int64  observed values (any value where missing)
    missing [B, G, V] bool or None
    evidence [B, G, V, K] float log-potentials added to each node's state scores, or None
    -> lls [B, G, H]        log p(x, evidence) under head h of group g

Tying: node v uses edge table row ``edge_index[v]`` and leaf table row ``leaf_index[v]``; an
HMM with parameters tied over time maps every node to row 0. Flows of tied rows add up.

Computation runs level by level (nodes of equal depth are contiguous in BFS order), one
batched matmul per level, in the linear domain with one log-scale per (node, example):
u[v] = max(U_v / max_k U_v, U_FLOOR), s[v] = log max_k U_v, where U_v is the product of the leaf
probability theta_v[x_v, k], exp(evidence - its max) and the children's messages
M_c = W_c u_c. Nothing is logged or exponentiated per state: one amax and one division per
(node, example) rescale the product (two messages at most are multiplied in between, so the
product cannot underflow float32 unless a node's factors disagree by ~1e-38 at every state).
When an edge table stores a level's rows contiguously (``tree_structure(edge_order="bfs")``,
what ``pc.hclt`` and ``pc.lvd_circuit`` build) the level's weights are a view, not a copy.

The differentiable log-likelihood with its hand-written backward (flows), the log-table
handles EM differentiates against and the sparse leaf flows live in lvd.pc.treell; this module
holds the structure, the upward pass (shared with sampling and MAP) and the input layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lvd.pc import _fused, _gemm, kernels
from lvd.pc._cpu import index_add, index_select

TINY = torch.finfo(torch.float32).tiny


@dataclass
class TreeStructure:
    """A rooted tree over ``num_nodes`` nodes, in the user's node order.

    parents[v] = parent of node v, -1 for the (single) root. BFS positions group the nodes
    by depth; ``order[i]`` is the node at BFS position i. ``edge_index[v] = -1`` at a non-root
    node makes v a *copy*: its latent is its parent's (an identity edge, no table row, no
    matmul), so its observed variable emits from the parent's hidden variable (PyJuice's HCLT
    hangs the Chow-Liu tree's leaves on their parents' latents this way).

    Within a level the nodes are ordered edge children first, then copies, each part
    rank-major: every parent's first child (children by node index), in the parents' order,
    then every second child, and so on.
    """

    parents: np.ndarray
    edge_index: np.ndarray  # [V] table row of the edge into v (root entry unused, 0); -1: a copy
    leaf_index: np.ndarray  # [V] table row of v's leaf distribution

    def __post_init__(self) -> None:
        parents = np.asarray(self.parents, dtype=np.int64)
        v = len(parents)
        roots = np.flatnonzero(parents < 0)
        if v == 0 or len(roots) != 1:
            raise ValueError(f"a tree needs exactly one root (parent -1), found {len(roots)}")
        self.edge_index = np.asarray(self.edge_index, dtype=np.int64)
        self.leaf_index = np.asarray(self.leaf_index, dtype=np.int64)
        copy = (self.edge_index < 0) & (parents >= 0)
        children: list[list[int]] = [[] for _ in range(v)]
        for node, par in enumerate(parents):
            if par >= 0:
                if par >= v:
                    raise ValueError(f"parent {par} of node {node} is out of range [0, {v})")
                children[par].append(node)
        for kids in children:                          # edge children first, then copies
            kids.sort(key=lambda n: (bool(copy[n]), n))
        levels_nodes = [[int(roots[0])]]
        seen = 1
        while seen <= v:
            prev = levels_nodes[-1]
            deg = max(len(children[p]) for p in prev)
            nxt = [children[p][r] for part in (False, True) for r in range(deg) for p in prev
                   if len(children[p]) > r and bool(copy[children[p][r]]) == part]
            if not nxt:
                break
            seen += len(nxt)
            levels_nodes.append(nxt)
        order = [n for lvl in levels_nodes for n in lvl]
        if len(order) != v or len(set(order)) != v:
            raise ValueError("parents do not form a tree (a cycle, or nodes unreachable from the root)")
        self.parents = parents
        self.copy = copy
        self.order = np.array(order, dtype=np.int64)
        self.position = np.empty(v, dtype=np.int64)
        self.position[self.order] = np.arange(v)
        sizes = [len(lvl) for lvl in levels_nodes]
        bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.levels = list(zip(bounds[:-1], bounds[1:]))  # BFS position ranges, root level first
        edge_rows = np.maximum(self.edge_index[self.order], 0)
        self.parent_local = [None]       # per level > 0: parent positions in the previous level
        self.num_edge_nodes = [0]        # per level: its nodes with an edge (the first ones)
        self.edge_slices = [None]        # per level > 0: (r0, r1) when its edge rows are r0..r1-1
        for d in range(1, len(self.levels)):
            (p0, _), (a, b) = self.levels[d - 1], self.levels[d]
            nodes = self.order[a:b]
            ne = int((~copy[nodes]).sum())
            self.num_edge_nodes.append(ne)
            self.parent_local.append(torch.from_numpy(self.position[parents[nodes]] - p0))
            rows = edge_rows[a:a + ne]
            contiguous = ne > 0 and bool(np.all(rows == np.arange(rows[0], rows[0] + ne)))
            self.edge_slices.append((int(rows[0]), int(rows[0]) + ne) if contiguous else None)
        used = edge_rows[1:][~copy[self.order[1:]]]
        # every edge row written exactly once by one level slice: flows need no zero-filled table
        self.num_edges = len(used)
        self.edge_rows_exact = (all(sl is not None for d, sl in enumerate(self.edge_slices) if d and self.num_edge_nodes[d])
                                and len(np.unique(used)) == len(used))
        self.edge_rows = torch.from_numpy(edge_rows)
        self.leaf_rows = torch.from_numpy(self.leaf_index[self.order])
        self._device_cache: dict = {}

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @property
    def depth(self) -> int:
        return len(self.levels)

    def on(self, device: torch.device) -> dict:
        """Index tensors on ``device``, made once per device and kept."""
        key = str(device)
        if key not in self._device_cache:
            self._device_cache[key] = {
                "parent_local": [None] + [p.to(device) for p in self.parent_local[1:]],
                "edge_rows": self.edge_rows.to(device),
                "leaf_rows": self.leaf_rows.to(device),
                "order": torch.from_numpy(self.order).to(device),
                "position": torch.from_numpy(self.position).to(device),
                "leaf_index": torch.from_numpy(self.leaf_index).to(device),
            }
        return self._device_cache[key]

    def group_index(self, device, G: int) -> torch.Tensor:
        """arange(G) on ``device``, made once per (device, G)."""
        cache = self.on(device)
        key = ("group_index", G)
        if key not in cache:
            cache[key] = torch.arange(G, device=device)
        return cache[key]

    def leaf_base(self, device, G: int, C: int) -> torch.Tensor:
        """[V, G] flat row (of a [L_t * G * C, K] leaf table) of value 0 for each BFS position
        and group, made once per (device, G, C)."""
        cache = self.on(device)
        key = ("leaf_base", G, C)
        if key not in cache:
            cache[key] = (cache["leaf_rows"][:, None] * G + self.group_index(device, G)[None, :]) * C
        return cache[key]


def _mm(a, b, out=None):
    """torch.matmul, with an inner dimension of 1 done as a broadcast product (num_latents = 1:
    batched matmuls of 1x1 matrices run far below the speed of one elementwise pass)."""
    if a.shape[-1] == 1 and b.shape[-2] == 1:
        return torch.mul(a, b, out=out) if out is not None else a * b
    return torch.matmul(a, b, out=out) if out is not None else torch.matmul(a, b)


def edge_level(st: TreeStructure, idx: dict, W: torch.Tensor, d: int) -> torch.Tensor:
    """Edge tables of level d's edge nodes (its first num_edge_nodes[d]) [n, G, K, K]: a view
    when their rows are contiguous."""
    sl = st.edge_slices[d]
    if sl is not None:
        return W[sl[0]:sl[1]]
    c0 = st.levels[d][0]
    return index_select(W, idx["edge_rows"][c0:c0 + st.num_edge_nodes[d]])


def leaf_rows(st, a, b, G, C, xs, repeat: int = 1):
    """Flat rows of the leaf table (layout [L_t, G, C]) read by BFS positions [a, b): [n, G, B].

    xs [V, G / repeat, B]: group g0's values serve groups g0 * repeat .. + repeat - 1."""
    n = b - a
    base = st.leaf_base(xs.device, G, C)[a:b]                                       # [n, G]
    if repeat == 1:
        return base[:, :, None] + xs[a:b]
    G0 = G // repeat
    return (base.view(n, G0, repeat, 1) + xs[a:b].view(n, G0, 1, -1)).view(n, G, -1)


def _repeat(miss, a, b, repeat: int):
    """miss [V, G0, B] -> rows [a, b) as [n, G0 * repeat, B]."""
    m = miss[a:b]
    if repeat == 1:
        return m
    n, G0, B = m.shape
    return m[:, :, None].expand(n, G0, repeat, B).reshape(n, G0 * repeat, B)


def upward(st: TreeStructure, W, leaves, xs, miss, ev, B, keep_messages=False, repeat=1):
    """Bottom-up pass. Returns (u [V,G,B,K] scaled, s [V,G,B] log-scales, M or None).

    s[0], the root's log-scale, is log p's offset: log p = log(root . u[0]) + s[0]. The other
    rows are intermediate (the torch path: a node's subtree total; the fused CPU path: the
    node's own share) and are not part of the contract.

    W: edges [E_t,G,K,K] and leaves [L_t,G,C,K] (or None): probability tables; xs: [V,G,B]
    values in BFS order (clamped to [0, C)); miss: [V,G,B] bool or None; ev: [V,G,B,K] or None.
    M[v] (if kept) = W_v u_v, the scaled message v sends its parent.
    """
    idx = st.on(W.device)
    V, G, K = st.num_nodes, W.shape[1], W.shape[-1]
    u = W.new_empty(V, G, B, K)
    s = W.new_empty(V, G, B)
    M = W.new_empty(V, G, B, K) if keep_messages else None
    flat = C = None
    if leaves is not None:
        C = leaves.shape[2]
        flat = leaves.reshape(-1, K)
    if _fused.usable(W, leaves, ev):
        def run(path):                        # a candidate for the measurement, on its own buffers
            bu, bs_, bm = torch.empty_like(u), torch.empty_like(s), None if M is None else torch.empty_like(M)
            if path == "torch":
                return lambda: _upward_torch(st, idx, W, flat, C, G, xs, miss, ev, bu, bs_, bm, repeat)
            return lambda: _upward_fused(st, idx, W, flat, C, xs, miss, ev, bu, bs_, bm, repeat)

        key = kernels.pass_key(st, G, B, K, C or 0, miss is not None, ev is not None, M is not None, repeat)
        path = kernels.pass_path("up", key, K, run)
        if path != "torch":
            with kernels.running(path):
                _upward_fused(st, idx, W, flat, C, xs, miss, ev, u, s, M, repeat)
            return u, s, M
    with kernels.running("torch"):
        _upward_torch(st, idx, W, flat, C, G, xs, miss, ev, u, s, M, repeat)
    return u, s, M


def _upward_torch(st, idx, W, flat, C, G, xs, miss, ev, u, s, M, repeat) -> None:
    """The reference upward pass into u, s and M (the contract above), with few device
    operations a level (what a GPU launches): a node's product of factors is summed in the log
    domain, so all its children enter with one scatter whatever their number, and nothing
    underflows in between.

    Every node's own factors first, for the whole tree at once: L = log max(leaf, TINY) (0 where
    the value is missing) + evidence. Then per level, bottom-up: the children's messages
    M = u W^T (one batched matmul), L[parent] += log M (one scatter; copies add their own
    normalized L: they send u itself), s = max_k L (floored at -1e30 with evidence: a row of
    impossible states has every factor -inf), u = max(exp(L - s), U_FLOOR). s holds each node's own log-scale; the root's
    offset, s[0], is their sum."""
    V, B, K = u.shape[0], u.shape[2], u.shape[3]
    L = W.new_empty(V, G, B, K)
    if flat is not None:                                     # [V, G, B] rows of the leaf table
        rows = leaf_rows(st, 0, V, G, C, xs, repeat).reshape(-1)
        if flat.shape[0] <= rows.shape[0]:                   # the log of the smaller of table and gather
            index_select(flat.clamp_min(TINY).log_(), rows, out=L.view(-1, K))
        else:
            index_select(flat, rows, out=L.view(-1, K)).clamp_min_(TINY).log_()
        if miss is not None:
            L.masked_fill_(_repeat(miss, 0, V, repeat)[..., None], 0.0)
        if ev is not None:
            L.add_(ev)
    elif ev is not None:
        L.copy_(ev)
    else:
        L.zero_()
    for d in range(st.depth - 1, -1, -1):
        a, b = st.levels[d]
        La = L[a:b]
        if d + 1 < st.depth:
            c0, c1 = st.levels[d + 1]
            ne = st.num_edge_nodes[d + 1]
            par = idx["parent_local"][d + 1]
            if ne:
                Wl = edge_level(st, idx, W, d + 1)                                # [ne, G, K, K]
                msg = _mm(u[c0:c0 + ne], Wl.transpose(-1, -2), out=None if M is None else M[c0:c0 + ne])
                index_add(La, par[:ne] if ne < c1 - c0 else par, msg.log())
            if ne < c1 - c0:                                 # copies send u: their normalized L
                index_add(La, par[ne:], L[c0 + ne:c1])
        sa = s[a:b]
        torch.amax(La, -1, out=sa)
        if ev is not None:                                   # (without evidence every L is finite)
            sa.clamp_min_(-1e30)
        torch.exp(La.sub_(sa[..., None]), out=u[a:b]).clamp_min_(kernels.U_FLOOR)
    s[0] = s.sum(0)


def max_edge_nodes(st: TreeStructure) -> int:
    """The most edge nodes of any level (the size of the passes' per-level scratch buffers)."""
    return max(st.num_edge_nodes)


def _upward_fused(st, idx, W, flat, C, xs, miss, ev, u, s, M, repeat) -> None:
    """upward with each level's elementwise work in one fused CPU kernel (lvd.pc._fused.up_level)."""
    G, B, K = u.shape[1], u.shape[2], u.shape[3]
    children = _fused.level_children(st)
    scratch = None if M is not None else W.new_empty(max(max_edge_nodes(st), 1), G, B, K)
    mx = W.new_empty(u.shape[:3])
    base = None if flat is None else st.leaf_base(W.device, G, C)
    Wt = _gemm.transposed(W)              # the compiled kernels' operand for M = u W^T, or None
    # M = u W^T inside up_level (one parallel region a level instead of two) up to
    # kernels.FUSE_UP_MAX_K, on levels of at least kernels.FUSE_MIN_PAIRS parent pairs
    fuse = Wt is not None and K <= kernels.FUSE_UP_MAX_K
    for d in range(st.depth - 1, -1, -1):
        a, b = st.levels[d]
        msg = uk = kids = products = None
        ne = 0
        if d + 1 < st.depth:
            c0, c1 = st.levels[d + 1]
            ne = st.num_edge_nodes[d + 1]
            if ne:
                buf, off = (M, c0) if M is not None else (scratch, 0)
                msg = buf[off:off + ne]
                if fuse and (b - a) * G >= kernels.FUSE_MIN_PAIRS:      # M inside up_level
                    wt = edge_level(st, idx, Wt, d + 1)
                    products = (_gemm.address("nn"), wt if wt.is_contiguous() else wt.contiguous())
                elif Wt is None or _gemm.mm(u[c0:c0 + ne], edge_level(st, idx, Wt, d + 1), msg) is None:
                    _mm(u[c0:c0 + ne], edge_level(st, idx, W, d + 1).transpose(-1, -2), out=msg)
            uk, kids = u[c0:c1], children[d]
        _fused.up_level(u[a:b], s[a:b], mx[a:b], msg, uk, kids, ne, kernels.RESCALE_EVERY, flat,
                        None if base is None else base[a:b], None if xs is None else xs[a:b], repeat,
                        None if miss is None else miss[a:b], None if ev is None else ev[a:b],
                        0 if flat is None or C > kernels.LEAF_STREAM * B else C, products=products)
    s.add_(mx.log_())                     # every node's own log-scale, then the root's: their sum
    s[0] = s.sum(0)


@dataclass
class NodeMajor:
    """Observed values already in the passes' layout: xs int64 [V, G, B] in BFS node order,
    clamped to [0, C); miss bool [V, G, B] or None. Lets a caller that builds many groups from
    one small tensor (the LVD patch circuits) skip the reordering copies of [B, G, V] inputs;
    the caller has checked the values."""

    xs: torch.Tensor
    miss: torch.Tensor | None = None
    repeat: int = 1   # xs [V, G / repeat, B]: group g0's values serve groups g0 * repeat .. + repeat - 1

    @property
    def batch_size(self) -> int:
        return self.xs.shape[2]


def node_major(st: TreeStructure, x, missing, C: int, repeat: int = 1) -> NodeMajor:
    """NodeMajor of x [B, G0, V] (missing like x or None) serving G0 * repeat groups: group g0's
    values are read by groups g0 * repeat .. g0 * repeat + repeat - 1 (never copied per group)."""
    order = st.on(x.device)["order"]

    def lay(a):
        return a.permute(2, 1, 0).index_select(0, order)                # [V, G0, B]

    return NodeMajor(lay(x).clamp_(0, C - 1), None if missing is None else lay(missing), repeat)


def _prepare(st: TreeStructure, x, missing, evidence, C, G, device):
    """Move batch inputs into BFS node-major layout."""
    idx = st.on(device)
    order = idx["order"]
    xs = miss = ev = None
    if isinstance(x, NodeMajor):
        xs, miss = x.xs, x.miss
        if x.repeat * xs.shape[1] != G:
            raise ValueError(f"NodeMajor input serves {x.repeat * xs.shape[1]} groups, the circuit has {G}")
    elif x is not None:   # (a gather of whole [G, B] slices: half the time of one along the last dim)
        xs = x.permute(2, 1, 0).index_select(0, order).clamp_(0, C - 1)    # [V, G, B]
        if missing is not None:
            miss = missing.permute(2, 1, 0).index_select(0, order)
    if evidence is not None:
        ev = evidence.permute(2, 1, 0, 3).index_select(0, order)           # [V, G, B, K]
    return xs, miss, ev
