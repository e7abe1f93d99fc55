"""The LVD image circuit p(x) = sum_z p_top(z) prod_i p_i(x_i | z_i), both modes, by enumeration.

Configurations (tiny images, [H, W, Ch]):
  pos4   (2, 2, 1), patch 1: 4 positions of 1 pixel, 3 states, 3 values, position mode
         (one patch circuit per (position, state): 12 groups of 1 head)
  pos1   (2, 2, 1), patch 2: 1 position of 4 pixels (a real patch tree), 2 states, 2 groups
  posH   (2, 2, 1), patch 2: 1 position, 4 states served by 2 groups of 2 heads each
  shared (2, 2, 1), patch 1: shared vocabulary of 4 states = 2 groups x 2 heads
  chan   (2, 2, 2), patch 1: 4 positions of 2 channels (8 binary pixels), shared, 1 group
  pos4h, sharedh: pos4 and shared with the HCLT top (hidden H_i with 2 / 3 states above each Z_i)
(defined in pc_bruteforce.LVD_CONFIGS, shared with the EM and I/O tests)

The tests that compute run on each device (the ``device`` fixture: circuits built on the CPU
and moved, inputs on the host, results back with ``.cpu()``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvd import pc
from lvd.pc.patches import patch_index
from pc_bruteforce import all_configs, as_t, frequencies, sharpen, soft_joint, tables, top_posterior_of_z, tv
from pc_bruteforce_lvd import LVD_CONFIGS, lvd_flows, lvd_lls_bf, lvd_patch_evidence, make_lvd, patch_cols

CONFIGS = LVD_CONFIGS
make = make_lvd


def configs(m):
    return all_configs(m.num_vars, m.num_cats)


def top_joint(m, L):
    """sum over the top's hidden states of p_top(z) prod_i exp(L[i, z_i]), as an array [K]*m."""
    tot, post = top_posterior_of_z(m, L)
    return tot * post


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sums_to_one_and_matches_enumeration(name, device):
    m = make(name).to(device)
    X = configs(m)
    lls = m.log_likelihood(as_t(X)).double().cpu().numpy()
    assert np.exp(lls).sum() == pytest.approx(1.0, abs=1e-5)
    sub = X[:: max(1, len(X) // 40)]
    np.testing.assert_allclose(m.log_likelihood(as_t(sub)).double().cpu().numpy(), lvd_lls_bf(m, sub), atol=2e-5)


def test_patch_geometry():
    np.testing.assert_array_equal(patch_index(4, 6, 2, 2), patch_cols((4, 6, 2), 2))
    np.testing.assert_array_equal(patch_cols((4, 4, 1), 2)[1], [2, 3, 6, 7])     # by hand
    for name in LVD_CONFIGS:
        m = make(name)
        np.testing.assert_array_equal(m.index.numpy(), patch_cols(m.image_shape, m.patch_size))


@pytest.mark.parametrize("name", ["pos1", "shared"])
def test_latent_lls_are_patch_likelihoods(name, device):
    m = make(name, seed=1).to(device)
    X = np.random.default_rng(1).integers(0, m.num_cats, (5, m.num_vars))
    miss = np.random.default_rng(2).random((5, m.num_vars)) < 0.3
    L = m.latent_lls(as_t(X), as_t(miss, torch.bool)).double().cpu().numpy()
    assert L.shape == (5, m.num_positions, m.num_states)
    for b in range(5):
        np.testing.assert_allclose(L[b], lvd_patch_evidence(m, X[b], miss[b]), atol=2e-5)


@pytest.mark.parametrize("name", ["pos4", "shared"])
def test_marginal_equals_explicit_sum_and_batch_of_one(name, device):
    m = make(name, seed=2).to(device)
    rng = np.random.default_rng(2)
    X = rng.integers(0, 3, (8, 4))
    miss = rng.random((8, 4)) < 0.5
    got = m.log_likelihood(as_t(X), as_t(miss, torch.bool)).double().cpu().numpy()
    full = configs(m)
    full_ll = m.log_likelihood(as_t(full)).double().cpu().numpy()
    for b in range(8):
        agree = np.all((full == X[b]) | miss[b], axis=1)
        assert got[b] == pytest.approx(np.log(np.exp(full_ll[agree]).sum()), abs=2e-5)
        one = m.log_likelihood(as_t(X[b:b + 1]), as_t(miss[b:b + 1], torch.bool))
        assert one.item() == pytest.approx(got[b], abs=1e-5)


@pytest.mark.parametrize("name", ["pos4", "shared", "pos4h", "sharedh"])
def test_observed_latents_give_the_clamped_sum(name, device):
    m = make(name, seed=3).to(device)
    rng = np.random.default_rng(3)
    X = rng.integers(0, 3, (4, 4))
    for b in range(4):
        L = lvd_patch_evidence(m, X[b])
        J = top_joint(m, L)
        per_state = []
        for k in range(m.num_states):
            z = np.full((1, 4), -1)
            z[0, 1] = k                                 # position 1 observed in state k
            got = m.log_likelihood(as_t(X[b:b + 1]), z=as_t(z)).item()
            assert got == pytest.approx(np.log(J[:, k].sum()), abs=2e-5)
            per_state.append(got)
        total = m.log_likelihood(as_t(X[b:b + 1])).item()
        assert np.log(np.exp(per_state).sum()) == pytest.approx(total, abs=2e-5)
        zall = rng.integers(0, m.num_states, (1, 4))   # every latent observed: p(x, z)
        assert m.log_likelihood(as_t(X[b:b + 1]), z=as_t(zall)).item() == \
            pytest.approx(np.log(J[tuple(zall[0])]), abs=2e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_state_is_a_normalized_patch_distribution(name, device):
    m = make(name, seed=11).to(device)
    P = m.patch.num_vars
    X = all_configs(P, m.num_cats)                        # every value of one patch
    img = np.zeros((len(X), m.num_vars), np.int64)
    img[:, m.index[0].cpu().numpy()] = X                        # ... placed at position 0
    L = m.latent_lls(as_t(img)).double().cpu().numpy()[:, 0]    # [configs, K]
    np.testing.assert_allclose(np.exp(L).sum(0), np.ones(m.num_states), atol=1e-5)


@pytest.mark.parametrize("name", ["pos4", "pos1"])
def test_each_state_owns_its_parameters(name, device):
    """Position mode, one head per group: changing the tables of (position i, state k) changes
    L[:, i, k] and nothing else."""
    m = make(name, seed=12).to(device)
    rng = np.random.default_rng(12)
    X = rng.integers(0, m.num_cats, (6, m.num_vars))
    before = m.latent_lls(as_t(X)).cpu().numpy()
    i, k = m.num_positions - 1, m.num_states - 1
    g, h = m.state_group(i, k)
    assert h == 0
    for name_, t in m.patch.params.items():
        dim = 0 if name_ == "root" else 1
        fresh = torch.rand_like(t.select(dim, g)) + 0.1
        t.select(dim, g).copy_(fresh / fresh.sum(m.patch.norm_dims[name_], keepdim=True))
    after = m.latent_lls(as_t(X)).cpu().numpy()
    changed = np.abs(after - before).max(0) > 1e-6                       # [m, K]
    want = np.zeros_like(changed)
    want[i, k] = True
    np.testing.assert_array_equal(changed, want)


@pytest.mark.parametrize("name", ["pos4", "posH", "shared", "pos4h", "sharedh"])
def test_observed_z_decomposes(name, device):
    """log p(x, z) = log p_top(z) + sum_i log p_i(x_i | z_i) (method.md section 2 step 6); with
    the HCLT top p_top(z) is that HCLT's likelihood of z as its observed variables."""
    m = make(name, seed=13).to(device)
    rng = np.random.default_rng(13)
    X = rng.integers(0, m.num_cats, (5, m.num_vars))
    z = rng.integers(0, m.num_states, (5, m.num_positions))
    got = m.log_likelihood(as_t(X), z=as_t(z)).double().cpu().numpy()
    top = (m.top.log_likelihood(x=as_t(z)) if m.top_kind == "hclt" else
           m.top.log_likelihood(z=as_t(z))).double().cpu().numpy()
    for b in range(5):
        L = lvd_patch_evidence(m, X[b])
        want = top[b] + sum(L[i, z[b, i]] for i in range(m.num_positions))
        assert got[b] == pytest.approx(want, abs=2e-5)


@pytest.mark.parametrize("name", ["pos4", "posH", "shared", "pos4h", "sharedh"])
def test_soft_evidence_equals_the_explicit_sum(name, device):
    m = make(name, seed=14).to(device)
    rng = np.random.default_rng(14)
    X = rng.integers(0, m.num_cats, (3, m.num_vars))
    E = rng.normal(size=(3, m.num_positions, m.num_states)).astype(np.float32)
    got = m.log_likelihood(as_t(X), evidence=torch.from_numpy(E)).double().cpu().numpy()
    for b in range(3):
        L = lvd_patch_evidence(m, X[b]) + E[b]
        assert got[b] == pytest.approx(np.log(top_joint(m, L).sum()), abs=2e-5)


def test_root_states_heads_are_the_patch_trees_root_states(device):
    """posR: head h of a group is its patch tree with the root clamped to state h (brute force),
    and an EM step keeps the one-hot roots up to the pseudocount."""
    m = make("posR", seed=15).to(device)
    np.testing.assert_array_equal(m.patch.params["root"].cpu().numpy(), np.broadcast_to(np.eye(2), (2, 2, 2)))
    X = np.random.default_rng(15).integers(0, 3, (6, 4))
    L = m.latent_lls(as_t(X)).double().cpu().numpy()[:, 0]                   # [6, K]
    for k in range(m.num_states):
        g, h = m.state_group(0, k)
        sub = m.patch.select_groups([g])
        z = np.full((6, 4), -1)
        z[:, int(sub.structure.order[0])] = h                         # the root latent observed
        # the one-group circuit scores the uniform mixture of its H heads: only head h has root state h
        clamped = sub.log_likelihood(as_t(X), z=as_t(z)).double().cpu().numpy() + np.log(sub.num_heads)
        np.testing.assert_allclose(L[:, k], clamped, atol=2e-5)
    pc.em(m, as_t(X), epochs=1, batch_size=6, step_size=1.0, pseudocount=0.0)
    np.testing.assert_allclose(m.patch.params["root"].cpu().numpy(), np.broadcast_to(np.eye(2), (2, 2, 2)), atol=1e-6)
    with pytest.raises(ValueError, match="root_states needs"):
        pc.lvd_circuit(**{**CONFIGS["posR"], "num_latents": 3})


def test_indistinguishable_heads_are_refused():
    with pytest.raises(ValueError, match="cannot be told apart"):
        pc.lvd_circuit(**{**CONFIGS["posH"], "num_latents": 1})
    assert pc.lvdcircuit.distinguishable(4, 2) is not None
    assert pc.lvdcircuit.distinguishable(1, 1) is None and pc.lvdcircuit.distinguishable(2, 2) is None


@pytest.mark.parametrize("name", ["pos4", "posH", "shared", "pos4h", "sharedh"])
def test_map_latents_equals_brute_force_argmax(name, device):
    """argmax_z p(z, x_observed); with the HCLT top the z of the joint argmax over (z, h)."""
    m = make(name, seed=4).to(device)
    rng = np.random.default_rng(4)
    X = rng.integers(0, 3, (8, 4))
    miss = rng.random((8, 4)) < 0.3
    zs = m.map_latents(as_t(X), as_t(miss, torch.bool)).cpu().numpy()
    assert zs.shape == (8, m.num_positions)
    tt = tables(m.top)
    for b in range(8):
        L = lvd_patch_evidence(m, X[b], miss[b])
        if m.top_kind == "hclt":
            J = soft_joint(tt, L)                                          # axes z..., h...
            assert tuple(zs[b]) == np.unravel_index(J.argmax(), J.shape)[:m.num_positions]
        else:
            J = top_joint(m, L)
            assert tuple(zs[b]) == np.unravel_index(J.argmax(), J.shape)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_flows_equal_expected_counts(name, device):
    m = make(name, seed=5).to(device)
    rng = np.random.default_rng(5)
    X = rng.integers(0, m.num_cats, (4, m.num_vars))
    miss = rng.random((4, m.num_vars)) < 0.3
    f, lls = pc.flows(m, {"x": as_t(X), "missing": as_t(miss, torch.bool)})
    want, bf = lvd_flows(m, X, miss)
    np.testing.assert_allclose(lls.double().cpu().numpy(), bf, atol=2e-5)
    assert set(f) == set(want)
    for k in want:
        np.testing.assert_allclose(f[k].double().cpu().numpy(), want[k], atol=3e-5, err_msg=k)


@pytest.mark.parametrize("name", ["shared", "sharedh"])
def test_flows_with_observed_latents(name, device):
    m = make(name, seed=6).to(device)
    rng = np.random.default_rng(6)
    X = rng.integers(0, 3, (4, 4))
    z = np.array([[0, -1, 3, -1], [1, 1, 1, 1], [-1, -1, -1, -1], [2, -1, -1, 0]])
    f, _ = pc.flows(m, {"x": as_t(X), "z": as_t(z)})
    want, _ = lvd_flows(m, X, z=z)
    for k in want:
        np.testing.assert_allclose(f[k].double().cpu().numpy(), want[k], atol=3e-5, err_msg=k)


@pytest.mark.parametrize("name", ["pos4", "posH", "shared", "pos4h", "sharedh"])
def test_sample_frequencies(name, device):
    m = sharpen(make(name), seed=7).to(device)
    p = np.exp(m.log_likelihood(as_t(configs(m))).double().cpu().numpy())
    s = m.sample(40_000, seed=7).cpu().numpy()
    assert s.shape == (40_000, 4)
    assert tv(frequencies(s, m.num_cats), p) < 0.03


@pytest.mark.parametrize("name", ["pos4", "shared", "pos4h"])
def test_conditional_sample_frequencies_keep_observed_values(name, device):
    """Observe pixels 0 and 3 (top tree: their latents sit at the ends, so z_1 / z_2 must be drawn
    given the evidence below them), sample pixels 1 and 2. (pos4h: a seed and sharpening whose
    observed pixels move the others, checked by the last assertion.)"""
    m = (sharpen(make(name, seed=1), seed=1, scale=3.5) if name == "pos4h"
         else sharpen(make(name), seed=8)).to(device)
    n = 20_000
    x = np.zeros((n, 4), np.int64)
    x[:, 0], x[:, 3] = 2, 1
    miss = np.zeros((n, 4), bool)
    miss[:, [1, 2]] = True
    s = m.sample(n, as_t(x), as_t(miss, torch.bool), seed=8).cpu().numpy()
    np.testing.assert_array_equal(s[:, [0, 3]], x[:, [0, 3]])
    P = np.exp(m.log_likelihood(as_t(configs(m))).double().cpu().numpy()).reshape(3, 3, 3, 3)
    want = P[2, :, :, 1] / P[2, :, :, 1].sum()
    assert tv(frequencies(s[:, [1, 2]], 3), want.ravel()) < 0.03
    assert tv(want.ravel(), P.sum(axis=(0, 3)).ravel()) > 0.1


def test_default_structures_come_from_data_and_latents(device):
    rng = np.random.default_rng(9)
    data = rng.integers(0, 3, (50, 8))
    z = rng.integers(0, 2, (50, 4))
    m = pc.lvd_circuit((2, 2, 2), 1, num_states=2, num_latents=2, num_cats=3, data=data, z=z, device=device)
    assert m.patch.num_vars == 2 and m.top.num_vars == 4
    p = np.exp(m.log_likelihood(as_t(all_configs(8, 3)[::7])).double().cpu().numpy())
    assert np.all(p > 0) and p.sum() < 1


def test_wrong_image_size_and_values_are_refused(device):
    m = make("shared").to(device)
    with pytest.raises(ValueError, match="num_vars = 4"):
        m.log_likelihood(np.zeros((2, 5), np.int64))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        m.log_likelihood(np.full((1, 4), 3))
    with pytest.raises(ValueError, match="num_vars = 4"):
        m.sample(1, np.zeros((1, 3), np.int64))


@pytest.mark.parametrize("kwargs,msg", [
    (dict(mode="diagonal"), "mode"),
    (dict(mode="shared", num_groups=2, num_states=3), "divide"),
    (dict(top_parents=None), "top_parents"),
    (dict(patch_parents=None), "patch_parents"),
    (dict(top_parents=[-1, 0, 0]), "4 patches"),
])
def test_bad_construction_is_refused(kwargs, msg):
    cfg = {**CONFIGS["pos4"], **kwargs}
    with pytest.raises(ValueError, match=msg):
        pc.lvd_circuit(**cfg)
