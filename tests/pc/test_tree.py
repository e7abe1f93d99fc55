"""TreeCircuit likelihoods, marginals, evidence and flows against brute-force enumeration, on
each device (the ``device`` fixture: the CPU, and CUDA marked ``gpu``). Circuits are built on
the CPU (seeded) and moved; the brute-force references read their tables on the host."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvd import pc
from lvd.pc.tree import TreeStructure
from pc_bruteforce import (all_configs, as_t, condition, host, joint_of, same, tree_circuit,
                           tree_flows, tree_lls_bf)

PARENTS = [2, 0, -1, 2, 3]          # root 2; depth 3


def close(a, b, atol=2e-5, rtol=1e-4):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               atol=atol, rtol=rtol)


def random_missing(B, V, rng, p=0.4):
    return rng.random((B, V)) < p


# ----------------------------------------------------------------------- normalization
def test_sums_to_one_and_matches_enumeration(small_tree, device):
    small_tree.to(device)
    X = all_configs(5, 3)
    lls = host(small_tree.log_likelihood(as_t(X, device=device)))
    assert np.exp(lls).sum() == pytest.approx(1.0, abs=1e-5)
    close(lls, tree_lls_bf(small_tree, X))


@pytest.mark.parametrize("G,H", [(2, 1), (1, 3), (2, 3)])
def test_every_group_and_head_is_a_distribution(G, H, device):
    tc = tree_circuit([-1, 0, 0, 1], K=2, C=3, G=G, H=H, seed=3).to(device)
    X = all_configs(4, 3)
    lls = host(tc.group_lls(tc.log_params(), as_t(X, device=device)))   # [B, G, H]
    assert lls.shape == (len(X), G, H)
    close(np.exp(lls).sum(0), np.ones((G, H)), atol=1e-5)
    for g in range(G):
        for h in range(H):
            close(lls[:, g, h], tree_lls_bf(tc, X, g=g, h=h))


def test_heads_objective_is_sum_over_groups_of_logsumexp_over_heads(device):
    """With H > 1 heads the objective is sum_g log sum_h p_gh(x), up to a constant (a uniform
    mixture would subtract G log H; the engine currently does not, see the notes)."""
    tc = tree_circuit([-1, 0, 0, 1], K=2, C=3, G=2, H=3, seed=4).to(device)
    X = all_configs(4, 3)[::5]
    _, bf = tree_flows(tc, X)
    diff = host(tc.log_likelihood(as_t(X, device=device))) - bf
    assert np.ptp(diff) < 1e-5
    assert min(abs(diff[0]), abs(diff[0] + 2 * np.log(3))) < 1e-5


def test_per_group_inputs(device):
    """x [B, G, V]: group g sees its own row."""
    tc = tree_circuit([1, -1, 1], K=3, C=2, G=3, seed=5).to(device)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, (6, 3, 3))
    lls = host(tc.group_lls(tc.log_params(), as_t(X, device=device)))[:, :, 0]
    for g in range(3):
        close(lls[:, g], tree_lls_bf(tc, X[:, g], g=g))
    # the per-group product is a distribution over the G * V variables
    Xall = all_configs(9, 2).reshape(-1, 3, 3)
    assert np.exp(host(tc.log_likelihood(as_t(Xall, device=device)))).sum() == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------- marginals
def test_marginal_equals_explicit_sum(small_tree, device):
    small_tree.to(device)
    rng = np.random.default_rng(1)
    X = rng.integers(0, 3, (12, 5))
    miss = random_missing(12, 5, rng, 0.5)
    miss[0] = True                          # everything missing: log 1 = 0
    miss[1] = False
    got = host(small_tree.log_likelihood(as_t(X, device=device), as_t(miss, torch.bool, device)))
    full = all_configs(5, 3)
    full_ll = host(small_tree.log_likelihood(as_t(full, device=device)))
    for b in range(12):
        agree = np.all((full == X[b]) | miss[b], axis=1)       # completions of row b
        assert got[b] == pytest.approx(np.log(np.exp(full_ll[agree]).sum()), abs=2e-5)
    close(got, tree_lls_bf(small_tree, X, miss))
    assert got[0] == pytest.approx(0.0, abs=1e-6)


def test_missing_values_are_ignored_whatever_they_hold(small_tree, device):
    small_tree.to(device)
    rng = np.random.default_rng(2)
    X = rng.integers(0, 3, (8, 5))
    miss = random_missing(8, 5, rng)
    X2 = np.where(miss, rng.choice([-1, 0, 2, 999], (8, 5)), X)       # even out of range
    a = small_tree.log_likelihood(as_t(X, device=device), as_t(miss, torch.bool, device))
    b = small_tree.log_likelihood(as_t(X2, device=device), as_t(miss, torch.bool, device))
    same(a, b)                      # bit for bit on the CPU; to rounding on CUDA (atomics)


def test_batch_size_one_equals_batched(small_tree, device):
    small_tree.to(device)
    rng = np.random.default_rng(3)
    X = rng.integers(0, 3, (7, 5))
    miss = random_missing(7, 5, rng)
    batched = small_tree.log_likelihood(as_t(X, device=device), as_t(miss, torch.bool, device))
    single = torch.cat([small_tree.log_likelihood(as_t(X[b:b + 1], device=device),
                                                  as_t(miss[b:b + 1], torch.bool, device))
                        for b in range(7)])
    torch.testing.assert_close(single, batched, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------- latent evidence
def test_hard_evidence_equals_clamped_sum(small_tree, device):
    small_tree.to(device)
    rng = np.random.default_rng(4)
    X = rng.integers(0, 3, (6, 5))
    z = np.full((6, 5), -1)
    z[0, 2] = 1                            # the root
    z[1, 4] = 0                            # a leaf node
    z[2, [0, 3]] = [2, 1]
    z[3] = rng.integers(0, 3, 5)           # everything clamped: p(x, z) itself
    got = host(small_tree.log_likelihood(as_t(X, device=device), z=as_t(z, device=device)))
    for b in range(6):
        Jz = condition(joint_of(small_tree), 5, X[b])            # [K]*5 over z
        mask = np.ones_like(Jz, dtype=bool)
        for v in range(5):
            if z[b, v] >= 0:
                sel = [slice(None)] * 5
                sel[v] = np.arange(3) != z[b, v]
                mask[tuple(sel)] = False
        assert got[b] == pytest.approx(np.log(Jz[mask].sum()), abs=2e-5)
    assert got[3] == pytest.approx(np.log(condition(joint_of(small_tree), 5, X[3])[tuple(z[3])]), abs=2e-5)


def test_soft_evidence_equals_potential_weighted_sum(small_tree, device):
    small_tree.to(device)
    rng = np.random.default_rng(5)
    X = rng.integers(0, 3, (5, 5))
    miss = random_missing(5, 5, rng)
    ev = rng.normal(size=(5, 5, 3)).astype(np.float32)
    got = host(small_tree.log_likelihood(as_t(X, device=device), as_t(miss, torch.bool, device),
                                         evidence=as_t(ev, torch.float32, device)))
    close(got, tree_lls_bf(small_tree, X, miss, ev))


def test_latent_only_tree_with_evidence(device):
    """A tree without leaves (the LVD top tree) takes all its input as evidence."""
    tc = tree_circuit([-1, 0, 1, 1], K=3, C=0, seed=6).to(device)
    assert "leaves" not in tc.params
    rng = np.random.default_rng(6)
    ev = rng.normal(size=(4, 4, 3)).astype(np.float32)
    got = host(tc.log_likelihood(evidence=as_t(ev, torch.float32, device)))
    close(got, tree_lls_bf(tc, [None] * 4, evidence=ev))
    zero = tc.log_likelihood(evidence=torch.zeros(2, 4, 3, device=device))
    torch.testing.assert_close(zero.cpu(), torch.zeros(2), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------- flows
def assert_flows(got: dict, want: dict, atol=2e-5):
    assert set(got) == set(want)
    for k in want:
        assert tuple(got[k].shape) == want[k].shape, k
        close(host(got[k]), want[k], atol=atol, rtol=1e-4)


def test_flows_equal_expected_counts(small_tree, device):
    small_tree.to(device)
    X = np.random.default_rng(7).integers(0, 3, (9, 5))
    f, lls = pc.flows(small_tree, {"x": as_t(X, device=device)})
    want, bf_lls = tree_flows(small_tree, X)
    assert_flows(f, want)
    close(host(lls), bf_lls)
    # every example routes one unit of flow through the root and one through each observed leaf
    assert f["root"].sum().item() == pytest.approx(9, abs=1e-4)
    assert f["leaves"].sum().item() == pytest.approx(9 * 5, abs=1e-3)


def test_flows_with_missing_values(small_tree, device):
    small_tree.to(device)
    rng = np.random.default_rng(8)
    X = rng.integers(0, 3, (9, 5))
    miss = random_missing(9, 5, rng, 0.5)
    f, _ = pc.flows(small_tree, {"x": as_t(X, device=device), "missing": as_t(miss, torch.bool, device)})
    want, _ = tree_flows(small_tree, X, miss)
    assert_flows(f, want)
    # missing values carry no leaf statistics
    assert f["leaves"].sum().item() == pytest.approx((~miss).sum(), abs=1e-3)


def test_flows_with_soft_and_hard_evidence(small_tree, device):
    small_tree.to(device)
    rng = np.random.default_rng(9)
    X = rng.integers(0, 3, (6, 5))
    ev = rng.normal(size=(6, 5, 3)).astype(np.float32)
    z = np.where(rng.random((6, 5)) < 0.3, rng.integers(0, 3, (6, 5)), -1)
    batch = {"x": as_t(X, device=device), "evidence": as_t(ev, torch.float32, device),
             "z": as_t(z, device=device)}
    f, lls = pc.flows(small_tree, batch)
    want, bf = tree_flows(small_tree, X, evidence=ev, z=z)
    assert_flows(f, want)
    close(host(lls), bf)


def test_flows_with_groups_and_heads(device):
    tc = tree_circuit([-1, 0, 0, 1], K=2, C=3, G=2, H=3, seed=10).to(device)
    rng = np.random.default_rng(10)
    X = rng.integers(0, 3, (7, 2, 4))
    miss = random_missing(7, 4, rng)[:, None].repeat(2, 1)
    f, _ = pc.flows(tc, {"x": as_t(X, device=device), "missing": as_t(miss, torch.bool, device)})
    want, _ = tree_flows(tc, X, miss)
    assert_flows(f, want)


def test_flows_of_tied_tables_add_up(device):
    """Tied edge and leaf rows collect the flows of every node that uses them."""
    tc = tree_circuit([-1, 0, 1, 2], K=3, C=2, seed=11, tied=True).to(device)
    assert tc.params["edges"].shape[0] == 1 and tc.params["leaves"].shape[0] == 1
    X = np.random.default_rng(11).integers(0, 2, (5, 4))
    f, _ = pc.flows(tc, {"x": as_t(X, device=device)})
    want, _ = tree_flows(tc, X)
    assert_flows(f, want)
    assert f["edges"].sum().item() == pytest.approx(5 * 3, abs=1e-4)


def test_flows_of_selected_tables_only(small_tree, device):
    small_tree.to(device)
    X = np.random.default_rng(12).integers(0, 3, (4, 5))
    f, _ = pc.flows(small_tree, {"x": as_t(X, device=device)}, names=["edges"])
    assert set(f) == {"edges"}


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize("value", [-1, 3, 7])
def test_out_of_range_observed_values_are_refused(small_tree, value, device):
    small_tree.to(device)
    x = as_t(np.array([[0, 1, value, 0, 1]]), device=device)
    for call in (lambda: small_tree.log_likelihood(x),
                 lambda: small_tree.sample(1, x, as_t(np.zeros((1, 5)), torch.bool, device)),
                 lambda: small_tree.map_latents(x),
                 lambda: pc.flows(small_tree, {"x": x}),
                 lambda: pc.em(small_tree, x)):
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            call()


def test_wrong_number_of_variables_is_refused(small_tree):
    with pytest.raises(ValueError, match="num_vars = 5"):
        small_tree.log_likelihood(np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="num_vars = 5"):
        small_tree.sample(2, np.zeros((2, 6), np.int64))


def test_numpy_and_uint8_inputs(small_tree, device):
    """Host arrays go to the circuit's device; the same values give the same results."""
    small_tree.to(device)
    x = np.random.default_rng(13).integers(0, 3, (4, 5))
    want = small_tree.log_likelihood(as_t(x, device=device))
    same(small_tree.log_likelihood(x.astype(np.uint8)), want)
    same(small_tree.log_likelihood(x), want)


def test_select_groups_keeps_the_chosen_groups(device):
    tc = tree_circuit([-1, 0, 0], K=2, C=3, G=3, H=2, seed=14).to(device)
    X = as_t(all_configs(3, 3), device=device)
    full = tc.group_lls(tc.log_params(), X).detach()
    sub = tc.select_groups([2, 0])
    assert sub.num_groups == 2 and sub.device.type == device.type
    torch.testing.assert_close(sub.group_lls(sub.log_params(), X).detach(), full[:, [2, 0]])


# ----------------------------------------------------------------------- structure checks
@pytest.mark.parametrize("parents,msg", [([-1, -1, 0], "exactly one root"),
                                         ([1, 2, 0], "exactly one root"),
                                         ([-1, 2, 1], "not form a tree"),
                                         ([-1, 5], "out of range")])
def test_bad_parents_are_refused(parents, msg):
    n = len(parents)
    with pytest.raises(ValueError, match=msg):
        TreeStructure(np.array(parents), np.zeros(n), np.arange(n))
