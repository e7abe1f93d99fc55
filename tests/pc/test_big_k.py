"""MAP and sampling on trees with many states (an LVD-PG top tree has K = 1,600) without a
[.., K, K] temporary per example: MAP's max over child states runs in blocks of
parent states (lvd.pc.queries.max_plus, bounded by MAP_TEMP_BYTES). Checked: blocks of any
size give the one-max result; blocked MAP against brute force; at K = 1,600 the largest
allocation stays under the bound where the unblocked path would allocate 8 x 3 x K x K floats,
and the MAP states equal a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from lvd.pc import queries
from pc_bruteforce import as_t, condition, joint_of, tree_circuit
from pc_bruteforce_lvd import make_lvd


@pytest.mark.parametrize("budget", [1, 3 * 2 * 5 * 4 * 4, 1 << 30])   # blocks of 1, 3, all 7 states
def test_max_plus_in_blocks_equals_one_max(monkeypatch, device, budget):
    monkeypatch.setattr(queries, "MAP_TEMP_BYTES", budget)
    gen = torch.Generator().manual_seed(0)
    lw = torch.randn(3, 2, 7, 5, generator=gen).to(device)             # [n, G, K parent, J child]
    sc = torch.randn(3, 2, 4, 5, generator=gen).round(decimals=1).to(device)   # ties on purpose
    arg = torch.empty(3, 2, 4, 7, dtype=torch.long, device=device)
    best = queries.max_plus(lw, sc, arg)
    want, want_arg = (lw[:, :, None] + sc[:, :, :, None, :]).max(-1)
    assert torch.equal(best, want) and torch.equal(arg, want_arg)
    assert torch.equal(queries.max_plus(lw, sc), want)


def test_blocked_map_equals_brute_force(monkeypatch):
    monkeypatch.setattr(queries, "MAP_TEMP_BYTES", 1)                 # one parent state at a time
    tc = tree_circuit([2, 0, -1, 2, 3], K=3, C=3, seed=1)
    rng = np.random.default_rng(1)
    X = rng.integers(0, 3, (10, 5))
    miss = rng.random((10, 5)) < 0.3
    zs = tc.map_latents(as_t(X), as_t(miss, torch.bool)).numpy()
    for b in range(10):
        Jz = condition(joint_of(tc), 5, X[b], miss[b])
        assert Jz[tuple(zs[b])] == pytest.approx(Jz.max(), rel=1e-9)


@pytest.mark.parametrize("name", ["pos4", "pos4h", "sharedh"])     # tree top, HCLT tops
def test_blocked_lvd_map_equals_unblocked(monkeypatch, name):
    m = make_lvd(name, seed=4)
    X = as_t(np.random.default_rng(2).integers(0, 3, (6, m.num_vars)))
    want = m.map_latents(X)
    monkeypatch.setattr(queries, "MAP_TEMP_BYTES", 1)
    assert torch.equal(m.map_latents(X), want)


def _largest_allocation(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        out = fn()
    return max(max(e.cpu_memory_usage, 0) for e in p.events()), out


def test_map_and_sample_at_1600_states_within_the_bound():
    K, B = 1600, 8
    tc = tree_circuit([-1, 0, 0, 0], K=K, C=3, seed=0)                  # a root and three children
    x = as_t(np.random.default_rng(3).integers(0, 3, (B, 4)))
    unblocked = 3 * B * K * K * 4                                       # the old [3, 1, B, K, K] scores
    bound = queries.MAP_TEMP_BYTES + (1 << 20)
    assert unblocked > 3 * bound
    peak, zs = _largest_allocation(lambda: tc.map_latents(x))
    assert peak <= bound, f"largest allocation {peak / 2**20:.0f} MB"
    # the same states computed directly: children's best scores per root state, then backtrack
    logW = tc.params["edges"][:, 0].clamp_min(1e-38).log()              # [3, K, K]
    logleaf = tc.params["leaves"][:, 0].clamp_min(1e-38).log()          # [4, C, K]
    logroot = tc.params["root"][0, 0].clamp_min(1e-38).log()
    edge_of = tc.structure.edge_index
    for b in range(2):
        sc = [logleaf[v, x[b, v]] for v in range(4)]
        best = [(logW[edge_of[v]] + sc[v][None, :]).max(-1) for v in (1, 2, 3)]
        root = int((logroot + sc[0] + sum(m for m, _ in best)).argmax())
        want = [root] + [int(a[root]) for _, a in best]
        assert zs[b].tolist() == want
    peak, s = _largest_allocation(lambda: tc.sample(B, seed=0))
    assert peak <= bound and s.shape == (B, 4) and 0 <= int(s.min()) and int(s.max()) < 3
