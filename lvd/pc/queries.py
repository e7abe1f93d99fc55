"""Sampling and MAP on latent trees.

Conditional sampling runs the upward pass with the evidence (observed values, missing ones
summed out), then samples top-down: the root from p(root | evidence) and each child from
W[k_parent, :] * u_child (its upward message), which is exactly p(child | parent, evidence).
Missing values are drawn from the leaf of the sampled state; observed values are kept.

MAP runs max-product upward in the log domain and backtracks. A node's max over its child's
states is taken for a block of parent states at a time, so that the candidate scores
[n, G, B, parent states, K] of a level stay within ``MAP_TEMP_BYTES`` (an LVD-PG top tree has
K = 1,600 states: one K x K block per example would be 10 MB each). Sampling needs no K x K
temporary per example: each child draws from its parent state's row of W times its message.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

from lvd.pc import varmap
from lvd.pc._cpu import index_add, index_select
from lvd.pc.tree import TINY, _prepare, edge_level, leaf_rows, upward

MAP_TEMP_BYTES = 64 << 20   # bound on MAP's candidate-score temporary per level (see above)


_CHECKED = threading.local()


@contextmanager
def values_checked():
    """Within this block ``check_values`` checks shapes only: the caller has checked the values
    already (EM checks its data once, not every batch: the check reads a min and a max back
    from the device)."""
    depth = getattr(_CHECKED, "depth", 0)
    _CHECKED.depth = depth + 1
    try:
        yield
    finally:
        _CHECKED.depth = depth


def check_values(x: torch.Tensor, missing, num_vars: int, num_cats: int) -> None:
    """Refuse x whose last dimension is not num_vars or whose observed values lie outside
    [0, num_cats) (the passes clamp values, so a bad value would otherwise pass silently).
    x [B, V] or [B, G, V]; missing bool like x, or [B, V] for a 3-d x, or None."""
    if x.shape[-1] != num_vars:
        raise ValueError(f"x has {x.shape[-1]} variables per example, expected num_vars = {num_vars}")
    if num_cats and x.numel() and not getattr(_CHECKED, "depth", 0):
        if missing is not None and missing.dim() < x.dim():
            missing = missing[:, None]
        obs = x if missing is None else x.masked_fill(missing, 0)
        lo, hi = (int(v) for v in torch.aminmax(obs))
        if lo < 0 or hi >= num_cats:
            raise ValueError(f"observed values must lie in [0, {num_cats}) (num_cats), found [{lo}, {hi}]")


def _inputs(tc, n, x, missing, evidence):
    """(x, missing, evidence) over the nodes [B, G, num_nodes(, K)] (a var_map circuit's
    inputs over its variables mapped onto its slots, lvd.pc.varmap)."""
    G, dev = tc.num_groups, tc.device
    if x is None:
        V = tc.num_nodes
        x = torch.zeros(n, G, V, dtype=torch.long, device=dev)
        missing = torch.ones(n, G, V, dtype=torch.bool, device=dev) if tc.num_cats else None
    else:
        x = torch.as_tensor(x, device=dev).long()
        if missing is not None:
            missing = torch.as_tensor(missing, device=dev).bool()
        check_values(x, missing, tc.num_vars, tc.num_cats)
        if x.dim() == 2:
            x = x[:, None].expand(-1, G, -1)
        if missing is not None and missing.dim() == 2:
            missing = missing[:, None].expand(-1, G, -1)
        if tc.var_map is not None:
            x, missing = varmap.to_nodes(tc.slots, x, missing)
    if evidence is not None:
        evidence = torch.as_tensor(evidence, device=dev)
        if evidence.dim() == 3:
            evidence = evidence[:, None].expand(-1, G, -1, -1)
    return x, missing, evidence


def _draw(probs: torch.Tensor, gen) -> torch.Tensor:
    """One categorical draw per row of probs [..., K] (unnormalized)."""
    shape = probs.shape[:-1]
    flat = probs.reshape(-1, probs.shape[-1]).clamp_min(0)
    flat = flat / flat.sum(-1, keepdim=True).clamp_min(TINY)
    return torch.multinomial(flat, 1, generator=gen).view(shape)


def tree_sample(tc, n, x=None, missing=None, evidence=None, heads=None, seed=None):
    """Returns (x [B, G, num_vars] int64, states [B, G, num_nodes] int64). heads: [B, G] root
    head per row."""
    x, missing, evidence = _inputs(tc, n, x, missing, evidence)
    B, G = x.shape[0], tc.num_groups
    st, dev = tc.structure, tc.device
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    p = tc.params
    leaves = p.get("leaves")
    xs, miss, ev = _prepare(st, x, missing, evidence, tc.num_cats or 1, G, dev)
    u, _, _ = upward(st, p["edges"], leaves, xs, miss, ev, B)
    idx = st.on(dev)
    root = p["root"]                                                    # [G, H, K]
    if heads is None:
        rootp = root[:, 0][:, None, :]                                  # [G, 1, K]
    else:
        h = torch.as_tensor(heads, device=dev).long().T                 # [G, B]
        rootp = torch.gather(root, 1, h[:, :, None].expand(-1, -1, root.shape[-1]))
    states = torch.empty(st.num_nodes, G, B, dtype=torch.long, device=dev)
    states[0] = _draw(rootp * u[0], gen)
    for d in range(1, st.depth):
        c0, c1 = st.levels[d]
        ne = st.num_edge_nodes[d]
        kp = index_select(states[st.levels[d - 1][0]:st.levels[d - 1][1]], idx["parent_local"][d])
        if ne:
            Wl = edge_level(st, idx, p["edges"], d)                     # [ne, G, K, K]
            rows = torch.gather(Wl, 2, kp[:ne, :, :, None].expand(-1, -1, -1, Wl.shape[-1]))  # [ne, G, B, K]
            states[c0:c0 + ne] = _draw(rows * u[c0:c0 + ne], gen)
        states[c0 + ne:c1] = kp[ne:]                                    # copies: the parent's state
    out = xs.clone() if xs is not None else None
    if leaves is not None and miss is not None:
        for a, b in st.levels:
            tab = index_select(leaves, idx["leaf_rows"][a:b])         # [n, G, C, K]
            cols = torch.gather(tab, 3, states[a:b][:, :, None, :].expand(-1, -1, tab.shape[2], -1))
            draw = _draw(cols.permute(0, 1, 3, 2), gen)                 # [n, G, B]
            out[a:b] = torch.where(miss[a:b], draw, out[a:b])
    inv = idx["position"]
    states = index_select(states, inv).permute(2, 1, 0)
    if out is not None:
        out = index_select(out, inv).permute(2, 1, 0)
        if tc.var_map is not None:
            out = varmap.from_nodes(tc.slots, out)
    return out, states


def tree_map(tc, x=None, missing=None, evidence=None, chunk: int = 64):
    """argmax over all latent states of p(states, x_observed): int64 [B, G, V]."""
    n = x.shape[0] if x is not None else evidence.shape[0]
    x, missing, evidence = _inputs(tc, n, x, missing, evidence)
    parts = []
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        parts.append(_map_chunk(tc, x[sl], None if missing is None else missing[sl],
                                None if evidence is None else evidence[sl]))
    return torch.cat(parts, 0)


def max_plus(lw, sc, arg=None):
    """best[n, g, b, k] = max_j lw[n, g, k, j] + sc[n, g, b, j] for lw [n, G, Kp, J] and sc
    [n, G, B, J] -> [n, G, B, Kp]; with ``arg`` (int64 like best) its argmax written there.
    Parent states k go in blocks whose candidates [n, G, B, block, J] fit ``MAP_TEMP_BYTES``
    (ties: the first j, as in one max over all of them)."""
    n, G, B, J = sc.shape
    Kp = lw.shape[2]
    block = max(1, MAP_TEMP_BYTES // (sc.element_size() * n * G * B * J))
    best = sc.new_empty(n, G, B, Kp)
    for k0 in range(0, Kp, block):
        k1 = min(Kp, k0 + block)
        cand = lw[:, :, None, k0:k1] + sc[:, :, :, None, :]                  # [n, G, B, k1 - k0, J]
        if arg is None:
            best[..., k0:k1] = cand.amax(-1)
        else:
            best[..., k0:k1], arg[..., k0:k1] = cand.max(-1)
    return best


def _map_chunk(tc, x, missing, evidence):
    st, dev, G, B = tc.structure, tc.device, tc.num_groups, x.shape[0]
    p = tc.params
    K = tc.num_latents
    idx = st.on(dev)
    logW = p["edges"].clamp_min(1e-38).log()
    logleaf = p["leaves"].clamp_min(1e-38).log() if "leaves" in p else None
    xs, miss, ev = _prepare(st, x, missing, evidence, tc.num_cats or 1, G, dev)
    score = torch.zeros(st.num_nodes, G, B, K, device=dev)
    arg = torch.zeros(st.num_nodes, G, B, K, dtype=torch.long, device=dev)
    for d in range(st.depth - 1, -1, -1):
        a, b = st.levels[d]
        if logleaf is not None:
            rows = leaf_rows(st, a, b, G, tc.num_cats, xs)                   # [n, G, B]
            leaf = index_select(logleaf.reshape(-1, K), rows.reshape(-1)).view(b - a, G, B, K)
            if miss is not None:
                leaf = leaf.masked_fill(miss[a:b, :, :, None], 0.0)
            score[a:b] += leaf
        if ev is not None:
            score[a:b] += ev[a:b]
        if d + 1 < st.depth:
            c0, c1 = st.levels[d + 1]
            ne, par = st.num_edge_nodes[d + 1], idx["parent_local"][d + 1]
            if ne:
                lw = edge_level(st, idx, logW, d + 1)                  # [ne, G, K, K]
                index_add(score[a:b], par[:ne], max_plus(lw, score[c0:c0 + ne], arg[c0:c0 + ne]))
            if ne < c1 - c0:                                           # copies: identity edge
                index_add(score[a:b], par[ne:], score[c0 + ne:c1])
    states = torch.empty(st.num_nodes, G, B, dtype=torch.long, device=dev)
    logroot = p["root"][:, 0].clamp_min(1e-38).log()                   # [G, K]
    states[0] = (score[0] + logroot[:, None, :]).argmax(-1)
    for d in range(1, st.depth):
        c0, c1 = st.levels[d]
        ne = st.num_edge_nodes[d]
        kp = index_select(states[st.levels[d - 1][0]:st.levels[d - 1][1]], idx["parent_local"][d])
        states[c0:c0 + ne] = torch.gather(arg[c0:c0 + ne], 3, kp[:ne, ..., None]).squeeze(-1)
        states[c0 + ne:c1] = kp[ne:]
    return index_select(states, idx["position"]).permute(2, 1, 0)
