"""The fused CPU kernels (lvd.pc._fused) against the torch path, on every circuit family.

The brute-force tests of tests/pc run on both paths (conftest's ``engine_path``); here the two
paths are compared with each other on circuits too large to enumerate (log-likelihoods, flows
of every table, EM steps, MAP and samples), and the fused path is checked to be the one taken
on the CPU in float32 (and not in float64)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lvd import pc
from lvd.pc import _fused, _fused_update, kernels, varmap
from lvd.pc.em import MIN_DENOM
from lvd.pc.structures import tree_structure
from pc_bruteforce_lvd import make_lvd
from level_cases import tiny_level

pytestmark = pytest.mark.skipif(not _fused.ENABLED, reason="numba missing")


@pytest.fixture(autouse=True)
def engine_path():
    """(Overrides conftest's: these tests compare the paths themselves; the fast one in kernel
    mode ``compiled``, whatever lvd.pc.kernels would measure here.)"""
    with kernels.forced("compiled"):
        yield


def _both(monkeypatch, fn):
    out = fn()
    with kernels.forced("torch"):
        ref = fn()
    return out, ref


def _close(a, b, tol=2e-5):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k], tol)
        return
    a, b = (t.to_dense() if t.is_sparse else t for t in (torch.as_tensor(a), torch.as_tensor(b)))
    scale = max(1.0, float(b.abs().max()))
    assert torch.allclose(a, b, rtol=tol, atol=tol * scale), float((a - b).abs().max())


def _cases():
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.integers(0, 7, (96, 23)))
    miss = torch.from_numpy(rng.random((96, 23)) < 0.25)
    yield "hclt", pc.hclt(X, num_latents=5, num_cats=7, seed=0, leaf_latents=True), X, None
    yield "hclt-copies+missing", pc.hclt(X, num_latents=16, num_cats=7, seed=1), X, miss   # copies, K = 16
    yield "hclt-K1", pc.hclt(X, num_latents=1, num_cats=7, seed=2), X, miss
    H = torch.from_numpy(rng.integers(0, 9, (96, 12)))
    yield "hmm-tied", pc.hmm(seq_len=12, num_latents=6, vocab_size=9, homogeneous=True, seed=0), H, None
    yield "hmm-untied", pc.hmm(seq_len=12, num_latents=6, vocab_size=9, homogeneous=False, seed=0), H, \
        torch.from_numpy(rng.random((96, 12)) < 0.2)
    T = torch.from_numpy(rng.integers(0, 2000, (96, 6)))            # sparse leaf flows: 576 entries, 2000 rows
    yield "hmm-tied-sparse+missing", pc.hmm(seq_len=6, num_latents=4, vocab_size=2000, homogeneous=True, seed=3), T, \
        torch.from_numpy(rng.random((96, 6)) < 0.2)
    yield "hmm-one-edge", pc.hmm(seq_len=2, num_latents=3, vocab_size=9, homogeneous=True, seed=4), H[:, :2], None
    trees = [np.array([-1, 0, 0, 1, 1]), np.array([1, -1, 1, 2, 2]), np.array([-1, 0, 1, 2, 3])]
    parents, vm = varmap.super_tree(trees)
    tc = pc.TreeCircuit(tree_structure(parents, edge_order="bfs"), 4, 3, num_groups=3, num_heads=2, seed=0,
                        var_map=vm)
    yield "var_map", tc, torch.from_numpy(rng.integers(0, 3, (40, 3, 5))), None


CASES = list(_cases())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_lls_and_flows_equal_the_torch_path(monkeypatch, case):
    _, c, X, miss = case
    lls, ref = _both(monkeypatch, lambda: c.log_likelihood(X, missing=miss))
    _close(lls, ref)
    batch = {"x": X} if miss is None else {"x": X, "missing": miss}
    for sparse in (False, True):
        (f, l1), (g, l2) = _both(monkeypatch, lambda: pc.flows(c, batch, sparse=sparse))
        _close(f, g)
        _close(l1, l2)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_em_steps_equal_the_torch_path(monkeypatch, case):
    _, c, X, miss = case
    batch = {"x": X} if miss is None else {"x": X, "missing": miss}

    def run():
        cc = copy.deepcopy(c)
        for _ in range(3):
            f, _ = pc.flows(cc, batch, sparse=True)
            pc.update(cc, f, 0.3, 0.1)
        return {k: v.clone() for k, v in cc.params.items()}

    _close(*_both(monkeypatch, run), tol=5e-5)


@pytest.mark.parametrize("name", ["pos4", "posH", "shared", "chan"])
def test_lvd_circuit_equals_the_torch_path(monkeypatch, name):
    m = make_lvd(name, seed=3)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, m.num_cats, (50, int(np.prod(m.image_shape)))))
    miss = torch.from_numpy(rng.random(x.shape) < 0.3)
    _close(*_both(monkeypatch, lambda: m.log_likelihood(x, missing=miss)))
    z = torch.from_numpy(rng.integers(-1, m.num_states, (50, m.num_positions)))
    _close(*_both(monkeypatch, lambda: m.log_likelihood(x, z=z)))
    a, b = _both(monkeypatch, lambda: m.map_latents(x, missing=miss))
    assert torch.equal(a, b)


def test_soft_evidence_top_tree_equals_the_torch_path(monkeypatch):
    top = make_lvd("pos4", seed=2).top                # a tree without leaves: evidence only
    ev = torch.randn(30, 1, top.num_nodes, top.num_latents) * 4
    ev[0, 0, 2] = -float("inf")                      # an impossible state
    ev[1, 0, 3] = -float("inf")                      # a node with no possible state
    top_lls = lambda: top.log_likelihood(evidence=ev)   # noqa: E731
    a, b = _both(monkeypatch, top_lls)
    assert (b[1] <= -1e29).all() and (a[1] <= -1e29).all()     # impossible: log p at -1e30 on both paths
    _close(a[2:], b[2:])
    _close(a[0], b[0])


def test_samples_equal_the_torch_path(monkeypatch):
    _, c, X, miss = CASES[1]
    a, b = _both(monkeypatch, lambda: c.sample(64, x=X[:64], missing=miss[:64], seed=5))
    assert (a == b).float().mean() > 0.99          # the same draws (a last-bit difference may flip one)


def test_the_fused_path_is_taken_on_cpu_float32_only(monkeypatch):
    calls = []
    for mod, name in ((_fused, "up_level"), (_fused, "down_level"), (_fused_update, "em_update")):
        orig = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _o=orig, _n=name, **k: calls.append(_n) or _o(*a, **k))
    _, c, X, _ = CASES[0]
    c = copy.deepcopy(c)
    f, _ = pc.flows(c, {"x": X})
    pc.update(c, f, 0.1, 0.1)
    assert {"up_level", "down_level", "em_update"} <= set(calls)
    h = pc.hmm(seq_len=4, num_latents=3, vocab_size=500, homogeneous=True, seed=0)   # sparse leaf flows
    orig = _fused_update._sparse_step
    monkeypatch.setattr(_fused_update, "_sparse_step", lambda *a: calls.append("_sparse_step") or orig(*a))
    f, _ = pc.flows(h, {"x": torch.randint(0, 500, (8, 4))}, sparse=True)
    assert f["leaves"].is_sparse
    pc.update(h, f, 0.1, 0.1)
    assert "_sparse_step" in calls                                      # the kernel ran, not its fallback
    assert _fused.usable(torch.zeros(2), None)
    assert not _fused.usable(torch.zeros(2, dtype=torch.float64))       # float64: the torch path
    assert not _fused.usable(torch.zeros(2), torch.zeros(2, device="meta"))   # any table off the CPU
    p64 = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    assert not _fused_update.em_update(p64, torch.ones_like(p64), -1, 0.1, 0.1, MIN_DENOM)
    monkeypatch.setattr(_fused, "ENABLED", False)
    assert not _fused.usable(torch.zeros(2))


def test_em_update_matches_the_formula_by_hand():
    p = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    F = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    s, a = 0.25, 0.3
    want = p.clone()
    for r in range(3):
        if F[r].sum() + a > 0:
            want[r] = (1 - s) * p[r] + s * (F[r] + a / 3) / (F[r].sum() + a)
    got = p.clone()
    assert _fused_update.em_update(got, F, -1, s, a, MIN_DENOM)
    assert torch.allclose(got, want, atol=1e-7)
    kept = p.clone()                                  # no flow, no pseudocount: the row keeps its values
    assert _fused_update.em_update(kept, F, -1, s, 0.0, MIN_DENOM)
    assert torch.equal(kept[1], p[1])


def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    _, c, X, miss = CASES[1]
    n = torch.get_num_threads()
    out = []
    for t in (1, 2):
        torch.set_num_threads(t)
        try:
            out.append((c.log_likelihood(X, missing=miss), pc.flows(c, {"x": X, "missing": miss})[0]))
        finally:
            torch.set_num_threads(n)
    assert torch.equal(out[0][0], out[1][0])
    for k in out[0][1]:
        assert torch.equal(out[0][1][k], out[1][1][k])


def test_sparse_step_with_duplicate_rows_by_hand():
    """p[r] <- keep[d] p[r] + add[d] with d = r // n, then the entries' shares w[d] vals[e]
    (duplicates add up), for two distributions of 3 rows each, and the same whatever the
    number of row blocks."""
    p0 = torch.rand(6, 5)
    n = 3
    keep = torch.tensor([[0.9] * 5, [1.0] * 5])
    add = torch.rand(2, 5)
    w = torch.tensor([[1.0] * 5, [0.5] * 5])
    rows = torch.tensor([1, 4, 1, 0, 1, 5])
    dist = rows // n
    vals = torch.arange(30, dtype=torch.float32).view(6, 5)
    want = p0.clone()
    for r in range(6):
        want[r] = keep[r // n] * want[r] + add[r // n]
    for e in range(6):
        want[rows[e]] += vals[e] * w[dist[e]]
    p = p0.clone()
    assert _fused_update.sparse_step(p, n, keep, add, w, rows, vals, dist)
    torch.testing.assert_close(p, want, rtol=1e-6, atol=1e-6)
    for nblk in (1, 2, 7):
        q = p0.clone()
        _fused_update._sparse_step(q.numpy(), n, keep.numpy(), add.numpy(), rows.numpy(), vals.numpy(), w.numpy(),
                            dist.numpy(), nblk)
        assert torch.equal(q, p)
    assert not _fused_update.sparse_step(p.double(), n, keep, add, w, rows, vals, dist)   # float64: torch's path


def test_kernel_views_copy_inputs_and_refuse_strided_outputs():
    """The kernels see [n * G * B, K] views: a strided input is copied, a strided output (the
    kernel would write into a copy) is an error, not silently lost work."""
    t = torch.arange(24, dtype=torch.float32).view(2, 3, 4).transpose(0, 1)   # not contiguous
    assert np.array_equal(_fused._flat(t, None), t.reshape(-1).numpy())
    with pytest.raises(ValueError, match="contiguous"):
        _fused._rows(t, None, out=True)
    u = torch.zeros(2, 1, 3, 4)
    assert np.shares_memory(_fused._rows(u, None, out=True), u.numpy())


@pytest.mark.parametrize("unique_rows", [True, False])
def test_down_level_by_hand(unique_rows):
    """a = u * rw for the first nmul nodes, the leaf flows of a (missing values skipped; with
    zero_rows = C each (node, group) first zeroes its own rows: the table may start as garbage),
    and the next level's r = a_parent / M for its edge nodes and u = a_parent for its copies."""
    nk, G, B, K, C = 3, 2, 5, 4, 6
    g = torch.Generator().manual_seed(0)
    uk = torch.rand(nk, G, B, K, generator=g)
    rw = torch.rand(2, G, B, K, generator=g)
    xs = torch.randint(0, C, (nk, G, B), generator=g)
    miss = torch.rand(nk, G, B, generator=g) < 0.3
    base = (torch.arange(nk)[:, None] * G + torch.arange(G)[None, :]) * C
    par = torch.tensor([2, 0, 2, 1])                       # the next level: 4 nodes, 3 edge nodes first
    order = np.argsort(par.numpy(), kind="stable")
    ptr = np.zeros(nk + 1, np.int64)
    np.cumsum(np.bincount(par.numpy(), minlength=nk), out=ptr[1:])
    m_next = torch.rand(3, G, B, K, generator=g) + 0.5
    u_next = torch.full((4, G, B, K), float("nan"))
    r_next = torch.full((3, G, B, K), float("nan"))
    a = uk.clone()
    a[:2] *= rw
    want = torch.zeros(nk * G * C, K)
    for j in range(nk):
        for gg in range(G):
            for b in range(B):
                if not miss[j, gg, b]:
                    want[base[j, gg] + xs[j, gg, b]] += a[j, gg, b]
    flows = torch.full((nk * G * C, K), float("nan")) if unique_rows else torch.zeros(nk * G * C, K)
    _fused.down_level(uk, rw, 2, flows, base, xs, 1, miss, unique_rows, C if unique_rows else 0,
                      (ptr, order.astype(np.int64)), 3, m_next, u_next, r_next)
    torch.testing.assert_close(uk, a)
    torch.testing.assert_close(flows, want)
    torch.testing.assert_close(r_next, a[par[:3]] / m_next)
    torch.testing.assert_close(u_next[3], a[par[3]])
    assert torch.isnan(u_next[:3]).all()                  # edge nodes' u is not touched


_CACHE_PROBE = """
import sys, numpy as np, torch
from lvd.pc import _fused
unique = sys.argv[1] == "par"
nk, G, B, K, C = 2, 1, 4, 4, 3
uk, rw = torch.rand(nk, G, B, K), torch.rand(1, G, B, K)
xs = torch.zeros(nk, G, B, dtype=torch.int64)
base = torch.arange(nk)[:, None] * C
_fused.down_level(uk, rw, 1, torch.zeros(nk * C, K), base, xs, 1, None, unique, 0)
fn = _fused._down_level_par if unique else _fused._down_level_ser
print(sum(fn.stats.cache_hits.values()), sum(fn.stats.cache_misses.values()))
"""


def test_the_parallel_and_serial_down_kernels_keep_their_own_cache_entries(tmp_path):
    """The serial variant compiled first into a fresh numba cache is not what a later process
    loads as the parallel one (they once shared one entry: the parallel kernel then ran on one
    thread), and each variant's entry is reused."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def run(variant):
        r = subprocess.run([sys.executable, "-c", _CACHE_PROBE, variant], env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return tuple(int(v) for v in r.stdout.split())

    assert run("ser") == (0, 1)        # compiled and saved
    assert run("par") == (0, 1)        # not served the serial code: compiled on its own
    assert run("par") == (1, 0) and run("ser") == (1, 0)   # both reused
    assert _fused._down_level_par._cache._cache_file._index_name != \
        _fused._down_level_ser._cache._cache_file._index_name


def test_the_kernels_leave_torchs_thread_count_alone():
    """Starting numba's OpenMP workers used to reset the process's OpenMP thread count, so a
    torch.set_num_threads(1) before the first fused kernel was lost."""
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, c, X, _ = CASES[0]
        pc.flows(copy.deepcopy(c), {"x": X})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("stream", [0, 6])
def test_up_level_by_hand(stream):
    """u = leaf row (1 where missing) x the children's messages (edge children: msg, copies: u),
    normalized to sum 1 with m its sum; the same with the node's leaf rows streamed first
    (C = 6) or not (C = 0)."""
    n, G, B, K, C = 3, 2, 37, 4, 6                         # B not a multiple of the block size
    g, leaves, base, xs, miss, par, order, ptr = tiny_level(n, G, B, K, C, seed=1)
    msg = torch.rand(3, G, B, K, generator=g) + 0.1
    uk = torch.rand(4, G, B, K, generator=g) + 0.1
    want = leaves[base[:, :, None] + xs]                   # [n, G, B, K]
    want[miss] = 1.0
    for c in range(4):
        want[par[c]] *= msg[c] if c < 3 else uk[c]
    want_m = want.sum(-1)
    u, s, m = torch.empty(n, G, B, K), torch.empty(n, G, B), torch.empty(n, G, B)
    _fused.up_level(u, s, m, msg, uk, (ptr, order), 3, 8, leaves, base, xs, 1, miss, None, stream)
    torch.testing.assert_close(m, want_m)
    torch.testing.assert_close(u, want / want_m[..., None])
    assert torch.equal(s, torch.zeros_like(s))


def test_the_shared_edge_row_path_is_taken_where_every_edge_shares_a_row():
    """lvd.pc.treell._down_fused sums a homogeneous HMM's edge flows in one matmul after the
    level loop (the cases above compare it with the torch path); HCLTs, untied HMMs and trees
    with copies keep the per-level matmuls."""
    got = {name: _fused.shared_edge_row(c.structure) for name, c, _, _ in CASES if hasattr(c, "structure")}
    assert got["hmm-tied"] == 0 and got["hmm-tied-sparse+missing"] == 0 and got["hmm-one-edge"] == 0
    assert got["hmm-untied"] == -1 and got["hclt"] == -1 and got["hclt-copies+missing"] == -1


def test_flows_go_through_a_level_buffer_only_where_no_node_flows_are_read(monkeypatch):
    """lvd.pc.treell._down_fused writes a into a one-level buffer (``a_in_rw`` on an HCLT) when
    the backward reads no node's flows afterwards (dense leaf flows, no evidence), and keeps
    them in u where the sparse leaf flows or an evidence gradient read them."""
    seen = []
    real = _fused.down_level

    def spy(*a, **k):
        seen.append(bool(k.get("a_in_rw")))
        return real(*a, **k)

    monkeypatch.setattr(_fused, "down_level", spy)
    cases = {name: (c, X, miss) for name, c, X, miss in CASES}
    c, X, _ = cases["hclt"]
    pc.flows(c, {"x": X}, sparse=False)
    assert seen and all(seen)
    seen.clear()
    hmm = pc.hmm(seq_len=6, num_latents=4, vocab_size=2000, homogeneous=False, seed=3)   # untied: per-level edge flows
    X = torch.from_numpy(np.random.default_rng(0).integers(0, 2000, (96, 6)))
    f, _ = pc.flows(hmm, {"x": X}, sparse=True)            # sparse emission flows: they read every node's a
    assert any(v.is_sparse for v in f.values())
    assert seen and not any(seen)
    seen.clear()
    m = make_lvd("pos4", seed=3)                            # patch trees (dense leaves) feed the top tree as
    x = torch.from_numpy(np.random.default_rng(1).integers(0, m.num_cats, (50, int(np.prod(m.image_shape)))))
    f, _ = pc.flows(m, {"x": x})                           # evidence: its gradient reads every top node's a
    assert set(seen) == {True, False} and "top.edges" in f
