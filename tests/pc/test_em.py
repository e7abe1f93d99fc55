"""EM (lvd.pc.em) and counting initialization (lvd.pc.count_init) against hand computations, on
each device (the ``device`` fixture: the CPU, and CUDA marked ``gpu``; data stay on the host
and EM moves each batch to the circuit's device)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lvd import pc
from pc_bruteforce import as_t, host, tree_circuit, tree_flows
from pc_bruteforce_lvd import make_lvd


def blend(old, F, dim, s, a):
    """The method.md section 5 update written out: (1 - s) old + s (F + a / n) / (sum F + a)."""
    n = F.shape[dim]
    return (1 - s) * old + s * (F + a / n) / (F.sum(axis=dim, keepdims=True) + a)


def params64(c):
    return {k: host(v).copy() for k, v in c.params.items()}


# ----------------------------------------------------------------------- monotonicity
def _data(kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "hclt":
        base = rng.integers(0, 3, (40, 1))                      # correlated columns
        X = np.where(rng.random((40, 5)) < 0.7, base, rng.integers(0, 3, (40, 5)))
        return pc.hclt(X, num_latents=3, num_cats=3, seed=seed), X, rng.random((40, 5)) < 0.2
    if kind.startswith("hmm"):
        h = pc.hmm(seq_len=5, num_latents=3, vocab_size=4, homogeneous=kind == "hmm_tied", seed=seed)
        return h, rng.integers(0, 4, (40, 5)), None
    return make_lvd(kind, seed=seed), rng.integers(0, 3, (30, 4)), rng.random((30, 4)) < 0.2


@pytest.mark.parametrize("kind", ["hclt", "hmm_tied", "hmm_untied", "pos4", "shared"])
def test_full_batch_em_never_lowers_the_likelihood(kind, device):
    for seed in range(3):
        c, X, miss = _data(kind, seed)
        c.to(device)
        extra = {} if miss is None else {"missing": as_t(miss, torch.bool)}
        lls = [pc.mean_log_likelihood(c, as_t(X), **extra)]
        for _ in range(6):
            hist = pc.em(c, as_t(X), epochs=1, batch_size=16, step_size=1.0, pseudocount=0.0,
                         full_batch=True, **extra)
            assert hist[0] == pytest.approx(lls[-1], abs=1e-4)   # history = ll before the update
            lls.append(pc.mean_log_likelihood(c, as_t(X), **extra))
        assert np.all(np.diff(lls) >= -1e-5), (kind, seed, lls)
        assert lls[-1] > lls[0] + 1e-3


def test_em_with_pseudocount_never_lowers_the_penalized_objective(device):
    """With pseudocount a the update is MAP-EM for a Dirichlet prior with exponents a / n:
    sum_n ll_n + sum over tables of (a / n) * sum log theta must not decrease."""
    c, X, _ = _data("hclt", 5)
    c.to(device)
    a = 0.5

    def objective():
        prior = sum(a / v.shape[c.norm_dims[k]] * float(v.double().log().sum()) for k, v in c.params.items())
        return pc.mean_log_likelihood(c, as_t(X)) * len(X) + prior

    vals = [objective()]
    for _ in range(5):
        pc.em(c, as_t(X), epochs=1, batch_size=40, step_size=1.0, pseudocount=a, full_batch=True)
        vals.append(objective())
    assert np.all(np.diff(vals) >= -1e-3), vals


# ----------------------------------------------------------------------- the update formula
def test_minibatch_update_equals_hand_computation(small_tree, device):
    small_tree.to(device)
    X = np.random.default_rng(0).integers(0, 3, (6, 5))
    s, a = 0.3, 0.2
    old = params64(small_tree)
    F, _ = tree_flows(small_tree, X)
    pc.em(small_tree, as_t(X), epochs=1, batch_size=6, step_size=s, pseudocount=a, shuffle=False)
    for k, dim in small_tree.norm_dims.items():
        np.testing.assert_allclose(host(small_tree.params[k]), blend(old[k], F[k], dim, s, a),
                                   atol=2e-6, err_msg=k)


def test_step_size_is_annealed_linearly_over_batches(small_tree, device):
    X = np.random.default_rng(1).integers(0, 3, (6, 5))
    a = 0.1
    ref = copy.deepcopy(small_tree)
    for rows, s in ((slice(0, 3), 0.5), (slice(3, 6), 0.1)):       # 2 steps: 0.5 -> 0.1
        F, _ = tree_flows(ref, X[rows])
        old = params64(ref)
        for k, dim in ref.norm_dims.items():
            ref.params[k] = torch.from_numpy(blend(old[k], F[k], dim, s, a)).float()
    pc.em(small_tree.to(device), as_t(X), epochs=1, batch_size=3, step_size=0.5, step_size_end=0.1,
          pseudocount=a, shuffle=False)
    for k in ref.params:
        torch.testing.assert_close(small_tree.params[k].cpu(), ref.params[k], atol=2e-6, rtol=1e-5)


def test_full_batch_accumulates_flows_over_batches(small_tree, device):
    small_tree.to(device)
    X = np.random.default_rng(2).integers(0, 3, (7, 5))
    old = params64(small_tree)
    F, _ = tree_flows(small_tree, X)
    pc.em(small_tree, as_t(X), epochs=1, batch_size=2, step_size=1.0, pseudocount=0.3, full_batch=True)
    for k, dim in small_tree.norm_dims.items():
        np.testing.assert_allclose(host(small_tree.params[k]), blend(old[k], F[k], dim, 1.0, 0.3),
                                   atol=2e-6, err_msg=k)


def test_update_on_given_flows(device):
    c = tree_circuit([-1, 0], K=2, C=3, seed=0).to(device)
    old = params64(c)
    F = {"leaves": torch.tensor([[[[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]]]]).expand(2, 1, 3, 2).clone().to(device)}
    pc.update(c, F, 0.5, 0.3)
    want0 = 0.5 * old["leaves"][:, 0, :, 0] + 0.5 * np.array([1.1, 2.1, 0.1]) / 3.3
    want1 = 0.5 * old["leaves"][:, 0, :, 1] + 0.5 * np.full(3, 1 / 3)
    np.testing.assert_allclose(host(c.params["leaves"][:, 0, :, 0]), want0, atol=1e-6)
    np.testing.assert_allclose(host(c.params["leaves"][:, 0, :, 1]), want1, atol=1e-6)
    np.testing.assert_array_equal(host(c.params["edges"]), old["edges"])   # no flows: untouched


def test_em_can_train_only_selected_tables(device):
    m = make_lvd("shared", seed=3).to(device)
    before = {k: v.clone() for k, v in m.params.items()}
    X = np.random.default_rng(3).integers(0, 3, (20, 4))
    pc.em(m, as_t(X), epochs=1, batch_size=10, step_size=0.5, params=["top."])
    for k in before:
        changed = not torch.equal(before[k], m.params[k])
        assert changed == k.startswith("top."), k


def test_em_refuses_empty_data(small_tree):
    with pytest.raises(ValueError, match="no training examples"):
        pc.em(small_tree, np.zeros((0, 5), np.int64))


# ----------------------------------------------------------------------- counting
Z = np.array([[0, 1, 1], [1, 1, 0], [0, 0, 1]])
X = np.array([[2, 0, 1], [1, 1, 0], [2, 2, 1]])


def test_count_init_hmm_by_hand(device):
    h = pc.hmm(seq_len=3, num_latents=2, vocab_size=3, homogeneous=True, seed=0, device=device)
    pc.count_init(h, Z, X, pseudocount=0.1)
    # initial: z_1 = 0, 1, 0 -> #0 = 2, #1 = 1 (a / n = 0.05)
    np.testing.assert_allclose(host(h.params["root"][0, 0]), [2.05 / 3.1, 1.05 / 3.1], rtol=1e-6)
    # transitions (0,1) (1,1) | (1,1) (1,0) | (0,0) (0,1): from 0: [1, 2], from 1: [1, 2]
    np.testing.assert_allclose(host(h.params["edges"][0, 0]),
                               [[1.05 / 3.1, 2.05 / 3.1], [1.05 / 3.1, 2.05 / 3.1]], rtol=1e-6)
    # emissions: state 0 emits 2, 0, 2, 2 -> [1, 0, 3]; state 1 emits 0, 1, 1, 1, 1 -> [1, 4, 0]
    a3 = 0.1 / 3
    want = np.array([[1 + a3, 0 + a3, 3 + a3]]).T / 4.1
    np.testing.assert_allclose(host(h.params["leaves"][0, 0, :, 0]), want[:, 0], rtol=1e-6)
    np.testing.assert_allclose(host(h.params["leaves"][0, 0, :, 1]),
                               np.array([1 + a3, 4 + a3, 0 + a3]) / 5.1, rtol=1e-6)


def test_counts_untied_hmm_by_hand():
    h = pc.hmm(seq_len=3, num_latents=2, vocab_size=3, homogeneous=False, seed=0)
    c = pc.counts(h, Z, X)
    np.testing.assert_array_equal(c["edges"][:, 0].numpy(), [[[1, 1], [0, 1]], [[0, 1], [1, 1]]])
    np.testing.assert_array_equal(c["leaves"][0, 0].numpy(), [[0, 0], [0, 1], [2, 0]])  # t = 1
    np.testing.assert_array_equal(c["leaves"][2, 0].numpy(), [[1, 0], [0, 2], [0, 0]])  # t = 3


def test_counts_on_a_branching_tree_by_loops():
    tc = tree_circuit([2, 0, -1, 2, 3], K=3, C=3, seed=0)
    rng = np.random.default_rng(4)
    z, x = rng.integers(0, 3, (50, 5)), rng.integers(0, 3, (50, 5))
    c = pc.counts(tc, z, x)
    root = np.zeros(3)
    edges = np.zeros((4, 3, 3))
    leaves = np.zeros((5, 3, 3))
    row = {0: 0, 1: 1, 3: 2, 4: 3}                       # edge rows in node order, root skipped
    for n in range(50):
        root[z[n, 2]] += 1
        for v, par in enumerate([2, 0, -1, 2, 3]):
            leaves[v, x[n, v], z[n, v]] += 1
            if par >= 0:
                edges[row[v], z[n, par], z[n, v]] += 1
    np.testing.assert_array_equal(c["root"][0, 0].numpy(), root)
    np.testing.assert_array_equal(c["edges"][:, 0].numpy(), edges)
    np.testing.assert_array_equal(c["leaves"][:, 0].numpy(), leaves)


@pytest.mark.parametrize("kind", ["hmm", "tree", "top"])
def test_count_init_equals_one_clamped_full_batch_em_step(kind, device):
    rng = np.random.default_rng(5)
    if kind == "hmm":
        tc = pc.hmm(seq_len=4, num_latents=3, vocab_size=4, homogeneous=True, seed=1)
    else:
        tc = tree_circuit([2, 0, -1, 2, 3], K=3, C=0 if kind == "top" else 4, seed=1)
    tc.to(device)
    z = rng.integers(0, 3, (25, tc.num_vars))
    x = rng.integers(0, 4, (25, tc.num_vars)) if tc.num_cats else None
    counted = copy.deepcopy(tc)
    pc.count_init(counted, z, x, pseudocount=0.2)
    pc.em(tc, None if x is None else as_t(x), z=as_t(z), epochs=1, batch_size=7, step_size=1.0,
          pseudocount=0.2, full_batch=True)
    for k in tc.params:
        torch.testing.assert_close(tc.params[k], counted.params[k], atol=2e-6, rtol=1e-5)


def test_no_flow_and_no_pseudocount_keeps_a_distribution(device):
    """State 2 never occurs: with pseudocount 0 its transition and emission rows have no
    estimate; they keep their values instead of becoming 0 / 0 = NaN."""
    h = pc.hmm(seq_len=3, num_latents=3, vocab_size=3, homogeneous=True, seed=2, device=device)
    before = {k: v.clone() for k, v in h.params.items()}
    pc.count_init(h, Z, X, pseudocount=0.0)
    assert all(torch.isfinite(v).all() for v in h.params.values())
    torch.testing.assert_close(h.params["edges"][0, 0, 2], before["edges"][0, 0, 2])
    torch.testing.assert_close(h.params["leaves"][0, 0, :, 2], before["leaves"][0, 0, :, 2])
    np.testing.assert_allclose(host(h.params["edges"][0, 0, 0]), [1 / 3, 2 / 3, 0], atol=1e-7)
    assert np.isfinite(pc.mean_log_likelihood(h, as_t(X)))


def test_counts_refuse_bad_latents():
    h = pc.hmm(seq_len=3, num_latents=2, vocab_size=3, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        pc.counts(h, np.array([[0, 2, 1]]))
    with pytest.raises(ValueError, match="columns"):
        pc.counts(h, np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        pc.counts(h, Z, X + 1)


def test_a_distribution_with_denormal_flow_keeps_its_values():
    """pseudocount 0 and a row whose flows sum to 2e-40 (numerically zero): step / sum would
    overflow float32 and turn the row into NaN; the row keeps its values, the others update."""
    from lvd.pc.em import em_step, target

    p = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    F = torch.tensor([[4.8e-43, 2.8e-45, 2.2e-40], [1.0, 3.0, 0.0]])
    for fn in (lambda: em_step(q, F, -1, 0.9, 0.0), lambda: q.copy_(target(F, q, -1, 0.0))):
        q = p.clone()
        fn()
        assert torch.isfinite(q).all()
        torch.testing.assert_close(q[0], p[0])
        assert not torch.equal(q[1], p[1])
    q = p.clone()
    em_step(q, F.to_sparse(), -1, 0.9, 0.0)           # the sparse path too
    assert torch.isfinite(q).all() and torch.equal(q[0], p[0])
