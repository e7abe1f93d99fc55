"""Per-group trees in one super-tree (lvd.pc.varmap): every group behaves as the circuit of its
own tree, checked against enumeration of that tree (pc_bruteforce.tables reads group g's own
tree off the var_map) and against standalone circuits."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from lvd import io, pc
from lvd.pc import queries, varmap
from lvd.pc.em import flows as em_flows
from lvd.pc.structures import reroot, tree_structure
from pc_bruteforce import all_configs, as_t, condition, frequencies, host, joint_of, tree_flows, tree_lls_bf, tv
from pc_bruteforce_lvd import lvd_flows, lvd_lls_bf
from treehelp import group_parents

TREES = [np.array([-1, 0, 1, 2]), np.array([1, -1, 1, 1]), np.array([2, 2, -1, 0])]   # chain, star, fork


def random_tree(P, rng):
    parents = np.full(P, -1)
    for v in range(1, P):
        parents[v] = rng.integers(0, v)
    perm = rng.permutation(P)                  # relabel, then root anywhere
    relabeled = np.full(P, -1)
    relabeled[perm[1:]] = perm[parents[1:]]
    return reroot(relabeled, int(rng.integers(0, P)))


def undirected(parents):
    return {frozenset((v, int(p))) for v, p in enumerate(parents) if p >= 0}


def grouped(trees, K=2, C=3, H=2, seed=0, device="cpu"):
    parents, vm = varmap.super_tree(trees)
    return pc.TreeCircuit(tree_structure(parents, edge_order="bfs"), K, C, num_groups=len(trees),
                          num_heads=H, seed=seed, device=device, var_map=vm)


def standalone(tc, g, trees):
    """Group g of ``tc`` as a circuit of its own tree (G = 1, rooted where the super-tree
    rooted it), tables copied from its slots."""
    own = group_parents(tc.structure.parents, tc.var_map.cpu().numpy(), g)
    assert undirected(own) == undirected(trees[g])
    st = tree_structure(own)
    vm = tc.var_map[g].cpu().numpy()
    slot = np.empty(tc.num_vars, dtype=np.int64)
    slot[vm[vm >= 0]] = np.flatnonzero(vm >= 0)
    E, L = tc.structure.edge_index, tc.structure.leaf_index
    edges = torch.zeros(int(st.edge_index.max()) + 1, 1, tc.num_latents, tc.num_latents)
    for v in range(tc.num_vars):
        if own[v] >= 0:
            edges[st.edge_index[v], 0] = tc.params["edges"][E[slot[v]], g].cpu()
    leaves = tc.params["leaves"][L[slot], g].cpu()[:, None]
    return pc.TreeCircuit(st, tc.num_latents, tc.num_cats, num_heads=tc.num_heads,
                          params={"edges": edges, "root": tc.params["root"][g:g + 1].cpu().clone(), "leaves": leaves})


def test_super_tree_embeds_every_tree():
    rng = np.random.default_rng(0)
    trees = [random_tree(7, rng) for _ in range(6)]
    parents, vm = varmap.super_tree(trees)
    assert varmap.problems(vm, parents, np.arange(len(parents)), np.arange(len(parents)), 6) is None
    for g, t in enumerate(trees):
        real = np.flatnonzero(vm[g] >= 0)
        assert sorted(vm[g, real]) == list(range(7))
        # the same undirected tree (super_tree may root it elsewhere), parent-child onto parent-child
        assert undirected(group_parents(parents, vm, g)) == undirected(t)
        for s in real:
            if parents[s] >= 0:
                assert frozenset((vm[g, s], vm[g, parents[s]])) in undirected(t)
    fixed_p, fixed_vm = varmap.super_tree(trees, reroot=False)
    for g, t in enumerate(trees):
        np.testing.assert_array_equal(group_parents(fixed_p, fixed_vm, g), t)
    assert len(parents) <= len(fixed_p)
    # identical trees share every slot; one tree is its own super-tree
    p1, vm1 = varmap.super_tree([trees[0]] * 3)
    assert len(p1) == 7 and (vm1 >= 0).all()


def test_problems_are_named():
    parents, vm = varmap.super_tree(TREES)
    V = len(parents)
    idx = np.arange(V)
    bad = vm.copy()
    bad[0, 0] = -1                                          # the root made padding
    assert "root" in varmap.problems(bad, parents, idx, idx, 3)
    bad = vm.copy()
    bad[1, bad[1] == 0] = 5
    assert "one-to-one" in varmap.problems(bad, parents, idx, idx, 3)
    assert "untied" in varmap.problems(vm, parents, np.zeros(V, np.int64), idx, 3)
    assert "shape" in varmap.problems(vm[:2], parents, idx, idx, 3)
    with pytest.raises(ValueError, match="var_map"):
        pc.TreeCircuit(tree_structure(parents), 2, 3, num_groups=2, var_map=vm)


def test_lls_match_enumeration_of_each_groups_tree(device):
    tc = grouped(TREES, device=device)
    assert tc.num_nodes > tc.num_vars == 4
    rng = np.random.default_rng(1)
    X = rng.integers(0, 3, size=(6, 4))
    M = rng.random((6, 4)) < 0.3
    lls = host(tc.group_lls(tc.log_handles(), as_t(X, device=device), as_t(M, torch.bool, device)))
    for g in range(3):
        for h in range(2):
            np.testing.assert_allclose(lls[:, g, h], tree_lls_bf(tc, X, M, g=g, h=h), rtol=1e-5, atol=1e-5)


def test_padding_tables_change_nothing(device):
    tc = grouped(TREES, device=device)
    X = as_t(np.random.default_rng(2).integers(0, 3, size=(5, 4)), device=device)
    before = tc.group_lls(tc.log_handles(), X)
    pad = ~tc._real_rows()["edges"].to(device)
    noise = torch.rand(tc.params["edges"].shape, device=device) + 0.1
    noise = noise / noise.sum(-1, keepdim=True)
    tc.params["edges"] = torch.where(pad[:, :, None, None], noise, tc.params["edges"])
    torch.testing.assert_close(tc.group_lls(tc.log_handles(), X), before, atol=1e-6, rtol=1e-6)


def test_flows_match_expected_counts_on_real_rows(device):
    tc = grouped(TREES, device=device)
    rng = np.random.default_rng(3)
    X = rng.integers(0, 3, size=(5, 4))
    M = rng.random((5, 4)) < 0.25
    F, lls = em_flows(tc, {"x": as_t(X, device=device), "missing": as_t(M, torch.bool, device)})
    ref, ref_lls = tree_flows(tc, X, M)
    np.testing.assert_allclose(host(lls), ref_lls - 3 * np.log(2), rtol=1e-5)   # the uniform mixture of 2 heads
    real = {k: v.numpy() for k, v in tc._real_rows().items()}
    np.testing.assert_allclose(host(F["root"]), ref["root"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(host(F["edges"])[real["edges"]], ref["edges"][real["edges"]], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(host(F["leaves"]), ref["leaves"], rtol=1e-4, atol=1e-5)   # padding: no leaf flow


def test_em_step_equals_each_groups_own_em_step(device):
    tc = grouped(TREES, H=1, device=device)
    alone = [standalone(tc, g, TREES) for g in range(3)]
    X = as_t(np.random.default_rng(4).integers(0, 3, size=(40, 4)))
    pc.em(tc, X.to(device), epochs=1, batch_size=40, step_size=0.5, pseudocount=0.1)
    for g, a in enumerate(alone):
        pc.em(a, X, epochs=1, batch_size=40, step_size=0.5, pseudocount=0.1)
        after = standalone(tc, g, TREES)
        for k in a.params:
            torch.testing.assert_close(after.params[k], a.params[k], atol=1e-5, rtol=1e-5)


def test_conditional_samples_follow_each_groups_tree(device):
    tc = grouped(TREES, K=2, C=2, H=1, seed=5, device=device)
    n = 20000
    x = torch.zeros(n, 4, dtype=torch.long, device=device)
    x[:, 1] = 1
    miss = torch.ones(n, 4, dtype=torch.bool, device=device)
    miss[:, 1] = False
    out, _ = queries.tree_sample(tc, n, x, miss, seed=0)
    out = out.cpu().numpy()
    assert (out[:, :, 1] == 1).all()
    for g in range(3):
        J = joint_of(tc, g)
        cond = np.array([condition(J, 4, c).sum() for c in all_configs(4, 2)])
        cond = np.where(all_configs(4, 2)[:, 1] == 1, cond, 0.0)
        assert tv(frequencies(out[:, g], 2), cond / cond.sum()) < 0.03


def test_num_params_save_load_select(tmp_path):
    tc = grouped(TREES, H=2)
    assert tc.num_params == sum(standalone(tc, g, TREES).num_params for g in range(3))
    path = tmp_path / "t.h5"
    pc.save(tc, path)
    back = pc.load(path)
    assert torch.equal(back.var_map, tc.var_map) and back.num_params == tc.num_params
    sub = tc.select_groups([2, 0])
    assert torch.equal(sub.var_map, tc.var_map[[2, 0]])
    assert torch.equal(pc.random_like(tc, 3).var_map, tc.var_map)
    with h5py.File(path, "r+") as f:
        vm = f["tree/var_map"][()]
        vm[1] = np.roll(vm[1], 1)
        f["tree/var_map"][...] = vm
    with pytest.raises(io.ArtifactError, match="var_map"):
        pc.load(path)


def test_lvd_circuit_with_per_group_trees_matches_enumeration(device):
    trees = [np.array([-1, 0, 0, 1]), np.array([2, 2, -1, 0])]
    m = pc.lvd_circuit((2, 2, 1), 2, num_states=4, num_latents=2, num_cats=3, mode="shared", num_groups=2,
                       top_parents=[-1], patch_trees=trees, seed=1, device=device)
    assert m.patch.var_map is not None and m.patch.meta["patch_tree"] == "group"
    rng = np.random.default_rng(6)
    X = rng.integers(0, 3, size=(4, 4))
    M = rng.random((4, 4)) < 0.3
    np.testing.assert_allclose(host(m.log_likelihood(as_t(X, device=device), as_t(M, torch.bool, device))),
                               lvd_lls_bf(m, X, M), rtol=1e-5)
    F, _ = em_flows(m, {"x": as_t(X, device=device), "missing": as_t(M, torch.bool, device)})
    ref, _ = lvd_flows(m, X, M)
    real = m.patch._real_rows()["edges"].numpy()
    np.testing.assert_allclose(host(F["patch.leaves"]), ref["patch.leaves"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(host(F["patch.edges"])[real], ref["patch.edges"][real], rtol=1e-4, atol=1e-5)
    s = m.sample(50, x=as_t(X[:1].repeat(50, 0), device=device), missing=as_t(M[:1].repeat(50, 0), torch.bool, device),
                 seed=0).cpu().numpy()
    assert (s[:, ~M[0]] == X[0, ~M[0]]).all() and s.min() >= 0 and s.max() < 3


def test_group_trees_come_from_each_groups_members():
    """Two clusters of 2x2 patches with opposite dependencies: in cluster 0 pixel 1 copies
    pixel 0 and pixel 3 copies pixel 2; in cluster 1 pixel 2 copies 0 and 3 copies 1."""
    rng = np.random.default_rng(7)
    n = 400
    a = rng.integers(0, 4, size=(n, 2))
    x0 = np.stack([a[:, 0], a[:, 0], a[:, 1], a[:, 1]], 1)
    x1 = np.stack([a[:, 0], a[:, 1], a[:, 0], a[:, 1]], 1)
    data = np.concatenate([x0, x1])
    z = np.concatenate([np.zeros(n, np.int64), np.full(n, 2, np.int64)])[:, None]   # H = 2: group = z // 2
    pooled = np.array([-1, 0, 0, 0])
    trees, counts = pc.patchtrees.group_trees(data, z, (2, 2, 1), 2, "shared", 4, 2, 4, pooled)
    assert counts == [n, n]

    def edges(t):
        return {frozenset((v, int(p))) for v, p in enumerate(t) if p >= 0}

    assert {frozenset((0, 1)), frozenset((2, 3))} <= edges(trees[0])
    assert {frozenset((0, 2)), frozenset((1, 3))} <= edges(trees[1])
    few, _ = pc.patchtrees.group_trees(data[:10], z[:10], (2, 2, 1), 2, "shared", 4, 2, 4, pooled)
    assert all(np.array_equal(t, pooled) for t in few)        # too few members: the pooled tree


def test_unsupported_queries_say_so():
    tc = grouped(TREES[:1], H=1)
    with pytest.raises(ValueError, match="var_map"):
        pc.count_init(tc, np.zeros((3, tc.num_nodes), np.int64), np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match="var_map"):
        tc.log_likelihood(leaf_evidence=torch.zeros(2, 4, 3))
