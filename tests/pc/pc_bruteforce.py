"""Brute-force references for the PC engine tests (tiny models only; imported by the tests).

Nothing here calls engine code: joints are built directly from the parameter tables and the
parents array by numpy broadcasting, in float64, and every query (marginal, posterior, MAP,
expected counts) is a sum or an argmax over the enumerated joint.

Tree conventions (lvd.pc.tree docstring): node v has a latent z_v in [0, K) and, when the tree
has leaves, an observed x_v in [0, C).
    p(x, z) = root[z_root] * prod_{v != root} edges[edge_index[v]][z_parent(v), z_v]
                           * prod_v leaves[leaf_index[v]][x_v, z_v]
Joint arrays have axes (x_0, ..., x_{V-1}, z_0, ..., z_{V-1}) (no x axes without leaves).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from lvd.pc.circuit import TreeCircuit
from lvd.pc.structures import tree_structure


# ------------------------------------------------------------------ enumeration of one tree
def _place(table, axes, ndim):
    """Broadcastable view of ``table`` whose dimensions sit on ``axes`` of an ndim-array."""
    perm = np.argsort(axes)
    t = np.transpose(np.asarray(table, dtype=np.float64), perm)
    shape = [1] * ndim
    for ax, size in zip(sorted(axes), t.shape):
        shape[ax] = size
    return t.reshape(shape)


def tree_joint(parents, root, edges, leaves=None, edge_index=None, leaf_index=None, evidence=None):
    """p(x, z) (times exp(evidence[v, z_v]) per node) as an array [C]*V + [K]*V.

    root [K]; edges [E_t, K, K]; leaves [L_t, C, K] or None; evidence [V, K] log-potentials.
    """
    V = len(parents)
    edge_index = np.zeros(V, int) if edge_index is None else np.asarray(edge_index)
    leaf_index = np.arange(V) if leaf_index is None else np.asarray(leaf_index)
    nx = V if leaves is not None else 0
    nd = nx + V
    p = np.ones([1] * nd)
    for v in range(V):
        zv = nx + v
        if parents[v] < 0:
            p = p * _place(root, [zv], nd)
        else:
            p = p * _place(edges[edge_index[v]], [nx + parents[v], zv], nd)
        if leaves is not None:
            p = p * _place(leaves[leaf_index[v]], [v, zv], nd)
        if evidence is not None:
            p = p * _place(np.exp(np.asarray(evidence[v], dtype=np.float64)), [zv], nd)
    return p


def condition(joint, V, x, missing=None):
    """Array over z [K]*V of p(x_observed, z): missing x axes summed out, observed ones indexed."""
    missing = np.zeros(V, bool) if missing is None else np.asarray(missing, bool)
    out = joint
    for v in range(V - 1, -1, -1):           # from the last x axis so earlier indices stay valid
        out = out.sum(axis=v) if missing[v] else np.take(out, int(x[v]), axis=v)
    return out


def tables(tc: TreeCircuit, g: int = 0, h: int = 0) -> dict:
    """float64 numpy tables of group g, head h of a TreeCircuit, plus its structure arrays.

    A copy node (edge_index -1 at a non-root node: its latent is its parent's) gets an
    identity edge, appended as the last edge row (flows of that row are the reference's own).
    With a var_map: group g's own tree over the variables (parents in variable order), its
    edge_index / leaf_index the super-tree rows of the variables' slots (padding rows unused)."""
    p = {k: v.detach().cpu().double().numpy() for k, v in tc.params.items()}
    st = tc.structure
    if tc.var_map is not None:   # group g's own tree over the P variables (lvd.pc.varmap), its rows
        vm = tc.var_map[g].cpu().numpy()                       # pointing into the super-tree's tables
        slot = np.empty(tc.num_vars, dtype=np.int64)
        slot[vm[vm >= 0]] = np.flatnonzero(vm >= 0)
        sp = np.asarray(st.parents)[slot]
        return {"parents": np.where(sp < 0, -1, vm[np.maximum(sp, 0)]),
                "edge_index": np.asarray(st.edge_index)[slot], "leaf_index": np.asarray(st.leaf_index)[slot],
                "root": p["root"][g, h], "edges": p["edges"][:, g],
                "leaves": p["leaves"][:, g] if "leaves" in p else None}
    parents, edge_index, edges = np.asarray(st.parents), np.asarray(st.edge_index).copy(), p["edges"][:, g]
    copy = (edge_index < 0) & (parents >= 0)
    if copy.any():
        K = edges.shape[-1]
        edge_index[copy] = len(edges)
        edges = np.concatenate([edges, np.eye(K)[None]])
    return {"parents": parents, "edge_index": edge_index,
            "leaf_index": np.asarray(st.leaf_index), "root": p["root"][g, h],
            "edges": edges, "leaves": p["leaves"][:, g] if "leaves" in p else None}


def joint_of(tc: TreeCircuit, g=0, h=0, evidence=None):
    t = tables(tc, g, h)
    return tree_joint(t["parents"], t["root"], t["edges"], t["leaves"], t["edge_index"],
                      t["leaf_index"], evidence)


def all_configs(V, C):
    """int64 [C**V, V] of every configuration, in the row-major order of a [C]*V array."""
    return np.array(list(itertools.product(range(C), repeat=V)), dtype=np.int64).reshape(-1, V)


def posterior_counts(tp, x=None, missing=None, evidence=None):
    """(p(x_observed, evidence), expected counts of root [K], edges [E_t,K,K], leaves [L_t,C,K]).

    ``tp`` as returned by ``tables``. Counts are posterior expectations given the observed values
    (normalized); leaves count only observed variables (missing ones are summed out, so they
    have no leaf statistics in the EM objective).
    """
    parents = tp["parents"]
    V = len(parents)
    K = tp["root"].shape[-1]
    J = tree_joint(parents, tp["root"], tp["edges"], tp["leaves"], tp["edge_index"],
                   tp["leaf_index"], evidence)
    Jz = condition(J, V, x, missing) if tp["leaves"] is not None else J
    total = Jz.sum()
    post = Jz / total
    axes = set(range(V))
    root_v = int(np.flatnonzero(parents < 0)[0])
    root = post.sum(axis=tuple(axes - {root_v}))
    edges = np.zeros_like(tp["edges"])
    for v in range(V):
        if parents[v] >= 0:
            pv = int(parents[v])
            pair = post.sum(axis=tuple(axes - {pv, v}))             # axes in increasing order
            edges[tp["edge_index"][v]] += pair if pv < v else pair.T
    leaves = None
    if tp["leaves"] is not None:
        leaves = np.zeros_like(tp["leaves"])
        miss = np.zeros(V, bool) if missing is None else np.asarray(missing, bool)
        for v in range(V):
            if not miss[v]:
                leaves[tp["leaf_index"][v], int(x[v])] += post.sum(axis=tuple(axes - {v}))
    assert root.shape == (K,)
    return total, {"root": root, "edges": edges, "leaves": leaves}


def soft_joint(tp, leaf_evidence):
    """p(x, z) * prod_v exp(leaf_evidence[v, x_v]) over axes [C]*V + [K]*V (soft evidence on the
    observed variables, leaf_evidence [V, C] log-potentials)."""
    J = tree_joint(tp["parents"], tp["root"], tp["edges"], tp["leaves"], tp["edge_index"], tp["leaf_index"])
    V = len(tp["parents"])
    for v in range(V):
        J = J * _place(np.exp(np.asarray(leaf_evidence[v], dtype=np.float64)), [v], J.ndim)
    return J


def posterior_counts_soft(tp, leaf_evidence):
    """(sum of the soft joint, expected counts of root, edges and leaves under it): the EM
    statistics of a tree whose observed variables carry soft evidence [V, C]."""
    J = soft_joint(tp, leaf_evidence)
    parents = tp["parents"]
    V = len(parents)
    total = J.sum()
    post = J / total
    axes = set(range(2 * V))
    root_v = int(np.flatnonzero(parents < 0)[0])
    root = post.sum(axis=tuple(axes - {V + root_v}))
    edges = np.zeros_like(tp["edges"])
    leaves = np.zeros_like(tp["leaves"])
    for v in range(V):
        if parents[v] >= 0:
            pv = int(parents[v])
            pair = post.sum(axis=tuple(axes - {V + pv, V + v}))
            edges[tp["edge_index"][v]] += pair if pv < v else pair.T
        leaves[tp["leaf_index"][v]] += post.sum(axis=tuple(axes - {v, V + v}))     # [C, K]
    return total, {"root": root, "edges": edges, "leaves": leaves}


def top_posterior_of_z(m, L):
    """(sum_z p_top(z) prod_i exp(L[i, z_i]), p(Z = z | L) as an array [K]*m) for either top kind."""
    tt = tables(m.top)
    if m.top.num_cats:
        J = soft_joint(tt, L)
        V = m.num_positions
        Jz = J.sum(axis=tuple(range(V, 2 * V)))
    else:
        Jz = tree_joint(tt["parents"], tt["root"], tt["edges"], None, tt["edge_index"], None, L)
    return Jz.sum(), Jz / Jz.sum()


def tree_flows(tc: TreeCircuit, X, missing=None, evidence=None, z=None):
    """Brute-force EM flows of TreeCircuit.objective: objective = sum_g log sum_h p_gh(x).

    X [B, V] or [B, G, V]; missing like X; evidence [B, V, K]; z [B, V] (-1 = free).
    Returns (flows dict shaped like tc.params, lls [B]) in float64.
    """
    G, H, K = tc.num_groups, tc.num_heads, tc.num_latents
    X = np.asarray(X)
    B = X.shape[0]
    out = {k: np.zeros(tuple(v.shape)) for k, v in tc.params.items()}
    lls = np.zeros(B)
    for b in range(B):
        ev = None if evidence is None else np.asarray(evidence[b], dtype=np.float64).copy()
        if z is not None:
            hard = np.zeros((tc.num_vars, K))
            for v, k in enumerate(np.asarray(z[b])):
                if k >= 0:
                    hard[v] = -np.inf
                    hard[v, k] = 0.0
            ev = hard if ev is None else ev + hard
        for g in range(G):
            xb = X[b] if X.ndim == 2 else X[b, g]
            mb = None
            if missing is not None:
                mb = np.asarray(missing)[b] if np.asarray(missing).ndim == 2 else np.asarray(missing)[b, g]
            res = [posterior_counts(tables(tc, g, h), xb, mb, ev) for h in range(H)]
            tot = sum(r[0] for r in res)
            lls[b] += np.log(tot)
            for h, (t_h, c) in enumerate(res):
                w = t_h / tot
                out["root"][g, h] += w * c["root"]
                out["edges"][:, g] += w * c["edges"][:len(out["edges"])]     # without a copy's identity row
                if c["leaves"] is not None:
                    out["leaves"][:, g] += w * c["leaves"]
    return out, lls


def tree_lls_bf(tc: TreeCircuit, X, missing=None, evidence=None, g=0, h=0):
    """log p(x_observed [, evidence]) under head h of group g, by enumeration: [B]."""
    out = []
    for b in range(len(X)):
        ev = None if evidence is None else np.asarray(evidence[b], dtype=np.float64)
        J = joint_of(tc, g, h, ev)
        Jz = condition(J, tc.num_vars, X[b], None if missing is None else missing[b]) \
            if tc.num_cats else J
        out.append(np.log(Jz.sum()))
    return np.array(out)


# ------------------------------------------------------------------ small helpers
def tv(p, q):
    return 0.5 * float(np.abs(np.asarray(p, float) - np.asarray(q, float)).sum())


def frequencies(samples, C):
    """Empirical distribution of rows of int samples [n, V] over all C**V configurations."""
    samples = np.asarray(samples)
    V = samples.shape[1]
    code = np.ravel_multi_index(samples.T, [C] * V)
    return np.bincount(code, minlength=C ** V) / len(samples)


def tree_circuit(parents, K, C, G=1, H=1, seed=0, tied=False):
    st = tree_structure(np.asarray(parents), tied_edges=tied, tied_leaves=tied)
    return TreeCircuit(st, K, C, num_groups=G, num_heads=H, seed=seed)


def as_t(a, dtype=torch.long, device=None):
    return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)


def host(t) -> np.ndarray:
    """A result tensor (any device, sparse or dense) as a float64 array on the host."""
    t = t.detach()
    return (t.to_dense() if t.is_sparse else t).cpu().double().numpy()


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    """a equals b bit for bit on the CPU (the passes' order of operations is fixed there); on
    CUDA, where index_add / index_reduce use atomics in no fixed order, to float32 rounding."""
    if a.device.type == "cpu":
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def tree_ll_logdomain(parents, root, edges, leaves, edge_index, leaf_index, x):
    """log p(x) of one group/head by log-domain message passing (float64), for trees too big to
    enumerate: children before parents via a depth sort, logsumexp over child states."""
    parents = np.asarray(parents)
    V = len(parents)
    depth = np.zeros(V, int)
    for v in range(V):                       # depth by walking up (trees here are shallow)
        u = v
        while parents[u] >= 0:
            u = parents[u]
            depth[v] += 1
    with np.errstate(divide="ignore"):        # zeros of identity edges (copy nodes): log 0 = -inf
        logB = np.log(np.asarray(leaves, np.float64))
        logW = np.log(np.asarray(edges, np.float64))
    out = []
    for xb in np.asarray(x):
        score = np.stack([logB[leaf_index[v], xb[v]] for v in range(V)])      # [V, K]
        for v in np.argsort(-depth, kind="stable"):
            if parents[v] >= 0:
                msg = logW[edge_index[v]] + score[v][None, :]                  # [K_parent, K_child]
                mx = msg.max(1, keepdims=True)
                score[parents[v]] += (mx + np.log(np.exp(msg - mx).sum(1, keepdims=True)))[:, 0]
        r = int(np.flatnonzero(parents < 0)[0])
        tot = np.log(np.asarray(root, np.float64)) + score[r]
        out.append(tot.max() + np.log(np.exp(tot - tot.max()).sum()))
    return np.array(out)


def sharpen(circuit, seed=0, scale=2.5):
    """Replace every table by a peaked random one (softmax of scale * normal noise over the
    table's normalized dimension), so that evidence moves the distributions visibly."""
    gen = torch.Generator().manual_seed(seed)
    trees = [circuit.patch, circuit.top] if hasattr(circuit, "patch") else [circuit]
    for tc in trees:
        for k, v in tc.params.items():
            noise = torch.randn(v.shape, generator=gen, dtype=torch.float64) * scale
            tc.params[k] = noise.softmax(tc.norm_dims[k]).float().contiguous()
    return circuit
