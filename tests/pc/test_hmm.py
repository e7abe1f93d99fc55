"""HMMs (tied and untied over time) against the forward algorithm and enumeration, on each
device (the ``device`` fixture; inputs may stay on the host: the circuit moves them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvd import pc
from pc_bruteforce import all_configs, as_t, frequencies, host, tree_flows, tree_lls_bf, tv


def forward_ll(pi, A, Bm, x, missing=None):
    """Scaled forward algorithm in float64. pi [K]; A [T-1, K, K] (A[t][a, b] = p(z_t+1 = b | z_t = a));
    Bm [T, C, K] (Bm[t][c, k] = p(x_t = c | z_t = k)); missing positions emit 1."""
    T = len(x)
    ll = 0.0
    alpha = np.array(pi, dtype=np.float64)
    for t in range(T):
        if t > 0:
            alpha = alpha @ A[t - 1]
        if missing is None or not missing[t]:
            alpha = alpha * Bm[t][x[t]]
        norm = alpha.sum()
        ll += np.log(norm)
        alpha = alpha / norm
    return ll


def hmm_tables(h):
    """(pi, A [T-1, K, K], Bm [T, C, K]) of an HMM circuit, tied rows repeated over time."""
    p = {k: host(v) for k, v in h.params.items()}
    T = h.num_vars
    A = p["edges"][:, 0]
    Bm = p["leaves"][:, 0]
    if A.shape[0] == 1:
        A = np.repeat(A, max(T - 1, 1), 0)
    if Bm.shape[0] == 1:
        Bm = np.repeat(Bm, T, 0)
    return p["root"][0, 0], A, Bm


@pytest.mark.parametrize("homogeneous", [True, False])
def test_sums_to_one(homogeneous, device):
    h = pc.hmm(seq_len=4, num_latents=3, vocab_size=3, homogeneous=homogeneous, seed=0, device=device)
    X = all_configs(4, 3)
    lls = host(h.log_likelihood(as_t(X)))
    assert np.exp(lls).sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(lls, tree_lls_bf(h, X), atol=2e-5)


@pytest.mark.parametrize("homogeneous", [True, False])
def test_log_likelihood_equals_forward_algorithm(homogeneous, device):
    h = pc.hmm(seq_len=5, num_latents=3, vocab_size=3, homogeneous=homogeneous, seed=1, device=device)
    pi, A, Bm = hmm_tables(h)
    rng = np.random.default_rng(1)
    X = rng.integers(0, 3, (20, 5))
    miss = rng.random((20, 5)) < 0.3
    got = host(h.log_likelihood(as_t(X), as_t(miss, torch.bool)))
    want = [forward_ll(pi, A, Bm, X[b], miss[b]) for b in range(20)]
    np.testing.assert_allclose(got, want, atol=3e-5)


def test_long_sequence_matches_scaled_forward(device):
    """T = 120 with 40 words: the unscaled product would be ~ e^-440, far below float32."""
    h = pc.hmm(seq_len=120, num_latents=6, vocab_size=40, homogeneous=True, seed=2, device=device)
    pi, A, Bm = hmm_tables(h)
    X = np.random.default_rng(2).integers(0, 40, (3, 120))
    got = host(h.log_likelihood(as_t(X)))
    want = np.array([forward_ll(pi, A, Bm, x) for x in X])
    assert np.all(np.isfinite(got)) and want.max() < -300
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_homogeneous_hmm_has_single_rows_that_stay_tied(device):
    h = pc.hmm(seq_len=6, num_latents=3, vocab_size=4, homogeneous=True, seed=3, device=device)
    assert h.params["edges"].shape == (1, 1, 3, 3)
    assert h.params["leaves"].shape == (1, 1, 4, 3)
    assert h.meta["homogeneous"] is True
    X = np.random.default_rng(3).integers(0, 4, (30, 6))
    pc.em(h, as_t(X), epochs=2, batch_size=8, step_size=0.5)
    assert h.params["edges"].shape == (1, 1, 3, 3) and h.params["leaves"].shape == (1, 1, 4, 3)
    u = pc.hmm(seq_len=6, num_latents=3, vocab_size=4, homogeneous=False, seed=3)
    assert u.params["edges"].shape == (5, 1, 3, 3) and u.params["leaves"].shape == (6, 1, 4, 3)


def test_tied_flows_equal_sum_of_untied_flows(device):
    T, K, C = 5, 3, 3
    tied = pc.hmm(seq_len=T, num_latents=K, vocab_size=C, homogeneous=True, seed=4, device=device)
    untied = pc.hmm(seq_len=T, num_latents=K, vocab_size=C, homogeneous=False, seed=99, device=device)
    untied.params["root"].copy_(tied.params["root"])
    untied.params["edges"].copy_(tied.params["edges"].expand(T - 1, -1, -1, -1))
    untied.params["leaves"].copy_(tied.params["leaves"].expand(T, -1, -1, -1))
    rng = np.random.default_rng(4)
    X = as_t(rng.integers(0, C, (6, T)))
    miss = as_t(rng.random((6, T)) < 0.2, torch.bool)
    ft, llt = pc.flows(tied, {"x": X, "missing": miss})
    fu, llu = pc.flows(untied, {"x": X, "missing": miss})
    torch.testing.assert_close(llt, llu)
    torch.testing.assert_close(ft["root"], fu["root"])
    torch.testing.assert_close(ft["edges"][0], fu["edges"].sum(0), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ft["leaves"][0], fu["leaves"].sum(0), atol=1e-4, rtol=1e-5)
    # and both equal the brute-force expected counts
    want, _ = tree_flows(tied, X.numpy(), miss.numpy())
    np.testing.assert_allclose(host(ft["edges"]), want["edges"], atol=3e-5)
    np.testing.assert_allclose(host(ft["leaves"]), want["leaves"], atol=3e-5)


def test_sample_frequencies(device):
    h = pc.hmm(seq_len=4, num_latents=2, vocab_size=3, homogeneous=True, seed=5, device=device)
    p = np.exp(host(h.log_likelihood(as_t(all_configs(4, 3)))))
    s = h.sample(40_000, seed=5).cpu().numpy()
    assert tv(frequencies(s, 3), p) < 0.03


def test_num_params_by_hand():
    tied = pc.hmm(seq_len=6, num_latents=3, vocab_size=4, homogeneous=True)
    assert tied.num_params == 3 * 2 + 2 + 3 * 3              # transitions, initial, emissions
    untied = pc.hmm(seq_len=6, num_latents=3, vocab_size=4, homogeneous=False)
    assert untied.num_params == 5 * 3 * 2 + 2 + 6 * 3 * 3


def test_length_one_and_bad_length(device):
    h = pc.hmm(seq_len=1, num_latents=2, vocab_size=3, seed=6, device=device)
    lls = h.log_likelihood(torch.arange(3)[:, None])
    assert np.exp(host(lls)).sum() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="seq_len"):
        pc.hmm(seq_len=0, num_latents=2, vocab_size=3)
