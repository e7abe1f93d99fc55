"""Sparse leaf flows (lvd.pc.treell.sparse_leaf_flows) and their EM update (lvd.pc.em._em_step_sparse).

A batch that reads fewer leaf entries than the table has rows (an HMM's emission table) gets
its leaf flows as an uncoalesced sparse COO tensor; the update then makes one pass over the
table for the zero-flow part and adds the flows' share at the touched entries. Checked here:
the sparse flows against brute-force expected counts, the sparse update against the dense
update and against the formula written out by hand, and whole EM runs (mini-batch and
full-batch) with sparse flows against the same runs with dense ones.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lvd import pc
from lvd.pc import treell as tree
from lvd.pc.em import em_step
from pc_bruteforce import as_t, tree_flows
from pc_bruteforce_lvd import lvd_flows, make_lvd


def blend(old, F, dim, s, a):
    """The method.md section 5 update written out: (1 - s) old + s (F + a / n) / (sum F + a)."""
    n = F.shape[dim]
    return (1 - s) * old + s * (F + a / n) / (F.sum(axis=dim, keepdims=True) + a)


def dense(t):
    return (t.to_dense() if t.is_sparse else t).detach().cpu().double().numpy()


def hmms():
    yield "tied", pc.hmm(seq_len=3, num_latents=2, vocab_size=12, homogeneous=True, seed=1)
    yield "untied", pc.hmm(seq_len=3, num_latents=3, vocab_size=5, homogeneous=False, seed=2)


@pytest.mark.parametrize("case", list(hmms()), ids=lambda c: c[0])
def test_sparse_leaf_flows_equal_brute_force(device, case):
    _, cpu = case
    tc = copy.deepcopy(cpu).to(device)
    rng = np.random.default_rng(0)
    X = rng.integers(0, tc.num_cats, (4, 3))
    miss = rng.random((4, 3)) < 0.3
    for m in (None, miss):
        batch = {"x": as_t(X).to(device), "missing": None if m is None else as_t(m, torch.bool).to(device)}
        f, lls = pc.flows(tc, batch, sparse=True)
        assert f["leaves"].is_sparse                       # 12 entries <= 12 (tied) / 15 (untied) rows
        want, bf = tree_flows(cpu, X, m)
        np.testing.assert_allclose(lls.cpu().numpy(), bf, atol=2e-5, rtol=1e-5)
        for k in want:
            np.testing.assert_allclose(dense(f[k]), want[k], atol=2e-5, rtol=1e-4, err_msg=k)


def test_dense_when_the_batch_reads_more_entries_than_rows_or_not_asked():
    tc = pc.hmm(seq_len=3, num_latents=2, vocab_size=4, seed=0)   # 5 x 3 = 15 entries > 4 rows
    f, _ = pc.flows(tc, {"x": as_t(np.zeros((5, 3), int))}, sparse=True)
    assert not f["leaves"].is_sparse
    f, _ = pc.flows(tc, {"x": as_t(np.zeros((1, 3), int))})      # 3 entries, but not asked for
    assert not f["leaves"].is_sparse
    # and never outside pc.flows: autograd users get dense gradients
    logp = tc.log_handles(True)
    lls = tc.objective(logp, {"x": as_t(np.zeros((1, 3), int))})
    (g,) = torch.autograd.grad(lls.sum(), [logp["leaves"]])
    assert not g.is_sparse


@pytest.mark.parametrize("s, a", [(0.3, 0.2), (1.0, 0.0), (0.7, 0.0)])
def test_sparse_update_equals_dense_update_and_hand_computation(device, s, a):
    tc = pc.hmm(seq_len=3, num_latents=3, vocab_size=5, homogeneous=False, seed=3).to(device)
    X = np.array([[0, 1, 1], [0, 2, 1]])       # value 3, 4 never seen: with a = 0 no estimate there
    f, _ = pc.flows(tc, {"x": as_t(X).to(device)}, sparse=True)
    assert f["leaves"].is_sparse
    old = tc.params["leaves"].clone()
    p_sparse, p_dense = old.clone(), old.clone()
    em_step(p_sparse, f["leaves"], 2, s, a)
    em_step(p_dense, f["leaves"].to_dense(), 2, s, a)
    torch.testing.assert_close(p_sparse, p_dense, atol=1e-6, rtol=1e-5)
    F = dense(f["leaves"])
    want = blend(old.cpu().double().numpy(), F, 2, s, a)
    if a == 0:                                   # distributions without flow keep their values
        dead = F.sum(2, keepdims=True) == 0
        want = np.where(dead, old.cpu().double().numpy(), want)
    np.testing.assert_allclose(p_sparse.cpu().double().numpy(), want, atol=1e-6)
    assert torch.isfinite(p_sparse).all()


def test_sparse_update_adds_duplicate_entries():
    p = torch.full((1, 1, 4, 2), 0.25)
    ind = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 1, 3]])           # entry (1) twice
    F = torch.sparse_coo_tensor(ind, torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 4.0]]), (1, 1, 4, 2),
                                check_invariants=True)
    em_step(p, F, 2, 1.0, 0.0)
    np.testing.assert_allclose(p[0, 0].numpy(), [[0, 0], [0.75, 0], [0, 0], [0.25, 1.0]], atol=1e-7)


@pytest.mark.parametrize("full_batch", [False, True])
def test_em_with_sparse_flows_equals_em_with_dense_flows(monkeypatch, full_batch):
    X = np.random.default_rng(4).integers(0, 40, (12, 6))
    runs = []
    for threshold in (float("inf"), 0.0):                   # always sparse, never sparse
        monkeypatch.setattr(tree, "SPARSE_LEAF_FLOWS", threshold)
        tc = pc.hmm(seq_len=6, num_latents=3, vocab_size=40, seed=5)
        pc.em(tc, as_t(X), epochs=2, batch_size=5, step_size=0.5, pseudocount=0.1, full_batch=full_batch)
        runs.append(tc.params)
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["pos4", "posH", "shared"])
def test_lvd_circuit_sparse_flows_equal_brute_force(monkeypatch, name):
    monkeypatch.setattr(tree, "SPARSE_LEAF_FLOWS", float("inf"))   # the patch leaves always sparse
    m = make_lvd(name, seed=2)
    X = np.random.default_rng(6).integers(0, 3, (5, m.num_vars))
    f, _ = pc.flows(m, {"x": as_t(X)}, sparse=True)
    assert any(v.is_sparse for v in f.values())
    want, _ = lvd_flows(m, X)
    for k in want:
        np.testing.assert_allclose(dense(f[k]), want[k], atol=2e-5, rtol=1e-4, err_msg=k)
