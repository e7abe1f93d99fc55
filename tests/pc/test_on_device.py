"""Every engine path on each device (the ``device`` fixture: CPU, and CUDA marked ``gpu``),
against the brute-force references or, where those are covered elsewhere, against the CPU.

Circuits are built on the CPU (seeded), copied to the device; inputs go to the device and
results come back to the host for the comparisons.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lvd import pc
from pc_bruteforce import (as_t, frequencies, joint_of, posterior_counts_soft, sharpen, tables, tree_circuit,
                           tree_flows, tv)
from pc_bruteforce_lvd import LVD_CONFIGS, lvd_flows, lvd_lls_bf, make_lvd


def on(device, a, dtype=torch.long):
    return as_t(a, dtype).to(device)


def close(got, want, atol=2e-5, rtol=1e-4, msg=""):
    got = got.detach().cpu().double().numpy() if torch.is_tensor(got) else np.asarray(got, float)
    np.testing.assert_allclose(got, np.asarray(want, float), atol=atol, rtol=rtol, err_msg=msg)


def trees():
    yield "branching G2 H2", tree_circuit([2, 0, -1, 2, 3], K=3, C=3, G=2, H=2, seed=1)
    yield "hmm tied", pc.hmm(seq_len=4, num_latents=3, vocab_size=3, homogeneous=True, seed=2)
    yield "hmm untied", pc.hmm(seq_len=4, num_latents=2, vocab_size=3, homogeneous=False, seed=3)
    X = np.random.default_rng(0).integers(0, 3, (200, 5))
    yield "hclt leaf_latents=False", pc.hclt(X, num_latents=3, num_cats=3, seed=4, leaf_latents=False)


@pytest.mark.parametrize("case", list(trees()), ids=lambda c: c[0])
def test_tree_lls_and_flows_with_missing_values_evidence_and_z(device, case):
    _, cpu = case
    tc = copy.deepcopy(cpu).to(device)
    V, K = tc.num_vars, tc.num_latents
    rng = np.random.default_rng(5)
    X = rng.integers(0, 3, (7, V))
    miss = rng.random((7, V)) < 0.3
    ev = rng.normal(size=(7, V, K)).astype(np.float32)
    z = np.where(rng.random((7, V)) < 0.2, rng.integers(0, K, (7, V)), -1)
    z[:, (cpu.structure.edge_index < 0) & (cpu.structure.parents >= 0)] = -1   # a copy is its parent
    for m, e, zz in ((None, None, None), (miss, None, None), (miss, ev, z)):
        batch = {"x": on(device, X), "missing": None if m is None else on(device, m, torch.bool),
                 "evidence": None if e is None else on(device, e, torch.float32),
                 "z": None if zz is None else on(device, zz)}
        f, lls = pc.flows(tc, batch)
        want, bf = tree_flows(cpu, X, m, e, zz)
        assert lls.device.type == device.type
        close(lls, bf - tc.num_groups * np.log(tc.num_heads))     # heads: their uniform mixture
        for k in want:
            close(f[k], want[k], msg=k)


def test_leaf_evidence_flows(device):
    cpu = tree_circuit([-1, 0, 0, 1], K=2, C=3, seed=3)
    tc = copy.deepcopy(cpu).to(device)
    E = np.random.default_rng(3).normal(size=(4, 4, 3)).astype(np.float32) * 1.5
    f, lls = pc.flows(tc, {"leaf_evidence": on(device, E, torch.float32)})
    tp = tables(cpu)
    for b in range(4):
        tot, _ = posterior_counts_soft(tp, E[b])
        close(lls[b], np.log(tot))
    fc, _ = pc.flows(cpu, {"leaf_evidence": torch.from_numpy(E)})
    for k in fc:
        close(f[k], fc[k].double().numpy(), msg=k)


@pytest.mark.parametrize("name", list(LVD_CONFIGS))
def test_lvd_lls_and_flows(device, name):
    cpu = make_lvd(name, seed=1)
    m = copy.deepcopy(cpu).to(device)
    rng = np.random.default_rng(6)
    X = rng.integers(0, cpu.num_cats, (6, cpu.num_vars))
    miss = rng.random((6, cpu.num_vars)) < 0.3
    close(m.log_likelihood(on(device, X)), lvd_lls_bf(cpu, X))
    f, lls = pc.flows(m, {"x": on(device, X), "missing": on(device, miss, torch.bool)})
    want, bf = lvd_flows(cpu, X, miss)
    close(lls, bf)
    for k in want:
        close(f[k], want[k], msg=k)


def test_em_on_the_device_follows_the_cpu(device):
    X = np.random.default_rng(7).integers(0, 3, (60, 5))
    for cpu in (pc.hclt(X, num_latents=3, num_cats=3, seed=5),
                pc.hclt(X, num_latents=3, num_cats=3, seed=5, leaf_latents=False)):
        dev = copy.deepcopy(cpu).to(device)
        hc = pc.em(cpu, X, epochs=2, batch_size=16, step_size=0.3, step_size_end=0.1, seed=1)
        hd = pc.em(dev, on(device, X), epochs=2, batch_size=16, step_size=0.3, step_size_end=0.1, seed=1)
        close(hd, hc, atol=1e-4)
        for k in cpu.params:
            close(dev.params[k], cpu.params[k].double().numpy(), atol=1e-5, msg=k)
    cpu = make_lvd("pos4", seed=2)
    dev = copy.deepcopy(cpu).to(device)
    Xl = np.random.default_rng(8).integers(0, 3, (40, 4))
    z = np.random.default_rng(9).integers(-1, 3, (40, 4))
    pc.em(cpu, Xl, z=z, epochs=1, batch_size=10, step_size=0.5)
    pc.em(dev, Xl, z=z, epochs=1, batch_size=10, step_size=0.5)
    for k in cpu.params:
        close(dev.params[k], cpu.params[k].double().numpy(), atol=1e-5, msg=k)


def test_em_groups_on_the_device_follows_the_cpu(device):
    cpu = tree_circuit([1, -1, 1, 0], K=2, C=3, G=3, H=2, seed=1)
    dev = copy.deepcopy(cpu).to(device)
    rng = np.random.default_rng(10)
    xs = [rng.integers(0, 3, (n, 4)) for n in (9, 4, 0)]
    hs = [rng.integers(0, 2, len(x)) for x in xs]
    hc = pc.em_groups(cpu, xs, hs, epochs=2, batch_size=4, step_size=0.5, full_batch_epochs=1)
    hd = pc.em_groups(dev, xs, hs, epochs=2, batch_size=4, step_size=0.5, full_batch_epochs=1)
    np.testing.assert_allclose(hd, hc, atol=1e-4)
    for k in cpu.params:
        close(dev.params[k], cpu.params[k].double().numpy(), atol=1e-5, msg=k)


def test_queries_on_the_device(device):
    cpu = tree_circuit([2, 0, -1, 2, 3], K=3, C=3, seed=11)
    tc = copy.deepcopy(cpu).to(device)
    rng = np.random.default_rng(11)
    X = rng.integers(0, 3, (8, 5))
    miss = rng.random((8, 5)) < 0.3
    np.testing.assert_array_equal(tc.map_latents(on(device, X), on(device, miss, torch.bool)).cpu().numpy(),
                                  cpu.map_latents(as_t(X), as_t(miss, torch.bool)).numpy())
    close(tc.latent_posterior(on(device, X), on(device, miss, torch.bool)),
          cpu.latent_posterior(as_t(X), as_t(miss, torch.bool)).double().numpy())
    four = sharpen(tree_circuit([-1, 0, 0, 1], K=3, C=3, seed=12), seed=12)   # 81 outcomes (test_queries)
    s = copy.deepcopy(four).to(device).sample(40_000, seed=0)
    assert s.device.type == device.type
    p = joint_of(four).reshape(3 ** 4, -1).sum(1)
    assert tv(frequencies(s.cpu().numpy(), 3), p) < 0.03
    m = copy.deepcopy(make_lvd("pos4h", seed=3)).to(device)
    xs = m.sample(64, seed=1)
    assert xs.device.type == device.type and xs.shape == (64, 4)
    assert m.map_latents(xs).shape == (64, 4)
