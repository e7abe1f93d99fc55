"""pc.hclt(leaf_latents=False): a Chow-Liu leaf variable emits from its parent's latent (a copy
node, edge_index -1), against brute-force enumeration with an identity edge."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lvd import pc
from pc_bruteforce import (all_configs, as_t, condition, frequencies, joint_of, tables, tree_flows,
                           tree_ll_logdomain, tree_lls_bf, tv)


def correlated(N, V, C, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, C, (N, 1))
    return np.where(rng.random((N, V)) < 0.6, base, rng.integers(0, C, (N, V)))


@pytest.fixture
def tiny(device):
    """5 variables, 3 values, 3 states; the Chow-Liu tree of correlated data has >= 2 leaves;
    on each device (the ``device`` fixture), so every test that takes it runs on both."""
    c = pc.hclt(correlated(300, 5, 3, 0), num_latents=3, num_cats=3, seed=0, leaf_latents=False)
    for k, v in c.params.items():        # peaked tables: the evidence moves things visibly
        g = torch.Generator().manual_seed(len(k))
        c.params[k] = (torch.randn(v.shape, generator=g, dtype=torch.float64) * 2).softmax(c.norm_dims[k]).float()
    return c.to(device)


def test_structure_hangs_the_chow_liu_leaves_on_their_parents(tiny):
    st = tiny.structure
    has_child = np.zeros(5, bool)
    has_child[st.parents[st.parents >= 0]] = True
    copies = (st.edge_index < 0) & (st.parents >= 0)
    np.testing.assert_array_equal(copies, ~has_child & (st.parents >= 0))
    assert copies.sum() >= 2
    assert tiny.num_edges == 4 - copies.sum() == tiny.params["edges"].shape[0]
    full = pc.hclt(correlated(300, 5, 3, 0), num_latents=3, num_cats=3, seed=0, leaf_latents=True)
    np.testing.assert_array_equal(full.structure.parents, st.parents)      # same Chow-Liu tree
    assert full.num_edges == 4 and tiny.num_params < full.num_params


def test_sums_to_one_and_matches_enumeration(tiny):
    X = all_configs(5, 3)
    lls = tiny.log_likelihood(as_t(X)).double().cpu().numpy()
    assert np.exp(lls).sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(lls, tree_lls_bf(tiny, X), atol=2e-5)


def test_marginals_with_missing_values(tiny):
    rng = np.random.default_rng(1)
    X = rng.integers(0, 3, (20, 5))
    miss = rng.random((20, 5)) < 0.4
    got = tiny.log_likelihood(as_t(X), as_t(miss, torch.bool)).double().cpu().numpy()
    np.testing.assert_allclose(got, tree_lls_bf(tiny, X, miss), atol=2e-5)


def test_flows_equal_expected_counts(tiny):
    rng = np.random.default_rng(2)
    X = rng.integers(0, 3, (9, 5))
    miss = rng.random((9, 5)) < 0.3
    ev = rng.normal(size=(9, 5, 3)).astype(np.float32)
    for m, e in ((None, None), (miss, None), (miss, ev)):
        batch = {"x": as_t(X), "missing": None if m is None else as_t(m, torch.bool),
                 "evidence": None if e is None else torch.from_numpy(e)}
        f, lls = pc.flows(tiny, batch)
        want, bf = tree_flows(tiny, X, m, e)
        for k in want:
            np.testing.assert_allclose(f[k].double().cpu().numpy(), want[k], atol=2e-5, rtol=1e-4, err_msg=k)
        np.testing.assert_allclose(lls.double().cpu().numpy(), bf, atol=2e-5)


def test_full_batch_em_never_lowers_the_likelihood(tiny):
    X = correlated(120, 5, 3, 3)
    lls = [pc.mean_log_likelihood(tiny, X)]
    for _ in range(5):
        pc.em(tiny, X, epochs=1, batch_size=50, step_size=1.0, pseudocount=0.0, full_batch=True)
        lls.append(pc.mean_log_likelihood(tiny, X))
    assert all(b >= a - 1e-5 for a, b in zip(lls, lls[1:])) and lls[-1] > lls[0] + 0.1


def test_latent_posterior_and_map(tiny):
    rng = np.random.default_rng(4)
    X = rng.integers(0, 3, (6, 5))
    miss = rng.random((6, 5)) < 0.3
    post = tiny.latent_posterior(as_t(X), as_t(miss, torch.bool))
    zs = tiny.map_latents(as_t(X), as_t(miss, torch.bool)).cpu().numpy()
    st = tiny.structure
    for b in range(6):
        Jz = condition(joint_of(tiny), 5, X[b], miss[b])
        Jz = Jz / Jz.sum()
        for v in range(5):
            want = Jz.sum(axis=tuple(a for a in range(5) if a != v))
            np.testing.assert_allclose(post[b, v].double().cpu().numpy(), want, atol=2e-5)
        assert Jz[tuple(zs[b])] == pytest.approx(Jz.max(), rel=1e-9)
        for v in np.flatnonzero((st.edge_index < 0) & (st.parents >= 0)):
            assert zs[b, v] == zs[b, st.parents[v]]                     # a copy takes its parent's state


def test_sample_frequencies(tiny):
    J = joint_of(tiny)
    p = J.reshape(3 ** 5, -1).sum(1)
    s = tiny.sample(40_000, seed=0).cpu().numpy()
    assert tv(frequencies(s, 3), p) < 0.03
    miss = np.zeros((20_000, 5), bool)
    miss[:, :2] = True
    x = np.zeros((20_000, 5), np.int64)
    x[:, 2:] = [2, 0, 1]
    s = tiny.sample(20_000, as_t(x), as_t(miss, torch.bool), seed=1).cpu().numpy()
    np.testing.assert_array_equal(s[:, 2:], x[:, 2:])
    want = J.reshape(3, 3, 3, 3, 3, -1).sum(-1)[:, :, 2, 0, 1]
    assert tv(frequencies(s[:, :2], 3), (want / want.sum()).ravel()) < 0.03


def test_count_init_equals_one_clamped_full_batch_em_step(tiny):
    rng = np.random.default_rng(5)
    z = rng.integers(0, 3, (25, 5))
    st = tiny.structure
    for v in st.order[1:]:                       # a copy's latent is its parent's
        if st.edge_index[v] < 0:
            z[:, v] = z[:, st.parents[v]]
    x = rng.integers(0, 3, (25, 5))
    counted = copy.deepcopy(tiny)
    pc.count_init(counted, z, x, pseudocount=0.2)
    pc.em(tiny, as_t(x), z=as_t(z), epochs=1, batch_size=7, step_size=1.0, pseudocount=0.2, full_batch=True)
    for k in tiny.params:
        torch.testing.assert_close(tiny.params[k], counted.params[k], atol=2e-6, rtol=1e-5)


def test_save_and_load_keep_the_copies(tiny, tmp_path):
    pc.save(tiny, tmp_path / "c.h5")
    back = pc.load(tmp_path / "c.h5")
    np.testing.assert_array_equal(back.structure.edge_index, tiny.structure.edge_index)
    X = all_configs(5, 3)[::11]
    torch.testing.assert_close(back.log_likelihood(as_t(X)), tiny.log_likelihood(as_t(X)))


def test_float32_at_mnist_size_matches_the_log_domain_reference():
    X = np.random.default_rng(6).integers(0, 256, (500, 784))
    c = pc.hclt(X, num_latents=8, num_cats=256, seed=2, num_bins=4, max_samples=500, leaf_latents=False)
    assert c.num_edges < 783
    x = np.vstack([np.zeros((1, 784), np.int64), np.full((1, 784), 255), X[:2]])
    t = tables(c)
    want = tree_ll_logdomain(t["parents"], t["root"], t["edges"], t["leaves"], t["edge_index"], t["leaf_index"], x)
    np.testing.assert_allclose(c.log_likelihood(as_t(x)).double().cpu().numpy(), want, rtol=2e-5)
