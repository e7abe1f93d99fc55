"""EM of the independent parameter groups of one tree, each on its own examples, in one batch.

With the latents observed, every parameter group of the LVD patch circuit (one per
(position, state) or per cluster of states) is an EM problem of its own: its members are the
patches assigned to its states, and each member's flow runs through its own head only
(method.md section 2 step 6). ``em_groups`` trains G such groups together instead of looping
over them: each step stacks one mini-batch of every group into x [B, G, V] (rows beyond a
group's batch are padding with weight 0) and runs one pass of the tree for all groups.

Every group follows exactly the schedule (lvd.pc.schedule.Schedule) it would follow alone,
seeded by its own seed, so the result does not depend on which other groups share its batch
(up to floating-point summation order):
    group g with n_g members takes nb_g = ceil(n_g / batch_size) steps per epoch; epoch e of a
    mini-batch phase splits a permutation of its members (drawn from a generator seeded with
    the epoch's seed of its schedule, ``schedule.epoch_seed(e)`` with ``seed = group_seeds[g]``:
    the rule of every EM loop) into nb_g near-equal chunks; its step t = e * nb_g + j has the
    step size ``schedule.step_size_at(t, nb_g)`` (annealed over its phase's epochs * nb_g
    steps); in a batch step where it has no chunk left its step size is 0 (its tables do not
    move). An epoch of a full-batch phase splits the members in order and updates every group
    once with the phase's step size (1: exact EM per group).
Groups without members keep their tables. Groups are processed in blocks that bound the
working memory (``max_bytes``); blocks are independent, so blocking changes nothing either.

Groups of very different sizes (LVD-PG's clusters: a background cluster can hold half of all
patches) leave most groups without a chunk in the later steps of an epoch; those steps run the
tree over the groups that still have one only (``LiveGroups``), instead of over every group
with zero weights. The work per epoch is then proportional to the members, not to (the largest
group) x G, and every number is the same (the groups are independent).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from lvd.pc.em import _to_device, check_data, masked_, target
from lvd.pc.queries import values_checked
from lvd.pc.schedule import Schedule
from lvd.pc.treell import log_handles

log = logging.getLogger("lvd.pc.groups")


def _group_dim(name: str) -> int:
    return 0 if name == "root" else 1           # root [G, H, K]; edges, leaves [.., G, ..]


class LiveGroups:
    """Circuits over the groups of ``tc`` that still have rows in a step (``live``: indices into
    tc's groups): tc itself when all do, else a circuit of those groups (made once per set of
    groups, its tables copied from tc's current ones at every ``get``). ``expand`` puts the
    flows of such a circuit back into tables shaped like tc's (zero for the other groups)."""

    def __init__(self, tc):
        self.tc = tc
        self.cache: dict[tuple, object] = {}

    def get(self, live: list[int]):
        """(circuit, live as a long tensor on tc's device)."""
        tc = self.tc
        idx = torch.as_tensor(live, dtype=torch.long, device=tc.device)
        if len(live) == tc.num_groups:
            return tc, idx
        key = tuple(live)
        if key not in self.cache:
            self.cache = {key: tc.select_groups(live)}        # sets only shrink within an epoch
            return self.cache[key], idx
        sub = self.cache[key]
        with torch.no_grad():
            for k, t in sub.params.items():
                t.copy_(tc.params[k].index_select(_group_dim(k), idx))
        return sub, idx

    def expand(self, flows: dict, idx: torch.Tensor) -> dict:
        """{name: flows of the live groups} -> {name: tables shaped like tc's}."""
        if len(idx) == self.tc.num_groups:
            return flows
        return {k: torch.zeros_like(self.tc.params[k]).index_copy_(_group_dim(k), idx, f) for k, f in flows.items()}


def _block_size(tc, batch_size: int, max_bytes: float) -> int:
    per_group = batch_size * tc.num_nodes * tc.num_latents * 4 * 8    # about 8 float buffers
    table = sum(t[0:1].numel() if _group_dim(k) == 0 else t[:, 0:1].numel()
                for k, t in tc.params.items()) * 4 * 4               # tables, logs, grads, targets
    return max(1, int(max_bytes // (per_group + table)))


def em_groups(tc, xs: list, heads: list, schedule: Schedule | None = None, *, group_seeds=None,
              max_bytes: float = 512 * 2**20, progress_seconds: float = 30.0, masks: dict | None = None,
              **schedule_fields) -> np.ndarray:
    """Train the G groups of TreeCircuit ``tc`` in place; returns history [G, total epochs].

    xs[g]: int64 [n_g, V] the members of group g; heads[g]: int64 [n_g] each member's head.
    schedule (or the keywords of ``Schedule(...)``: epochs=, batch_size=, step_size=, ...): its
    phases in order, mini-batch or full-batch (every group's flows accumulated over its
    members, one update per epoch: with step 1, exact EM per group); its ``seed`` is not used:
    group g runs it with seed ``group_seeds[g]`` (default g), epoch e shuffling with
    ``derived_seed(group_seeds[g], e)``. history[g, e] = mean log p_{g, head}(x) of group g's
    members during epoch e (NaN when n_g = 0; a full-batch epoch's is at its start).

    masks: {table name: bool tensor shaped like that table} of the entries allowed to be
    non-zero (lvd.pc.grow: pruned edges, inactive states); after every update the other
    entries are set to 0 and each distribution renormalized, so neither the pseudocount nor
    the flows revive them. None (the default): every entry free, the dense path unchanged.
    """
    sched = Schedule(**schedule_fields) if schedule is None else schedule
    if schedule is not None and schedule_fields:
        raise ValueError(f"em_groups: a schedule and schedule fields {sorted(schedule_fields)} given")
    G = tc.num_groups
    if len(xs) != G or len(heads) != G:
        raise ValueError(f"em_groups: {len(xs)} member arrays and {len(heads)} head arrays for {G} groups")
    seeds = list(range(G)) if group_seeds is None else [int(s) for s in group_seeds]
    hist = np.full((G, sched.total_epochs), np.nan)
    sizes = np.array([len(a) for a in xs])
    for g in range(G):
        if len(heads[g]) != sizes[g]:
            raise ValueError(f"em_groups: group {g} has {sizes[g]} members and {len(heads[g])} heads")
        if sizes[g] and (int(np.min(heads[g])) < 0 or int(np.max(heads[g])) >= tc.num_heads):
            raise ValueError(f"em_groups: group {g} has heads outside [0, {tc.num_heads})")
        check_data(tc, xs[g])                    # once, on the host: the steps skip the check
    active = [g for g in range(G) if sizes[g] > 0]
    if not active:
        return hist
    block = _block_size(tc, sched.batch_size, max_bytes)
    t_last = time.perf_counter()
    for b0 in range(0, len(active), block):
        groups = active[b0:b0 + block]
        _train_block(tc, groups, [xs[g] for g in groups], [heads[g] for g in groups],
                     [seeds[g] for g in groups], sched, hist, masks)
        if time.perf_counter() - t_last > progress_seconds or b0 + block >= len(active):
            log.info("groups: %d / %d trained (%d epochs each)", min(b0 + block, len(active)),
                     len(active), sched.total_epochs)
            t_last = time.perf_counter()
    return hist



def _train_block(tc, groups, xs, heads, seeds, sched: Schedule, hist, masks=None):
    dev, Gb, V = tc.device, len(groups), tc.num_vars
    batch_size, pseudocount = sched.batch_size, sched.pseudocount
    gidx = torch.as_tensor(groups, device=dev)
    bmask = None if masks is None else {k: m.index_select(_group_dim(k), gidx.to(m.device)).to(dev)
                                        for k, m in masks.items()}
    # the block's tables as a circuit of Gb groups (copies; written back at the end)
    sub = tc.select_groups(groups)
    scheds = [dataclasses.replace(sched, seed=s) for s in seeds]      # each group: its own seed
    n = np.array([len(a) for a in xs])
    nb = np.maximum(1, -(-n // batch_size))                          # steps per epoch per group
    X = [torch.as_tensor(np.asarray(a), dtype=torch.long) for a in xs]
    Hd = [torch.as_tensor(np.asarray(h), dtype=torch.long) for h in heads]
    view = LiveGroups(sub)
    for e in range(sched.total_epochs):
        full = sched.is_full_batch(e)
        chunks = [np.array_split(np.arange(k) if full else np.random.default_rng(sc.epoch_seed(e)).permutation(k), m)
                  for sc, k, m in zip(scheds, n, nb)]
        ll_sum = torch.zeros(Gb, dtype=torch.float64, device=dev)
        acc = None
        for t in range(int(nb.max())):
            live = [j for j in range(Gb) if t < nb[j]]
            cur, lidx = view.get(live)                                # the groups with a chunk left
            B = max(len(chunks[j][t]) for j in live)
            x = torch.zeros(B, len(live), V, dtype=torch.long)
            h = torch.zeros(B, len(live), dtype=torch.long)
            w = torch.zeros(B, len(live))
            for i, j in enumerate(live):
                rows = torch.from_numpy(np.sort(chunks[j][t]))
                x[:len(rows), i] = X[j][rows]
                h[:len(rows), i] = Hd[j][rows]
                w[:len(rows), i] = 1.0
            x, h, w = (_to_device(t, dev) for t in (x, h, w))        # pinned, non-blocking
            logp = log_handles(cur.params, True)                       # no log of the tables
            with values_checked():
                lls = cur.group_lls(logp, x)                          # [B, live, H]
            ll = lls.gather(2, h[..., None])[..., 0] * w              # [B, live]
            names = list(logp)
            grads = torch.autograd.grad(ll.sum(), [logp[k] for k in names])
            grads = [view.expand({k: g}, lidx)[k] for k, g in zip(names, grads)]
            ll_sum.index_add_(0, lidx, ll.detach().double().sum(0))
            if full:
                acc = list(grads) if acc is None else [a + g for a, g in zip(acc, grads)]
                continue
            step = torch.zeros(Gb, device=dev)
            for j in live:
                step[j] = sched.step_size_at(e * int(nb[j]) + t, int(nb[j]))
            with torch.no_grad():
                for k, F in zip(names, grads):
                    p = sub.params[k]
                    d = _group_dim(k)
                    shape = [1] * p.dim()
                    shape[d] = Gb
                    p.lerp_(target(F, p, sub.norm_dims[k], pseudocount),
                            step.clamp(max=1.0).view(shape))
                    if bmask is not None and k in bmask:   # only groups that took a step: a
                        q = p.clone()                       # renormalization moves the last bits
                        masked_(q, bmask[k], sub.norm_dims[k])
                        p.copy_(torch.where(step.view(shape) > 0, q, p))
        if full:
            s_full = min(sched.full_batch_step(e), 1.0)                 # the phase's one step size
            with torch.no_grad():
                for k, F in zip(names, acc):
                    p = sub.params[k]
                    if s_full == 1.0:
                        p.copy_(target(F, p, sub.norm_dims[k], pseudocount))
                    else:
                        p.lerp_(target(F, p, sub.norm_dims[k], pseudocount), s_full)
                    if bmask is not None and k in bmask:
                        masked_(p, bmask[k], sub.norm_dims[k])
        mean = (ll_sum.cpu().numpy() / n)
        for j, g in enumerate(groups):
            hist[g, e] = mean[j]
    with torch.no_grad():
        for k, p in tc.params.items():
            p.index_copy_(_group_dim(k), gidx, sub.params[k])
