"""HCLT circuits: exact on tiny data, and float32 without underflow at MNIST size.

Every test runs on each device (the ``device`` fixture; data stay on the host).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lvd import pc
from pc_bruteforce import all_configs, as_t, tables, tree_lls_bf, tree_ll_logdomain


def correlated(N, V, C, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, C, (N, 1))
    return np.where(rng.random((N, V)) < 0.6, base, rng.integers(0, C, (N, V)))


def test_tiny_hclt_sums_to_one_and_matches_enumeration(device):
    X = correlated(200, 5, 3, 0)
    c = pc.hclt(X, num_latents=3, num_cats=3, seed=0, device=device)
    full = all_configs(5, 3)
    lls = c.log_likelihood(as_t(full)).double().cpu().numpy()
    assert np.exp(lls).sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(lls[::7], tree_lls_bf(c, full[::7]), atol=2e-5)


def test_em_fits_the_data_better_than_random_parameters(device):
    X = correlated(300, 5, 3, 1)
    c = pc.hclt(X, num_latents=3, num_cats=3, seed=1, device=device)
    before = pc.mean_log_likelihood(c, as_t(X))
    hist = pc.em(c, as_t(X), epochs=5, batch_size=64, step_size=0.5, pseudocount=0.1)
    after = pc.mean_log_likelihood(c, as_t(X))
    assert after > before + 0.3 and len(hist) == 5
    assert after > -5 * np.log(3) + 0.3                   # better than the uniform distribution


# ----------------------------------------------------------------------- MNIST-size, float32
@pytest.fixture(scope="module")
def big():
    """784 variables, 256 values, 8 latent states; structure from 500 random images."""
    X = np.random.default_rng(2).integers(0, 256, (500, 784))
    return pc.hclt(X, num_latents=8, num_cats=256, seed=2, num_bins=4, max_samples=500), X


def reference(c, x):
    t = tables(c)
    return tree_ll_logdomain(t["parents"], t["root"], t["edges"], t["leaves"], t["edge_index"],
                             t["leaf_index"], x)


def extremes():
    return np.stack([np.zeros(784, np.int64), np.full(784, 255, np.int64)])


def test_float32_extreme_images_are_finite_and_exact(big, device):
    c, _ = big
    c = copy.deepcopy(c).to(device)
    x = extremes()
    lls = c.log_likelihood(as_t(x)).double().cpu().numpy()
    assert lls.dtype == np.float64 and np.all(np.isfinite(lls))
    assert lls.max() < -3000                             # e^-3000: far below float32's range
    np.testing.assert_allclose(lls, reference(c, x), rtol=2e-5)
    every = c.log_likelihood(as_t(x), torch.ones(2, 784, dtype=torch.bool))
    torch.testing.assert_close(every.cpu(), torch.zeros(2), atol=1e-4, rtol=0)


def test_float32_stays_finite_after_em_on_random_data(big, device):
    c, X = big
    c = copy.deepcopy(c).to(device)
    # values in [1, 254]: after EM the extreme values 0 and 255 are rare (pseudocount only)
    data = np.clip(X, 1, 254)
    hist = pc.em(c, as_t(data), epochs=1, batch_size=170, step_size=0.5, pseudocount=0.1)  # 3 steps
    assert np.all(np.isfinite(hist))
    x = extremes()
    lls = c.log_likelihood(as_t(x)).double().cpu().numpy()
    assert np.all(np.isfinite(lls))
    np.testing.assert_allclose(lls, reference(c, x), rtol=2e-5)
    f, fl = pc.flows(c, {"x": as_t(x)})
    assert all(torch.isfinite(v).all() for v in f.values()) and torch.isfinite(fl).all()
    assert f["root"].sum().item() == pytest.approx(2.0, abs=1e-3)


def test_one_latent_state_is_the_product_of_leaves(device):
    """K = 1: p(x) = prod_v theta_v[x_v], a sum of 784 logs written out."""
    X = np.random.default_rng(3).integers(0, 256, (50, 784))
    c = pc.hclt(X, num_latents=1, num_cats=256, num_bins=4, max_samples=50, device=device)
    leaves = c.params["leaves"][:, 0, :, 0].double().cpu().numpy()             # [784, 256]
    x = np.vstack([extremes(), X[:2]])
    want = np.log(leaves[np.arange(784), x]).sum(1)
    np.testing.assert_allclose(c.log_likelihood(as_t(x)).double().cpu().numpy(), want, rtol=1e-5)
