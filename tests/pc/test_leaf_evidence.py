"""Soft evidence on the observed variables of a tree (TreeCircuit leaf_evidence), by enumeration.

This is how the HCLT top of an LVD circuit sees its patch variables: Z_i is the observed
variable of hidden node H_i and the patch likelihoods L[b, i, k] are log-potentials on it.

Every test runs on each device (the ``device`` fixture; the evidence stays on the host).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvd import pc
from pc_bruteforce import as_t, posterior_counts_soft, soft_joint, tables, tree_circuit, tree_lls_bf

PARENTS = [-1, 0, 0, 1]          # a branching tree of 4 nodes
K, C = 2, 3


def _evidence(rng, B, V=4):
    return rng.normal(size=(B, V, C)).astype(np.float32) * 1.5


def test_soft_evidence_likelihood_equals_enumeration(device):
    tc = tree_circuit(PARENTS, K, C, seed=1).to(device)
    E = _evidence(np.random.default_rng(1), 6)
    got = tc.log_likelihood(leaf_evidence=torch.from_numpy(E)).double().cpu().numpy()
    tp = tables(tc)
    want = [np.log(soft_joint(tp, E[b]).sum()) for b in range(6)]
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_hard_and_empty_leaf_evidence_equal_observed_and_missing_values(device):
    tc = tree_circuit(PARENTS, K, C, seed=2).to(device)
    rng = np.random.default_rng(2)
    X = rng.integers(0, C, (5, 4))
    miss = rng.random((5, 4)) < 0.4
    E = np.full((5, 4, C), -np.inf, np.float32)
    E[np.arange(5)[:, None], np.arange(4)[None, :], X] = 0.0
    E[miss] = 0.0                                   # all values allowed: the variable summed out
    got = tc.log_likelihood(leaf_evidence=torch.from_numpy(E)).double().cpu().numpy()
    np.testing.assert_allclose(got, tree_lls_bf(tc, X, miss), atol=2e-5)
    np.testing.assert_allclose(got, tc.log_likelihood(as_t(X), as_t(miss, torch.bool)).double().cpu().numpy(),
                               atol=2e-5)


def test_soft_evidence_flows_are_expected_counts(device):
    tc = tree_circuit(PARENTS, K, C, seed=3).to(device)
    E = _evidence(np.random.default_rng(3), 4)
    f, lls = pc.flows(tc, {"leaf_evidence": torch.from_numpy(E)})
    want = {k: np.zeros(tuple(v.shape)) for k, v in tc.params.items()}
    tp = tables(tc)
    for b in range(4):
        _, c = posterior_counts_soft(tp, E[b])
        want["root"][0, 0] += c["root"]
        want["edges"][:, 0] += c["edges"]
        want["leaves"][:, 0] += c["leaves"]
    for k in want:
        np.testing.assert_allclose(f[k].double().cpu().numpy(), want[k], atol=3e-5, err_msg=k)


def test_full_batch_em_step_on_soft_evidence_by_hand(device):
    """One full-batch step (step 1, no pseudocount): every table becomes its normalized
    expected counts under the soft evidence (method.md: new = F / sum F)."""
    tc = tree_circuit(PARENTS, K, C, seed=4).to(device)
    E = _evidence(np.random.default_rng(4), 7)
    tp = tables(tc)
    counts = {"root": 0.0, "edges": 0.0, "leaves": 0.0}
    for b in range(7):
        _, c = posterior_counts_soft(tp, E[b])
        for k in counts:
            counts[k] = counts[k] + c[k]
    before = tc.log_likelihood(leaf_evidence=torch.from_numpy(E)).mean().item()
    pc.em(tc, None, epochs=1, full_batch=True, step_size=1.0, pseudocount=0.0, leaf_evidence=E)
    np.testing.assert_allclose(tc.params["root"][0, 0].double().cpu().numpy(), counts["root"] / counts["root"].sum(),
                               atol=2e-5)
    edges = counts["edges"] / counts["edges"].sum(-1, keepdims=True)
    np.testing.assert_allclose(tc.params["edges"][1:, 0].double().cpu().numpy(), edges[1:], atol=2e-5)
    leaves = counts["leaves"] / counts["leaves"].sum(1, keepdims=True)
    np.testing.assert_allclose(tc.params["leaves"][:, 0].double().cpu().numpy(), leaves, atol=2e-5)
    assert tc.log_likelihood(leaf_evidence=torch.from_numpy(E)).mean().item() >= before - 1e-6


def test_bad_leaf_evidence_is_refused(device):
    tc = tree_circuit(PARENTS, K, C, seed=5).to(device)
    with pytest.raises(ValueError, match="leaf_evidence has shape"):
        tc.log_likelihood(leaf_evidence=torch.zeros(2, 4, C + 1))
    with pytest.raises(ValueError, match="not both"):
        tc.group_lls(tc.log_params(), x=torch.zeros(2, 4, dtype=torch.long), leaf_evidence=torch.zeros(2, 4, C))
