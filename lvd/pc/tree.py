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
u[v] = exp(score - s[v]) with max_k u[v] = 1. Products of child messages are sums of logs.
The backward pass is written by hand (``TreeLL``): given d(loss)/d(lls) it returns flows
(expected counts) as the gradients of the *log*-parameter tables, and the posterior state
weights as the gradient of the evidence. So ``torch.autograd`` composes trees (the LVD circuit
feeds patch log-likelihoods into the top tree as evidence) and EM reads flows off ``.grad``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lvd.pc._cpu import index_add, index_select, tune_malloc

tune_malloc()
TINY = torch.finfo(torch.float32).tiny


@dataclass
class TreeStructure:
    """A rooted tree over ``num_nodes`` nodes, in the user's node order.

    parents[v] = parent of node v, -1 for the (single) root. BFS positions group the nodes
    by depth; ``order[i]`` is the node at BFS position i.
    """

    parents: np.ndarray
    edge_index: np.ndarray  # [V] table row of the edge into v (root entry unused, 0)
    leaf_index: np.ndarray  # [V] table row of v's leaf distribution

    def __post_init__(self) -> None:
        parents = np.asarray(self.parents, dtype=np.int64)
        v = len(parents)
        roots = np.flatnonzero(parents < 0)
        if v == 0 or len(roots) != 1:
            raise ValueError(f"a tree needs exactly one root (parent -1), found {len(roots)}")
        children: list[list[int]] = [[] for _ in range(v)]
        for node, par in enumerate(parents):
            if par >= 0:
                if par >= v:
                    raise ValueError(f"parent {par} of node {node} is out of range [0, {v})")
                children[par].append(node)
        order, depth_of = [int(roots[0])], {int(roots[0]): 0}
        head = 0
        while head < len(order):
            node = order[head]
            head += 1
            for c in children[node]:
                depth_of[c] = depth_of[node] + 1
                order.append(c)
        if len(order) != v:
            raise ValueError("parents do not form a tree (a cycle, or nodes unreachable from the root)")
        depths = np.array([depth_of[n] for n in order])
        levels = [int(i) for i in np.flatnonzero(np.diff(depths))]
        self.parents = parents
        self.edge_index = np.asarray(self.edge_index, dtype=np.int64)
        self.leaf_index = np.asarray(self.leaf_index, dtype=np.int64)
        self.order = np.array(order, dtype=np.int64)
        self.position = np.empty(v, dtype=np.int64)
        self.position[self.order] = np.arange(v)
        bounds = [0] + [i + 1 for i in levels] + [v]
        self.levels = list(zip(bounds[:-1], bounds[1:]))  # BFS position ranges, root level first
        # for each level > 0: parent positions relative to the previous level's start
        self.parent_local = [None] + [
            torch.from_numpy(self.position[parents[self.order[a:b]]] - self.levels[d - 1][0])
            for d, (a, b) in enumerate(self.levels) if d > 0]
        self.edge_rows = torch.from_numpy(self.edge_index[self.order])
        self.leaf_rows = torch.from_numpy(self.leaf_index[self.order])
        self._device_cache: dict = {}

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @property
    def depth(self) -> int:
        return len(self.levels)

    def on(self, device: torch.device) -> dict:
        """Index tensors on ``device`` (cached)."""
        key = str(device)
        if key not in self._device_cache:
            self._device_cache[key] = {
                "parent_local": [None] + [p.to(device) for p in self.parent_local[1:]],
                "edge_rows": self.edge_rows.to(device),
                "leaf_rows": self.leaf_rows.to(device),
                "order": torch.from_numpy(self.order).to(device),
            }
        return self._device_cache[key]


def _mm(a, b, out=None):
    """torch.matmul, with an inner dimension of 1 done as a broadcast product (num_latents = 1:
    batched matmuls of 1x1 matrices run far below the speed of one elementwise pass)."""
    if a.shape[-1] == 1 and b.shape[-2] == 1:
        return torch.mul(a, b, out=out) if out is not None else a * b
    return torch.matmul(a, b, out=out) if out is not None else torch.matmul(a, b)


def leaf_rows(idx, a, b, G, C, xs, repeat: int = 1):
    """Flat rows of the leaf table (layout [L_t, G, C]) read by BFS positions [a, b): [n, G, B].

    xs [V, G / repeat, B]: group g0's values serve groups g0 * repeat .. + repeat - 1."""
    n = b - a
    base = (idx["leaf_rows"][a:b, None] * G + torch.arange(G, device=xs.device)[None, :]) * C   # [n, G]
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


def _leaf_scores(idx, a, b, logleaf_flat, C, G, B, K, xs, miss, repeat=1):
    """Gathered leaf log-probabilities of BFS positions [a, b): [n, G, B, K]."""
    n = b - a
    rows = leaf_rows(idx, a, b, G, C, xs, repeat)                                     # [n, G, B]
    out = index_select(logleaf_flat, rows.reshape(-1)).view(n, G, B, K)
    if miss is not None:
        out.masked_fill_(_repeat(miss, a, b, repeat)[:, :, :, None], 0.0)
    return out


def upward(st: TreeStructure, W, logleaf, xs, miss, ev, B, keep_messages=False, repeat=1):
    """Bottom-up pass. Returns (u [V,G,B,K] scaled, s [V,G,B] log-scales, M or None).

    W: edges [E_t,G,K,K] (probabilities); logleaf: [L_t,G,C,K] or None; xs: [V,G,B] values
    in BFS order (clamped to [0, C)); miss: [V,G,B] bool or None; ev: [V,G,B,K] or None.
    M[v] (if kept) = W_v u_v, the scaled message v sends its parent.
    """
    idx = st.on(W.device)
    V, G, K = st.num_nodes, W.shape[1], W.shape[-1]
    u = W.new_empty(V, G, B, K)
    s = W.new_empty(V, G, B)
    M = W.new_empty(V, G, B, K) if keep_messages else None
    flat = C = None
    if logleaf is not None:
        C = logleaf.shape[2]
        flat = logleaf.reshape(-1, K)
    for d in range(st.depth - 1, -1, -1):
        a, b = st.levels[d]
        if flat is not None:
            score = _leaf_scores(idx, a, b, flat, C, G, B, K, xs, miss, repeat)
        else:
            score = W.new_zeros(b - a, G, B, K)
        if ev is not None:
            score += ev[a:b]
        if d + 1 < st.depth:
            c0, c1 = st.levels[d + 1]
            Wl = index_select(W, idx["edge_rows"][c0:c1])          # [nc, G, K, K]
            if M is not None:                                        # [nc, G, B, K]
                m = _mm(u[c0:c1], Wl.transpose(-1, -2), out=M[c0:c1])
                logm = m.clamp_min(TINY)
            else:
                logm = _mm(u[c0:c1], Wl.transpose(-1, -2)).clamp_min_(TINY)
            logm = logm.log_().add_(s[c0:c1, :, :, None])
            index_add(score, idx["parent_local"][d + 1], logm)
        s[a:b] = score.amax(-1)
        torch.sub(score, s[a:b, :, :, None], out=score)
        u[a:b] = score.exp_()
    return u, s, M


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
        return a.index_select(2, order).permute(2, 1, 0).contiguous()   # [V, G0, B]

    return NodeMajor(lay(x.clamp(0, C - 1)), None if missing is None else lay(missing), repeat)


def _prepare(st: TreeStructure, x, missing, evidence, C, G, device):
    """Move batch inputs into BFS node-major layout."""
    idx = st.on(device)
    order = idx["order"]
    xs = miss = ev = None
    if isinstance(x, NodeMajor):
        xs, miss = x.xs, x.miss
        if x.repeat * xs.shape[1] != G:
            raise ValueError(f"NodeMajor input serves {x.repeat * xs.shape[1]} groups, the circuit has {G}")
    elif x is not None:
        xs = x.index_select(2, order).permute(2, 1, 0)                 # [V, G, B]
        xs = xs.clamp(0, C - 1).contiguous()
        if missing is not None:
            miss = missing.index_select(2, order).permute(2, 1, 0).contiguous()
    if evidence is not None:
        ev = evidence.index_select(2, order).permute(2, 1, 0, 3).contiguous()  # [V, G, B, K]
    return xs, miss, ev


class TreeLL(torch.autograd.Function):
    """lls = TreeLL.apply(st, log_edges, log_root, log_leaves, x, missing, evidence) -> [B, G, H]."""

    @staticmethod
    def forward(ctx, st, log_edges, log_root, log_leaves, x, missing, evidence):
        B = (x.batch_size if isinstance(x, NodeMajor) else x.shape[0]) if x is not None else evidence.shape[0]
        G = log_edges.shape[1]
        C = log_leaves.shape[2] if log_leaves is not None else None
        W = log_edges.exp()
        root = log_root.exp()
        xs, miss, ev = _prepare(st, x, missing, evidence, C, G, W.device)
        repeat = x.repeat if isinstance(x, NodeMajor) else 1
        u, s, M = upward(st, W, log_leaves, xs, miss, ev, B, keep_messages=True, repeat=repeat)
        q = _mm(u[0], root.transpose(-1, -2))                            # [G, B, H]
        lls = q.clamp_min(TINY).log() + s[0, :, :, None]
        ctx.st = st
        ctx.save_for_backward(W, root, u, M, q, xs, miss)
        ctx.shapes = (B, G, C, None if log_leaves is None else log_leaves.shape[0], evidence is not None,
                      repeat)
        return lls.permute(1, 0, 2)

    @staticmethod
    def backward(ctx, grad):
        st = ctx.st
        W, root, u, M, q, xs, miss = ctx.saved_tensors
        B, G, C, L_t, has_ev, repeat = ctx.shapes
        K = W.shape[-1]
        idx = st.on(W.device)
        rq = grad.permute(1, 0, 2) / q.clamp_min(TINY)                    # [G, B, H]
        g_root = root * torch.matmul(rq.transpose(-1, -2), u[0])         # [G, H, K]
        g_edges = torch.zeros_like(W)
        g_leaves = None
        if L_t is not None and ctx.needs_input_grad[3]:
            g_leaves = W.new_zeros(L_t * G * C + 1, K)                   # last row: missing sink
        g_ev = W.new_empty(st.num_nodes, G, B, K) if has_ev and ctx.needs_input_grad[6] else None
        a_lvl = u[0:1] * torch.matmul(rq, root)[None]                    # [1, G, B, K]
        for d in range(st.depth):
            a, b = st.levels[d]
            if g_leaves is not None:
                rows = leaf_rows(idx, a, b, G, C, xs, repeat)
                if miss is not None:
                    rows = rows.masked_fill(_repeat(miss, a, b, repeat), L_t * G * C)
                index_add(g_leaves, rows.reshape(-1), a_lvl.reshape(-1, K))
            if g_ev is not None:
                g_ev[a:b] = a_lvl
            if d + 1 < st.depth:
                c0, c1 = st.levels[d + 1]
                rows_e = idx["edge_rows"][c0:c1]
                Wl = index_select(W, rows_e)                           # [nc, G, K, K]
                r = M[c0:c1]
                torch.div(index_select(a_lvl, idx["parent_local"][d + 1]), r.clamp_min_(TINY), out=r)
                uc = u[c0:c1]
                index_add(g_edges, rows_e, Wl * torch.matmul(r.transpose(-1, -2), uc))
                a_lvl = uc * _mm(r, Wl)
        if g_leaves is not None:
            g_leaves = g_leaves[:-1].view(-1, G, C, K)
        if g_ev is not None:
            inv = torch.from_numpy(st.position).to(W.device)
            g_ev = index_select(g_ev, inv).permute(2, 1, 0, 3)         # [B, G, V, K]
        return None, g_edges, g_root, g_leaves, None, None, g_ev


def tree_lls(st, log_edges, log_root, log_leaves, x=None, missing=None, evidence=None):
    """Differentiable log-likelihoods [B, G, H]; see the module docstring for shapes."""
    return TreeLL.apply(st, log_edges, log_root, log_leaves, x, missing, evidence)
