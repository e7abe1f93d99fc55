"""em_groups: the independent groups of one tree trained together, heads observed, by brute force,
on each device (the ``device`` fixture; members' data stay on the host)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvd.pc.groups import em_groups
from pc_bruteforce import posterior_counts, tables, tree_circuit, tree_lls_bf

PARENTS = [1, -1, 1, 0]          # 4 variables, a real tree
K, C = 2, 3


def members(G, H, sizes, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.integers(0, C, (n, len(PARENTS))) for n in sizes]
    hs = [rng.integers(0, H, n) for n in sizes]
    return xs, hs


def test_one_full_step_equals_the_brute_force_em_update(device):
    """batch_size >= every group's size and step 1: one step is the exact EM update of each
    group from its own members' expected counts, each member counted under its own head."""
    G, H, a = 3, 2, 0.1
    tc = tree_circuit(PARENTS, K, C, G=G, H=H, seed=1).to(device)
    xs, hs = members(G, H, [5, 3, 7])
    before = {k: v.double().cpu().numpy().copy() for k, v in tc.params.items()}
    em_groups(tc, xs, hs, epochs=1, batch_size=16, step_size=1.0, pseudocount=a)
    for g in range(G):
        F = {"root": np.zeros((H, K)), "edges": np.zeros_like(before["edges"][:, g]),
             "leaves": np.zeros_like(before["leaves"][:, g])}
        for x, h in zip(xs[g], hs[g]):
            _, c = posterior_counts(tables(tc_from(before, G, H), g, int(h)), x)
            F["root"][h] += c["root"]
            F["edges"] += c["edges"]
            F["leaves"] += c["leaves"]
        want_root = (F["root"] + a / K) / (F["root"].sum(-1, keepdims=True) + a)
        want_edges = (F["edges"] + a / K) / (F["edges"].sum(-1, keepdims=True) + a)
        want_leaves = (F["leaves"] + a / C) / (F["leaves"].sum(1, keepdims=True) + a)
        np.testing.assert_allclose(tc.params["root"][g].double().cpu().numpy(), want_root, atol=2e-5)
        np.testing.assert_allclose(tc.params["edges"][:, g].double().cpu().numpy(), want_edges, atol=2e-5)
        np.testing.assert_allclose(tc.params["leaves"][:, g].double().cpu().numpy(), want_leaves, atol=2e-5)


def tc_from(params, G, H):
    tc = tree_circuit(PARENTS, K, C, G=G, H=H)
    tc.params = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in params.items()}
    return tc


def test_batched_equals_looped_and_blocking_changes_nothing(device):
    G, H = 4, 2
    xs, hs = members(G, H, [40, 9, 0, 23], seed=2)
    kw = dict(epochs=3, batch_size=8, step_size=0.3, step_size_end=0.05, pseudocount=0.1,
              group_seeds=[11, 12, 13, 14])
    together = tree_circuit(PARENTS, K, C, G=G, H=H, seed=3).to(device)
    init = {k: v.clone() for k, v in together.params.items()}
    hist = em_groups(together, xs, hs, **kw)
    assert np.isnan(hist[2]).all() and np.isfinite(hist[[0, 1, 3]]).all()
    for k in init:                                               # the empty group kept its tables
        dim = 0 if k == "root" else 1
        torch.testing.assert_close(together.params[k].select(dim, 2), init[k].select(dim, 2))
    tiny_blocks = tree_circuit(PARENTS, K, C, G=G, H=H, seed=3).to(device)
    hist_b = em_groups(tiny_blocks, xs, hs, max_bytes=1, **kw)       # one group per block
    np.testing.assert_allclose(hist_b, hist, atol=1e-6)
    for g in range(G):
        alone = tree_circuit(PARENTS, K, C, G=G, H=H, seed=3).to(device).select_groups([g])
        h1 = em_groups(alone, [xs[g]], [hs[g]], **{**kw, "group_seeds": [kw["group_seeds"][g]]})
        np.testing.assert_allclose(h1[0], hist[g], atol=1e-6)
        for k, t in alone.params.items():
            dim = 0 if k == "root" else 1
            torch.testing.assert_close(together.params[k].select(dim, g), t.select(dim, 0),
                                       atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(tiny_blocks.params[k], together.params[k], atol=1e-6, rtol=1e-5)


def test_full_batch_epochs_never_lower_each_groups_likelihood(device):
    G, H = 2, 2
    tc = tree_circuit(PARENTS, K, C, G=G, H=H, seed=4).to(device)
    xs, hs = members(G, H, [30, 12], seed=4)

    def mean_ll(g):
        return np.mean([tree_lls_bf(tc, x[None], g=g, h=int(h))[0] for x, h in zip(xs[g], hs[g])])

    prev = [mean_ll(g) for g in range(G)]
    for _ in range(4):
        em_groups(tc, xs, hs, epochs=1, batch_size=64, step_size=1.0, pseudocount=0.0)
        now = [mean_ll(g) for g in range(G)]
        assert all(n >= p - 1e-6 for n, p in zip(now, prev))
        prev = now


def test_history_is_the_mean_ll_under_the_members_heads(device):
    tc = tree_circuit(PARENTS, K, C, G=1, H=2, seed=5).to(device)
    xs, hs = members(1, 2, [6], seed=5)
    want = np.mean([tree_lls_bf(tc, x[None], h=int(h))[0] for x, h in zip(xs[0], hs[0])])
    hist = em_groups(tc, xs, hs, epochs=1, batch_size=6, step_size=0.5)   # one step: ll before it
    assert hist[0, 0] == pytest.approx(want, abs=1e-5)


def test_bad_inputs_are_refused():
    tc = tree_circuit(PARENTS, K, C, G=2, H=2)
    xs, hs = members(2, 2, [3, 3])
    with pytest.raises(ValueError, match="2 groups"):
        em_groups(tc, xs[:1], hs[:1], epochs=1, batch_size=2, step_size=0.1)
    with pytest.raises(ValueError, match="heads outside"):
        em_groups(tc, xs, [hs[0], hs[1] + 2], epochs=1, batch_size=2, step_size=0.1)


def test_a_step_runs_the_tree_over_the_groups_with_a_chunk_left_only(monkeypatch):
    """Sizes 40, 9, 0, 23 with batches of 8 make 5, 2, 0 and 3 chunks an epoch: steps 0 and 1 run
    groups 0, 1 and 3, step 2 groups 0 and 3, steps 3 and 4 group 0 alone (not every step all 4
    groups with zero weights); the tables equal those of each group trained alone (the test
    above)."""
    from lvd.pc.circuit import TreeCircuit

    seen, real = [], TreeCircuit.group_lls
    monkeypatch.setattr(TreeCircuit, "group_lls", lambda self, logp, x: seen.append(x.shape[1]) or real(self, logp, x))
    xs, hs = members(4, 2, [40, 9, 0, 23], seed=2)
    em_groups(tree_circuit(PARENTS, K, C, G=4, H=2, seed=3), xs, hs, epochs=2, batch_size=8)
    assert seen == [3, 3, 2, 1, 1] * 2
