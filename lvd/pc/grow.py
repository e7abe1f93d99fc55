"""Progressive growing of multi-head patch circuits (LVD-PG; method.md section 3) on the dense engine.

A *cluster* of the shared vocabulary is one parameter group g of a patch TreeCircuit (lvd.pc.tree:
edges [E_t, G, K, K], root [G, H, K], leaves [L_t, G, C, K]). Its H heads are root distributions
sharing the cluster's sub-circuits only; a patch state is (cluster, head), state s = g * H + h,
the "shared" layout of lvd.pc.lvdcircuit. Growing needs nodes to appear and edges to vanish, and
the engine's tables are dense, so sizes are allocated up front and the rest is masked:

    K = K_max hidden states per node: the initial ``num_latents`` plus one per growing round;
    H = heads_per_cluster heads per group, of which ``masks.heads[g]`` (the first ones) are active.

``Masks`` (bool, shaped like the tables) say which entries may be non-zero:
    edges [E_t, G, K, K]  an entry (parent state k -> child state j) is allowed when k and j are
                          *active* states of their nodes and the edge was not pruned;
    root  [G, H, K]       head h may reach root state k;
    active [V, G, K]      which states of node v (user node order) are in use.
An inactive state has zero weight in every incoming edge column and root entry, so it contributes
nothing to any head; its own leaf column and outgoing rows stay valid distributions that nothing
reaches. The forward and flow passes are the dense ones, unchanged: masked entries are exact
zeros in the tables (the passes clamp them to 1e-38 before the log, a relative 1e-38). EM applies
the masks after every update (lvd.pc.groups.em_groups(masks=...)): zeroed, then renormalized, so
neither the pseudocount nor the flows revive a pruned edge or an inactive state.

``Masks``, ``init_masks``, ``apply_masks`` and ``prune`` live in lvd.pc.masks (re-exported
here). The steps (each one function, brute-force tested in tests/pc/test_grow.py):
  * ``member_pass``: per-member log-likelihoods under every head [n_g, H] and the flows of each
    member through its own head only (optionally only the members of one head per group);
  * ``prune``: entries whose flow is below threshold[g] (= prune_threshold x n_g) are masked out;
    a distribution (a sum node: one row, or a head's root row) that would lose every entry keeps
    the one with the largest flow; only rows of active states and active heads are pruned;
  * ``reassign``: argmax over active heads of ll_h(x) + bonus * [h == current head];
  * ``worst_head``: the active head with the lowest mean own-head log-likelihood (among heads
    with at least two members, which can be split);
  * ``grow``: head h of group g gets a new head h'. For every node v the active state k*_v with
    the largest flow under head h is *copied* into a free slot s_v: the copy's leaf column and
    outgoing rows equal the original's, except that mass the original sends to a picked child
    state k*_u goes to that child's copy s_u instead. root[g, h'] = root[g, h] with the mass of
    k*_root moved to s_root. No original row and no other head points to a copy, so every other
    head's distribution is exactly unchanged, and before the noise p_{g,h'} = p_{g,h} (each copy
    computes the same function as its original, by induction from the leaves). Then the copies'
    leaf columns and outgoing rows get multiplicative noise exp(noise * N(0, 1)), renormalized
    (masked entries stay zero);
  * ``two_means``: a deterministic 2-means of the worst head's members' teacher embeddings (the
    smaller part moves to the new head);
  * ``progressive_growing``: the loop over rounds for every group of a circuit at once.

Decision (documented in docs/pc_stages.md): the engine shares one tree structure across groups, so
every cluster uses the same pooled Chow-Liu tree over the patch variables (the authors learn one
per cluster); each cluster still has its own tables, heads, masks and growth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from lvd.pc.groups import LiveGroups, em_groups
from lvd.pc.schedule import Schedule, derived_seed
from lvd.pc.masks import (Masks, _edge_nodes, _root, apply_masks, init_masks,  # noqa: F401 (re-exported)
                          prune, rebuild_edge_mask)

log = logging.getLogger("lvd.pc.grow")


# ------------------------------------------------------------------------- passes over members
def member_pass(tc, xs: list, heads: list, *, batch_size: int = 1024, flows: bool = True,
                only_heads=None) -> tuple[dict | None, list]:
    """Per-member lls and own-head flows of every group of ``tc`` in batches.

    xs[g] int64 [n_g, V], heads[g] int64 [n_g]. Returns (flows shaped like tc.params or None,
    lls: list of float64 numpy [n_g, H], each member under every head). Flows are those of
    sum over members of log p_{g, head(member)}(x): each member's flow runs through its own head;
    with ``only_heads`` [G] (-1 = none) only the members of head only_heads[g] count.
    """
    G, V, H = tc.num_groups, tc.num_vars, tc.num_heads
    if len(xs) != G or len(heads) != G:
        raise ValueError(f"member_pass: {len(xs)} member arrays for {G} groups")
    dev = tc.device
    n = [len(a) for a in xs]
    X = [torch.as_tensor(np.asarray(a), dtype=torch.long) for a in xs]
    Hd = [torch.as_tensor(np.asarray(h), dtype=torch.long) for h in heads]
    out_lls = [np.empty((k, H)) for k in n]
    acc = None
    view = LiveGroups(tc)          # the groups with members left in a batch (lvd.pc.groups)
    for t0 in range(0, max(n, default=0), batch_size):
        live = [g for g in range(G) if t0 < n[g]]
        cur, lidx = view.get(live)
        B = max(min(batch_size, n[g] - t0) for g in live)
        x = torch.zeros(B, len(live), V, dtype=torch.long)
        h = torch.zeros(B, len(live), dtype=torch.long)
        w = torch.zeros(B, len(live))
        for i, g in enumerate(live):
            k = min(batch_size, n[g] - t0)
            x[:k, i] = X[g][t0:t0 + k]
            h[:k, i] = Hd[g][t0:t0 + k]
            w[:k, i] = 1.0 if only_heads is None else (Hd[g][t0:t0 + k] == int(only_heads[g])).float()
        x, h, w = x.to(dev), h.to(dev), w.to(dev)
        logp = {k: v.detach().clamp_min(1e-38).log().requires_grad_(flows) for k, v in cur.params.items()}
        with torch.set_grad_enabled(flows):
            lls = cur.group_lls(logp, x)                                 # [B, live, H]
            if flows:
                own = (lls.gather(2, h[..., None])[..., 0] * w).sum()
                names = list(logp)
                grads = view.expand(dict(zip(names, torch.autograd.grad(own, [logp[k] for k in names]))), lidx)
                acc = grads if acc is None else {k: acc[k] + grads[k] for k in names}
        L = lls.detach().double().cpu().numpy()
        for i, g in enumerate(live):
            k = min(batch_size, n[g] - t0)
            out_lls[g][t0:t0 + k] = L[:k, i]
    if flows and acc is None:
        acc = {k: torch.zeros_like(v) for k, v in tc.params.items()}
    return (acc if flows else None), out_lls


def own_lls(lls: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """ll of every member under its own head: [n]."""
    return lls[np.arange(len(heads)), np.asarray(heads, dtype=np.int64)]


# ------------------------------------------------------------------- heads: assignment, growth
def reassign(lls: np.ndarray, current: np.ndarray, num_heads: int, bonus: float = 1.0) -> np.ndarray:
    """New head of every member: argmax over heads 0 .. num_heads - 1 of
    lls[:, h] + bonus * [h == current] (ties: the lowest head). lls [n, H], current [n]."""
    current = np.asarray(current, dtype=np.int64)
    score = np.array(lls[:, :num_heads], dtype=np.float64, copy=True)
    score[np.arange(len(current)), current] += bonus
    return score.argmax(1)


def head_means(lls: np.ndarray, heads: np.ndarray, num_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean own-head ll of each head [num_heads] (NaN without members), members per head)."""
    heads = np.asarray(heads, dtype=np.int64)
    own = own_lls(lls, heads)
    counts = np.bincount(heads, minlength=num_heads)[:num_heads]
    sums = np.bincount(heads, weights=own, minlength=num_heads)[:num_heads]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), counts


def worst_head(lls: np.ndarray, heads: np.ndarray, num_heads: int) -> int:
    """The head with the lowest mean own-head ll among heads with >= 2 members; -1 if none."""
    means, counts = head_means(lls, heads, num_heads)
    ok = counts >= 2
    if not ok.any():
        return -1
    return int(np.flatnonzero(ok)[np.argmin(means[ok])])


def _node_flows(tc, flow: dict, g: int, h: int) -> torch.Tensor:
    """Flow into every state of every node of group g under head h's members: [V, K]."""
    st = tc.structure
    v, _, rows = _edge_nodes(st)
    out = torch.zeros(tc.num_nodes, tc.num_latents, dtype=torch.float64)
    out[v] = flow["edges"][rows, g].double().sum(1).cpu()                     # column sums
    out[_root(st)] = flow["root"][g, h].double().cpu()
    return out


def grow(tc, masks: Masks, g: int, h: int, flow: dict, *, noise: float = 0.0,
         gen: torch.Generator | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """Give group g a new head h' grown from head h (see the module docstring); in place.

    flow: flows of head h's members (member_pass(only_heads=...)). Returns (h', picked states
    [V], their copies' slots [V]). Raises ValueError when group g has no free head or a node has
    no free state (allocate K_max = initial states + growing rounds)."""
    st = tc.structure
    H, K, V = tc.num_heads, tc.num_latents, tc.num_nodes
    new = int(masks.heads[g])
    if new >= H:
        raise ValueError(f"grow: group {g} already has all {H} heads active")
    if not 0 <= h < new:
        raise ValueError(f"grow: head {h} of group {g} is not active ({new} active heads)")
    act = masks.active[:, g].cpu()                                              # [V, K]
    nf = _node_flows(tc, flow, g, h).masked_fill(~act, -1.0)
    picked = nf.argmax(1).numpy()                                               # [V]
    free = ~act
    if not bool(free.any(1).all()):
        raise ValueError(f"grow: group {g} has a node without a free state (K = {K} allocated)")
    slot = free.float().argmax(1).numpy()                                       # first free state
    v_nodes, par, rows = _edge_nodes(st)
    P = tc.params
    with torch.no_grad():
        if "leaves" in P:
            li = torch.as_tensor(st.leaf_index)
            for v in range(V):
                P["leaves"][li[v], g, :, slot[v]] = P["leaves"][li[v], g, :, picked[v]]
        # rows of each copy: the original's row with the picked child's mass sent to the child's copy
        for u, p, e in zip(v_nodes, par, rows):
            kp, sp, ku, su = picked[p], slot[p], picked[u], slot[u]
            row = P["edges"][e, g, kp].clone()
            mrow = masks.edges[e, g, kp].clone()
            row[su], row[ku] = row[ku], 0.0
            mrow[su], mrow[ku] = mrow[ku], False
            P["edges"][e, g, sp] = row
            masks.edges[e, g, sp] = mrow
            # nothing but the parent's copy enters the child's copy
            masks.edges[e, g, :, su] = False
            masks.edges[e, g, sp, su] = mrow[su]
        r = _root(st)
        kr, sr = picked[r], slot[r]
        rrow, rmask = P["root"][g, h].clone(), masks.root[g, h].clone()
        rrow[sr], rrow[kr] = rrow[kr], 0.0
        rmask[sr], rmask[kr] = rmask[kr], False
        masks.root[g, :, sr] = False
        P["root"][g, new], masks.root[g, new] = rrow, rmask
        for v in range(V):
            masks.active[v, g, slot[v]] = True
        if noise > 0:
            _perturb(tc, masks, g, slot, noise, gen)
    masks.heads[g] = new + 1
    apply_masks(tc, masks)
    return new, picked, slot


def _perturb(tc, masks, g, slot, noise, gen):
    """Multiply the copies' leaf columns and outgoing rows by exp(noise * N(0, 1)); renormalize."""
    st = tc.structure
    P = tc.params

    def jitter(t):
        z = torch.randn(t.shape, generator=gen, dtype=torch.float32)
        return t * (noise * z).exp().to(t.device)

    if "leaves" in P:
        for v in range(tc.num_nodes):
            col = jitter(P["leaves"][st.leaf_index[v], g, :, slot[v]])
            P["leaves"][st.leaf_index[v], g, :, slot[v]] = col / col.sum()
    v_nodes, par, rows = _edge_nodes(st)
    for p, e in zip(par, rows):
        row = jitter(P["edges"][e, g, slot[p]]) * masks.edges[e, g, slot[p]]
        P["edges"][e, g, slot[p]] = row / row.sum().clamp_min(1e-38)


def two_means(emb: np.ndarray, iters: int = 20) -> np.ndarray:
    """Deterministic 2-means of rows emb [n, D]: bool [n], True for the smaller part.

    Start: the row farthest from the mean and the row farthest from that one; Lloyd steps.
    Rows all equal (or n < 2): the second half by index moves (the split is then arbitrary)."""
    x = np.asarray(emb, dtype=np.float64)
    n = len(x)
    if n < 2:
        return np.zeros(n, dtype=bool)
    a = x[np.argmax(((x - x.mean(0)) ** 2).sum(1))]
    b = x[np.argmax(((x - a) ** 2).sum(1))]
    side = np.zeros(n, dtype=bool)
    for _ in range(iters):
        new = ((x - b) ** 2).sum(1) < ((x - a) ** 2).sum(1)
        if not new.any() or new.all():
            break
        side = new
        a, b = x[~side].mean(0), x[side].mean(0)
    if not side.any() or side.all():
        side = np.arange(n) >= n // 2
    return side if side.sum() <= n - side.sum() else ~side


# ------------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class GrowSettings:
    """One growing run (the authors' defaults, method.md section 3)."""
    heads: int = 4                   # target active heads per group (<= tc.num_heads)
    em_epochs: int = 50              # mini-batch EM epochs per round
    full_batch_epochs: int = 0       # then full-batch EM epochs per round
    batch_size: int = 256
    step_size: float = 0.1
    step_size_end: float = 0.01
    pseudocount: float = 0.1
    prune_threshold: float = 1e-4    # an entry with flow < prune_threshold x n_g is pruned
    stay_bonus: float = 1.0          # nats added to a member's current head when re-assigning
    noise: float = 0.2               # std of the log-normal noise on the grown copies


@dataclass
class GrowResult:
    heads: list                      # final head of every member, per group: int64 [n_g]
    curve: np.ndarray                # [G, rounds] mean own-head ll after each round's EM + pruning
    pruned: np.ndarray               # [G, rounds] entries pruned per round
    grown: list = field(default_factory=list)   # (round, group, parent head, new head)


def progressive_growing(tc, masks: Masks, xs: list, heads: list, embs: list, settings: GrowSettings,
                        group_seeds, pass_batch: int = 1024) -> GrowResult:
    """Grow every group of ``tc`` (in place, masks too) to ``settings.heads`` heads.

    Rounds r = 0 .. R - 1 with R = settings.heads - min(masks.heads) + 1; each: masked EM of every
    group on its members through their own heads (em_groups, seeded per group and round); flows;
    prune; lls under every head; curve[g, r] = mean own-head ll. Then, while a group has fewer
    than settings.heads heads: re-assign its members (stay bonus), pick its worst head, grow it
    and move the 2-means part of that head's members (by embs[g], [n_g, D]) that is smaller to
    the new head. The last round re-assigns nothing (like the authors' loop). Everything is per
    group (its own seeds), so the result does not depend on which groups share ``tc``.
    """
    G = tc.num_groups
    if settings.heads > tc.num_heads:
        raise ValueError(f"progressive_growing: {settings.heads} heads wanted, {tc.num_heads} allocated")
    heads = [np.asarray(h, dtype=np.int64).copy() for h in heads]
    n = np.array([len(a) for a in xs])
    rounds = settings.heads - int(masks.heads.min()) + 1 if G else 0
    curve = np.full((G, rounds), np.nan)
    pruned = np.zeros((G, rounds), dtype=np.int64)
    result = GrowResult(heads, curve, pruned)
    seeds = [int(s) for s in group_seeds]
    sched = Schedule(epochs=settings.em_epochs, full_batch_epochs=settings.full_batch_epochs,
                     batch_size=settings.batch_size, step_size=settings.step_size,
                     step_size_end=settings.step_size_end, pseudocount=settings.pseudocount)
    for r in range(rounds):       # group g's schedule in round r: seed derived from (its seed, r)
        em_groups(tc, xs, heads, sched, group_seeds=[derived_seed(s, r) for s in seeds], masks=masks.as_dict())
        flow, _ = member_pass(tc, xs, heads, batch_size=pass_batch)
        pruned[:, r] = prune(tc, masks, flow, settings.prune_threshold * n)
        _, lls = member_pass(tc, xs, heads, batch_size=pass_batch, flows=False)
        for g in range(G):
            if n[g]:
                curve[g, r] = own_lls(lls[g], heads[g]).mean()
        growing = [g for g in range(G) if n[g] and masks.heads[g] < settings.heads]
        if not growing:
            continue
        worst = np.full(G, -1)
        for g in growing:
            heads[g] = reassign(lls[g], heads[g], int(masks.heads[g]), settings.stay_bonus)
            worst[g] = worst_head(lls[g], heads[g], int(masks.heads[g]))
        flow_h, _ = member_pass(tc, xs, heads, batch_size=pass_batch, only_heads=worst)
        for g in growing:
            if worst[g] < 0:
                log.info("group %d: no head with two members left to split; stays at %d heads", g,
                         masks.heads[g])
                continue
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seeds[g], r, 1]).generate_state(1)[0]))
            new, _, _ = grow(tc, masks, g, int(worst[g]), flow_h, noise=settings.noise, gen=gen)
            members = np.flatnonzero(heads[g] == worst[g])
            move = two_means(np.asarray(embs[g])[members])
            heads[g][members[move]] = new
            result.grown.append((r, g, int(worst[g]), new))
    return result
