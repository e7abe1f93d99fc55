"""Progressive growing (lvd.pc.grow) against brute-force enumeration on tiny patch circuits.

The circuit: a 4-node tree (root 1; 1 -> {0, 2}, 2 -> 3), C = 3 values, K = 4 states allocated
of which 2 start active, G = 2 groups (clusters), H = 3 heads allocated of which 2 start active.
Every configuration of x (3**4 = 81) is enumerated, so "normalized" and "unchanged" are exact
statements about whole distributions.
"""

import numpy as np
import pytest
import torch

from lvd.pc import grow as pg
from lvd.pc.groups import em_groups
from pc_bruteforce import all_configs, host, posterior_counts, tables, tree_circuit, tree_lls_bf

PARENTS = [1, -1, 1, 2]
V, C, K, G, H = 4, 3, 4, 2, 3
X_ALL = all_configs(V, C)


def circuit(seed=0, device="cpu"):
    tc = tree_circuit(PARENTS, K=K, C=C, G=G, H=H, seed=seed).to(device)
    masks = pg.init_masks(tc, 2, 2)
    return tc, masks


def dist(tc, g, h):
    """p_{g,h}(x) over every configuration, float64 [81]."""
    return np.exp(tree_lls_bf(tc, X_ALL, g=g, h=h))


def members(seed, n=40):
    rng = np.random.default_rng(seed)
    xs = [rng.integers(0, C, size=(n + 7 * g, V)) for g in range(G)]
    hs = [rng.integers(0, 2, size=len(x)) for x in xs]
    return xs, hs


def check_masked(tc, masks):
    p = tc.params
    assert float(p["edges"][~masks.edges.to(tc.device)].abs().sum()) == 0.0
    assert float(p["root"][~masks.root.to(tc.device)].abs().sum()) == 0.0


def test_init_masks_leave_every_head_normalized_and_inactive_states_unreachable():
    tc, masks = circuit()
    check_masked(tc, masks)
    for g in range(G):
        for h in range(H):
            assert dist(tc, g, h).sum() == pytest.approx(1.0, abs=1e-6)
    before = [dist(tc, g, h) for g in range(G) for h in range(H)]
    with torch.no_grad():   # the tables of inactive states (2, 3) do not matter
        tc.params["leaves"][:, :, :, 2:] = torch.rand(V, G, C, 2).softmax(1)
        tc.params["edges"][:, :, 2:, :] *= torch.rand(V - 1, G, 2, K) + 0.5
        tc.params["edges"][:, :, 2:, :] /= tc.params["edges"][:, :, 2:, :].sum(-1, keepdim=True)
    after = [dist(tc, g, h) for g in range(G) for h in range(H)]
    np.testing.assert_allclose(after, before, atol=1e-7)
    # an inactive head is a copy of head 0
    np.testing.assert_allclose(dist(tc, 0, 2), dist(tc, 0, 0), atol=1e-7)


def test_member_pass_flows_are_own_head_posterior_counts(device):
    tc, masks = circuit(1, device)
    xs, hs = members(1, n=9)
    only = np.array([1, -1])
    for only_heads in (None, only):
        flow, lls = pg.member_pass(tc, xs, hs, batch_size=4, only_heads=only_heads)
        for g in range(G):
            for h in range(H):
                np.testing.assert_allclose(lls[g][:, h], tree_lls_bf(tc, xs[g], g=g, h=h), atol=1e-5)
            want = {"root": np.zeros((H, K)), "edges": 0.0, "leaves": 0.0}
            for x, h in zip(xs[g], hs[g]):
                if only_heads is not None and h != only_heads[g]:
                    continue
                _, c = posterior_counts(tables(tc, g, h), x)
                want["root"][h] += c["root"]
                want["edges"] = want["edges"] + c["edges"]
                want["leaves"] = want["leaves"] + c["leaves"]
            np.testing.assert_allclose(host(flow["root"][g]), want["root"], atol=1e-4)
            np.testing.assert_allclose(host(flow["edges"][:, g]), np.broadcast_to(want["edges"], (V - 1, K, K))
                                       if np.isscalar(want["edges"]) else want["edges"], atol=1e-4)
            np.testing.assert_allclose(host(flow["leaves"][:, g]), np.broadcast_to(want["leaves"], (V, C, K))
                                       if np.isscalar(want["leaves"]) else want["leaves"], atol=1e-4)


def test_growing_copies_the_head_exactly_and_leaves_every_other_head_unchanged(device):
    tc, masks = circuit(2, device)
    xs, hs = members(2)
    flow, _ = pg.member_pass(tc, xs, hs, only_heads=np.array([1, 0]))
    before = {(g, h): dist(tc, g, h) for g in range(G) for h in range(2)}
    new, picked, slot = pg.grow(tc, masks, 0, 1, flow, noise=0.0)
    assert new == 2 and masks.heads.tolist() == [3, 2]
    assert (slot == 2).all() and (picked < 2).all()
    check_masked(tc, masks)
    for key, p in before.items():
        np.testing.assert_allclose(dist(tc, *key), p, atol=1e-7)
    np.testing.assert_allclose(dist(tc, 0, 2), before[(0, 1)], atol=1e-6)
    # the picked states are those with the largest flow under head 1 (root: its root flow)
    nf = pg._node_flows(tc, flow, 0, 1)
    assert (picked == host(nf[:, :2].argmax(1))).all()


def test_noise_changes_only_the_grown_head_which_stays_normalized():
    tc, masks = circuit(3)
    xs, hs = members(3)
    flow, _ = pg.member_pass(tc, xs, hs, only_heads=np.array([0, 1]))
    before = {(g, h): dist(tc, g, h) for g in range(G) for h in range(2)}
    gen = torch.Generator().manual_seed(0)
    pg.grow(tc, masks, 1, 1, flow, noise=0.3, gen=gen)
    pg.grow(tc, masks, 0, 0, flow, noise=0.3, gen=gen)
    check_masked(tc, masks)
    for key, p in before.items():
        np.testing.assert_allclose(dist(tc, *key), p, atol=1e-7)
    for g, parent in ((0, 0), (1, 1)):
        q = dist(tc, g, 2)
        assert q.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.abs(q - before[(g, parent)]).sum() > 1e-3   # the noise moved it


def test_a_second_growth_uses_the_next_slot_and_keeps_all_heads():
    tc = tree_circuit(PARENTS, K=K, C=C, G=1, H=4, seed=4)
    masks = pg.init_masks(tc, 2, 2)
    xs, hs = [members(4)[0][0]], [members(4)[1][0]]
    for h in (0, 2):
        flow, _ = pg.member_pass(tc, xs, hs, only_heads=np.array([h]))
        before = [dist(tc, 0, k) for k in range(int(masks.heads[0]))]
        new, _, slot = pg.grow(tc, masks, 0, h, flow)
        for k, p in enumerate(before):
            np.testing.assert_allclose(dist(tc, 0, k), p, atol=1e-7)
        np.testing.assert_allclose(dist(tc, 0, new), before[h], atol=1e-6)
    assert masks.heads[0] == 4 and bool(masks.active.all())
    with pytest.raises(ValueError, match="all 4 heads"):
        pg.grow(tc, masks, 0, 0, flow)


def test_pruning_an_edge_without_flow_changes_nothing_and_em_keeps_it_zero(device):
    tc, masks = circuit(5, device)
    with torch.no_grad():   # edge row of node 2 (edge row 1), parent state 0 -> child state 1: weight 0
        tc.params["edges"][1, 0, 0, 1] = 0.0
        tc.params["edges"][1, 0, 0] /= tc.params["edges"][1, 0, 0].sum()
    xs, hs = members(5)
    before = [dist(tc, g, h) for g in range(G) for h in range(2)]
    flow, _ = pg.member_pass(tc, xs, hs)
    assert float(flow["edges"][1, 0, 0, 1]) < 1e-30      # 0, up to the passes' 1e-38 clamp
    n_pruned = pg.prune(tc, masks, flow, 1e-9)
    assert n_pruned.tolist() == [1, 0] and not bool(masks.edges[1, 0, 0, 1])
    np.testing.assert_allclose([dist(tc, g, h) for g in range(G) for h in range(2)], before, atol=1e-7)
    em_groups(tc, xs, hs, epochs=2, batch_size=8, step_size=0.5, pseudocount=1.0, full_batch_epochs=1,
              masks=masks.as_dict())
    assert float(tc.params["edges"][1, 0, 0, 1]) == 0.0
    check_masked(tc, masks)
    for g in range(G):
        for h in range(H):
            assert dist(tc, g, h).sum() == pytest.approx(1.0, abs=1e-5)


def test_pruning_keeps_the_largest_entry_of_a_row_and_renormalizes():
    tc, masks = circuit(6)
    xs, hs = members(6)
    flow, _ = pg.member_pass(tc, xs, hs)
    thr = np.array([1e9, 0.0])                      # group 0: everything under threshold
    pg.prune(tc, masks, flow, thr)
    e = masks.edges[:, 0, :2, :]                     # rows of active parent states
    assert (e.sum(-1) == 1).all()
    best = torch.where(masks.edges[:, 0, :2, :] | True, flow["edges"][:, 0, :2, :], 0).argmax(-1)
    assert (e.float().argmax(-1) == best).all()
    assert (masks.root[0, :2].sum(-1) == 1).all()
    assert bool(masks.root[1, :2, :2].all())        # group 1 untouched by a zero threshold
    check_masked(tc, masks)
    for g in range(G):
        for h in range(H):
            assert dist(tc, g, h).sum() == pytest.approx(1.0, abs=1e-6)


def test_reassign_with_the_stay_bonus_matches_a_hand_computation():
    lls = np.array([[-3.0, -2.5, 0.0],    # current 0: -3 + 1 = -2 beats -2.5 -> stays 0
                    [-3.0, -1.9, 0.0],    # current 0: -2 < -1.9 -> moves to 1
                    [-1.0, -1.0, 0.0],    # current 1: tie broken by the bonus -> 1
                    [-5.0, -9.0, 9.9]])   # head 2 inactive (num_heads 2) -> 0
    got = pg.reassign(lls, np.array([0, 0, 1, 1]), 2, bonus=1.0)
    assert got.tolist() == [0, 1, 1, 0]
    assert pg.reassign(lls, np.array([0, 0, 1, 1]), 2, bonus=0.0).tolist() == [1, 1, 0, 0]


def test_worst_head_and_two_means():
    lls = np.array([[-1.0, -5.0], [-1.2, -6.0], [-9.0, -2.0], [-9.0, -2.0], [-9.0, -3.0]])
    heads = np.array([0, 0, 1, 1, 1])
    means, counts = pg.head_means(lls, heads, 2)
    np.testing.assert_allclose(means, [-1.1, -7 / 3])
    assert pg.worst_head(lls, heads, 2) == 1
    assert pg.worst_head(lls, np.array([0, 1, 1, 1, 1]), 2) == 1
    assert pg.worst_head(lls[:2], np.array([0, 1]), 2) == -1     # no head with two members
    emb = np.array([[0.0, 0], [0.1, 0], [5, 5], [5.1, 5], [4.9, 5.2]])
    assert pg.two_means(emb).tolist() == [True, True, False, False, False]
    assert pg.two_means(np.ones((4, 2))).sum() == 2


SETTINGS = pg.GrowSettings(heads=3, em_epochs=2, batch_size=16, prune_threshold=1e-3, noise=0.2)


def grown(groups=None, device="cpu"):
    tc, masks = circuit(7, device)
    xs, hs = members(7, n=60)
    rng = np.random.default_rng(7)
    embs = [rng.normal(size=(len(x), 3)) + x[:, :1] for x in xs]
    if groups is not None:
        tc, masks = tc.select_groups(groups), masks.select(groups)
        xs, hs, embs = [xs[g] for g in groups], [hs[g] for g in groups], [embs[g] for g in groups]
    seeds = [11 + g for g in (groups if groups is not None else range(G))]
    res = pg.progressive_growing(tc, masks, xs, hs, embs, SETTINGS, seeds)
    return tc, masks, res


def test_progressive_growing_reaches_the_target_with_normalized_heads(device):
    tc, masks, res = grown(device=device)
    assert masks.heads.tolist() == [3, 3] and res.curve.shape == (G, 2)
    assert np.isfinite(res.curve).all()
    assert len(res.grown) == G
    check_masked(tc, masks)
    for g in range(G):
        assert sorted(set(res.heads[g].tolist())) == [0, 1, 2]
        for h in range(H):
            assert dist(tc, g, h).sum() == pytest.approx(1.0, abs=1e-5)


def test_progressive_growing_does_not_depend_on_which_groups_run_together():
    tc, masks, res = grown()
    for g in range(G):
        tg, mg, rg = grown([g])
        for k in tc.params:
            d = 0 if k == "root" else 1
            np.testing.assert_array_equal(tg.params[k].numpy(), tc.params[k].index_select(d, torch.tensor([g])).numpy())
        np.testing.assert_array_equal(rg.heads[0], res.heads[g])
        np.testing.assert_array_equal(rg.curve[0], res.curve[g])
        assert bool((mg.edges[:, 0] == masks.edges[:, g]).all())


# ------------------------------------------------------------------ per-group trees (lvd.pc.varmap)
OTHER = [2, 2, -1, 2]          # group 1's own tree: a star around node 2 (group 0: PARENTS)


def circuit_per_group(seed=0):
    from lvd.pc.structures import tree_structure
    from lvd.pc.circuit import TreeCircuit
    from lvd.pc.varmap import super_tree

    parents, vm = super_tree([np.array(PARENTS), np.array(OTHER)])
    tc = TreeCircuit(tree_structure(parents, edge_order="bfs"), K, C, num_groups=G, num_heads=H, seed=seed,
                     var_map=vm)
    assert tc.num_nodes > V
    return tc, pg.init_masks(tc, 2, 2)


def test_per_group_trees_grow_and_prune_like_one_tree():
    """With every cluster its own tree inside one super-tree: member flows are each group's
    posterior counts (real rows), growing copies a head exactly and leaves the others alone,
    and progressive growing ends with H normalized heads per cluster."""
    tc, masks = circuit_per_group(8)
    xs, hs = members(8)
    flow, lls = pg.member_pass(tc, xs, hs, batch_size=16)
    real = tc._real_rows()
    for g in range(G):
        for h in range(2):
            np.testing.assert_allclose(lls[g][:, h], tree_lls_bf(tc, xs[g], g=g, h=h), atol=1e-5)
        want_e, want_l = 0.0, 0.0
        for x, h in zip(xs[g], hs[g]):
            _, c = posterior_counts(tables(tc, g, h), x)
            want_e, want_l = want_e + c["edges"], want_l + c["leaves"]
        rows = real["edges"][:, g].numpy()
        np.testing.assert_allclose(flow["edges"][rows, g].numpy(), want_e[rows], atol=1e-4)
        np.testing.assert_allclose(flow["leaves"][:, g].numpy(), want_l, atol=1e-4)
    before = {(g, h): dist(tc, g, h) for g in range(G) for h in range(2)}
    flow, _ = pg.member_pass(tc, xs, hs, only_heads=np.array([0, 1]))
    pg.grow(tc, masks, 1, 1, flow, noise=0.0)
    for key, p in before.items():
        np.testing.assert_allclose(dist(tc, *key), p, atol=1e-7)
    np.testing.assert_allclose(dist(tc, 1, 2), before[(1, 1)], atol=1e-6)

    tc, masks = circuit_per_group(9)
    rng = np.random.default_rng(9)
    embs = [rng.normal(size=(len(x), 3)) + x[:, :1] for x in xs]
    res = pg.progressive_growing(tc, masks, xs, hs, embs, SETTINGS, [1, 2])
    assert masks.heads.tolist() == [3, 3] and np.isfinite(res.curve).all()
    check_masked(tc, masks)
    for g in range(G):
        for h in range(H):
            assert dist(tc, g, h).sum() == pytest.approx(1.0, abs=1e-5)
