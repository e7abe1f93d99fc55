"""Conditionals, latent posteriors, MAP and sampling of a TreeCircuit against enumeration.

Sampling tolerance: total variation (TV) between empirical and exact distributions. For n
samples over m outcomes the expected TV is about 0.5 * sqrt(2 / (pi n)) * sum sqrt(p) <= 0.02
for the sizes below (n = 40,000, 81 outcomes; n = 20,000, 9 outcomes), with a standard
deviation near 0.002; the bound is 0.03. Two different random circuits differ by TV ~ 0.4, so
a sampler that ignored its parameters or its evidence fails by far.

Every test runs on each device (the circuits come from fixtures that take the ``device``
fixture; inputs stay on the host, the circuit moves them; results come back with ``.cpu()``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pc_bruteforce import (all_configs, as_t, condition, frequencies, joint_of, sharpen, tree_circuit,
                           tv)

TV_TOL = 0.03


@pytest.fixture
def tree4(device):
    """4 nodes (0 -> {1, 2}, 1 -> 3), 3 states, 3 values: 81 configurations; peaked tables."""
    return sharpen(tree_circuit([-1, 0, 0, 1], K=3, C=3), seed=2).to(device)


@pytest.fixture
def small_tree(small_tree, device):
    """conftest's 5-node tree on the device."""
    return small_tree.to(device)


def exact(tc):
    return np.exp(tc.log_likelihood(as_t(all_configs(tc.num_vars, tc.num_cats))).double().cpu().numpy())


# ----------------------------------------------------------------------- conditionals
def test_conditionals_sum_to_one_and_are_ratios_of_joints(small_tree):
    X = all_configs(5, 3)
    miss_a = np.zeros(5, bool)
    miss_a[[1, 4]] = True                  # A = {1, 4} queried, B = {0, 2, 3} given
    full = small_tree.log_likelihood(as_t(X)).double().cpu().numpy()
    miss = as_t(np.tile(miss_a, (len(X), 1)), torch.bool)
    given = small_tree.log_likelihood(as_t(X), miss).double().cpu().numpy()
    cond = np.exp(full - given)                                          # p(x_A | x_B)
    J = joint_of(small_tree).reshape(3 ** 5, -1).sum(1)                  # p(x) by enumeration
    pB = J.reshape(3, 3, 3, 3, 3).sum(axis=(1, 4))                       # p(x_0, x_2, x_3)
    np.testing.assert_allclose(cond, J / pB[X[:, 0], X[:, 2], X[:, 3]], rtol=1e-4)
    keys = X[:, [0, 2, 3]] @ np.array([9, 3, 1])
    sums = np.bincount(keys, weights=cond)
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)


# ----------------------------------------------------------------------- latent queries
def test_latent_posterior_equals_enumeration(small_tree):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 3, (6, 5))
    miss = rng.random((6, 5)) < 0.4
    ev = rng.normal(size=(6, 5, 3)).astype(np.float32)
    for evidence in (None, ev):
        post = small_tree.latent_posterior(as_t(X), as_t(miss, torch.bool),
                                           None if evidence is None else as_t(evidence, torch.float32))
        assert post.shape == (6, 5, 3)
        for b in range(6):
            Jz = condition(joint_of(small_tree, evidence=None if evidence is None else evidence[b]),
                           5, X[b], miss[b])
            Jz = Jz / Jz.sum()
            for v in range(5):
                want = Jz.sum(axis=tuple(a for a in range(5) if a != v))
                np.testing.assert_allclose(post[b, v].double().cpu().numpy(), want, atol=2e-5)


def test_map_latents_equals_brute_force_argmax(small_tree):
    rng = np.random.default_rng(1)
    X = rng.integers(0, 3, (10, 5))
    miss = rng.random((10, 5)) < 0.3
    ev = rng.normal(size=(10, 5, 3)).astype(np.float32)
    for evidence in (None, ev):
        zs = small_tree.map_latents(as_t(X), as_t(miss, torch.bool),
                                    None if evidence is None else as_t(evidence, torch.float32)).cpu().numpy()
        assert zs.shape == (10, 5) and zs.dtype == np.int64
        for b in range(10):
            Jz = condition(joint_of(small_tree, evidence=None if evidence is None else evidence[b]),
                           5, X[b], miss[b])
            best = np.unravel_index(Jz.argmax(), Jz.shape)
            assert Jz[tuple(zs[b])] == pytest.approx(Jz.max(), rel=1e-9)   # ties: same value
            assert tuple(zs[b]) == best


# ----------------------------------------------------------------------- sampling
def test_unconditional_sample_frequencies(tree4):
    p = exact(tree4)
    s = tree4.sample(40_000, seed=0).cpu().numpy()
    assert s.shape == (40_000, 4) and s.min() >= 0 and s.max() < 3
    assert tv(frequencies(s, 3), p) < TV_TOL
    other = exact(sharpen(tree_circuit([-1, 0, 0, 1], K=3, C=3), seed=3))
    assert tv(frequencies(s, 3), other) > 0.1       # the check can tell circuits apart


def test_sample_is_reproducible_with_a_seed(tree4):
    a, b, c = (tree4.sample(50, seed=s) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_conditional_sample_frequencies_and_observed_values_kept(tree4):
    """Query x_1, x_2 given x_0 and x_3: x_3 hangs below the missing x_1, so drawing z_1
    needs the upward message of the observed subtree."""
    n = 20_000
    J = joint_of(tree4).reshape(3 ** 4, -1).sum(1).reshape(3, 3, 3, 3)
    miss = np.zeros((n, 4), bool)
    miss[:, [1, 2]] = True
    x = np.zeros((n, 4), np.int64)
    x[: n // 2, [0, 3]] = [2, 1]                        # two different evidences in one batch
    x[n // 2:, [0, 3]] = [0, 2]
    x[:, [1, 2]] = 1                                    # ignored: missing
    s = tree4.sample(n, as_t(x), as_t(miss, torch.bool), seed=1).cpu().numpy()
    np.testing.assert_array_equal(s[:, [0, 3]], x[:, [0, 3]])
    for rows, (a, c) in ((slice(0, n // 2), (2, 1)), (slice(n // 2, n), (0, 2))):
        want = J[a, :, :, c] / J[a, :, :, c].sum()      # p(x_1, x_2 | x_0 = a, x_3 = c)
        got = frequencies(s[rows][:, [1, 2]], 3)
        assert tv(got, want.ravel()) < TV_TOL
        prior = J.sum(axis=(0, 3))
        assert tv(want.ravel(), prior.ravel()) > 0.1     # the evidence matters


def test_sample_given_latent_evidence(tree4):
    """evidence clamps z_1 = 2: samples follow p(x | z_1 = 2)."""
    n = 40_000
    ev = torch.zeros(n, 4, 3)
    ev[:, 1, :2] = float("-inf")
    s = tree4.sample(n, seed=2, evidence=ev).cpu().numpy()
    Jx = joint_of(tree4)[..., :, 2, :, :].reshape(3 ** 4, -1).sum(1)  # x axes, then z_0, z_2, z_3
    assert tv(frequencies(s, 3), Jx / Jx.sum()) < TV_TOL
    assert tv(frequencies(s, 3), exact(tree4)) > 0.05
