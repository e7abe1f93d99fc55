"""The compiled K x K products (lvd.pc._gemm): each kernel against float64 products, the calls it
declines, results independent of threads and blocking, the build (cache name, failures, a
miscompiled library refused), and the engine with and without them."""

from __future__ import annotations

import ctypes
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lvd import pc
from lvd.pc import _fused, _gemm, kernels

from level_cases import tiny_level

em = importlib.import_module("lvd.pc.em")

needs_kernels = pytest.mark.skipif(not _gemm.available(), reason=f"compiled kernels unavailable: {_gemm.reason()}")
needs_cc = pytest.mark.skipif(_gemm._compiler() is None or not _fused.ENABLED, reason="no C compiler or no numba")


@pytest.fixture(autouse=True)
def engine_path():
    """(Overrides conftest's: these tests call the kernels themselves, in kernel mode
    ``compiled``, so that they serve whatever lvd.pc.kernels would measure here.)"""
    with kernels.forced("compiled"):
        yield


def _f64(t):
    return t.double()


@needs_kernels
@pytest.mark.parametrize("K", [16, 32, 48, 128])
@pytest.mark.parametrize("rows", [1, 7, 64, 65, 200])
def test_products_match_float64(K, rows):
    g = torch.Generator().manual_seed(K * 1000 + rows)
    a = torch.rand(3, 2, rows, K, generator=g)
    u = torch.rand(3, 2, rows, K, generator=g)
    w = torch.rand(3, 2, K, K, generator=g)
    out = torch.full((3, 2, rows, K), float("nan"))
    assert _gemm.mm(a, w, out) is out
    torch.testing.assert_close(out.double(), _f64(a) @ _f64(w), rtol=1e-5, atol=1e-5)
    assert _gemm.mm(a, _gemm.transposed(w), out) is out                 # the upward M = u W^T
    torch.testing.assert_close(out.double(), _f64(a) @ _f64(w).transpose(-1, -2), rtol=1e-5, atol=1e-5)
    g_out = torch.full((3, 2, K, K), float("nan"))
    assert _gemm.tmm(a, u, g_out) is g_out
    torch.testing.assert_close(g_out.double(), _f64(a).transpose(-1, -2) @ _f64(u), rtol=1e-5, atol=1e-4)
    wt = _gemm.transposed(w)
    torch.testing.assert_close(wt, w.transpose(-1, -2))
    assert wt.is_contiguous()


@needs_kernels
def test_signed_values_and_zero_rows():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 33, 32, generator=g)
    w = torch.randn(5, 32, 32, generator=g)
    out = torch.empty_like(a)
    _gemm.mm(a, w, out)
    torch.testing.assert_close(out.double(), _f64(a) @ _f64(w), rtol=1e-5, atol=1e-5)
    empty = torch.empty(5, 0, 32)
    g_out = torch.full((5, 32, 32), 3.0)
    assert _gemm.tmm(empty, empty, g_out) is g_out and bool((g_out == 0).all())   # a sum over no rows
    assert _gemm.mm(empty, w, torch.empty(5, 0, 32)) is not None


@needs_kernels
def test_calls_it_does_not_serve_return_none():
    a, w = torch.rand(2, 10, 32), torch.rand(2, 32, 32)
    out = torch.empty(2, 10, 32)
    assert _gemm.mm(torch.rand(2, 10, 8), torch.rand(2, 8, 8), torch.empty(2, 10, 8)) is None    # K % 16
    assert _gemm.mm(torch.rand(2, 10, 24), torch.rand(2, 24, 24), torch.empty(2, 10, 24)) is None
    assert _gemm.mm(a.double(), w.double(), out.double()) is None                               # float64
    assert _gemm.mm(a.transpose(0, 1).contiguous().transpose(0, 1), w, out) is None            # strided a
    assert _gemm.mm(a, w, torch.empty(2, 32, 10).transpose(1, 2)) is None                      # strided out
    assert _gemm.mm(a, w.transpose(1, 2), out) is None                                         # strided w
    assert _gemm.transposed(w.transpose(1, 2)) is None                                         # strided table
    assert _gemm.mm(a, torch.rand(1, 32, 32), out) is None                                     # no broadcasting
    assert _gemm.tmm(a, torch.rand(2, 11, 32), torch.empty(2, 32, 32)) is None
    assert _gemm.transposed(torch.rand(3, 8, 8)) is None
    big = torch.rand(1, 4, kernels.MAX_K + 16)                                                  # K > MAX_K
    assert _gemm.mm(big, torch.rand(1, kernels.MAX_K + 16, kernels.MAX_K + 16), torch.empty_like(big)) is None


@needs_kernels
def test_results_do_not_depend_on_threads_or_blocking(monkeypatch):
    g = torch.Generator().manual_seed(2)
    a, u = torch.rand(7, 300, 32, generator=g), torch.rand(7, 300, 32, generator=g)
    w = torch.rand(7, 32, 32, generator=g)

    def run():
        o1, o2 = torch.empty(7, 300, 32), torch.empty(7, 32, 32)
        _gemm.mm(a, w, o1)
        _gemm.tmm(a, u, o2)
        return o1, o2

    ref = run()
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
    finally:
        torch.set_num_threads(n)
    monkeypatch.setattr(kernels, "ROW_BLOCK", 17)
    blocked = run()
    for x in (one, blocked):
        assert torch.equal(x[0], ref[0]) and torch.equal(x[1], ref[1])


def _engine_step(circuit, x):
    f, lls = em.flows(circuit, {"x": x}, sparse=False)
    return f, lls


def _compare_with_and_without(monkeypatch, make, x):
    c1 = make()
    f1, l1 = _engine_step(c1, x)
    with monkeypatch.context() as m:
        m.setattr(_gemm, "_serves", lambda K: False)
        c2 = make()
        f2, l2 = _engine_step(c2, x)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-4)
    assert f1.keys() == f2.keys()
    for k in f1:
        a, b = (t.to_dense() if t.is_sparse else t for t in (f1[k], f2[k]))
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale)


@needs_kernels
@pytest.mark.parametrize("K", [16, 32, 48])
def test_engine_flows_equal_with_and_without_the_kernels(monkeypatch, K):
    rng = np.random.default_rng(K)
    X = torch.from_numpy(rng.integers(0, 9, (80, 31)))
    _compare_with_and_without(monkeypatch, lambda: pc.hclt(X, num_latents=K, num_cats=9, seed=0, leaf_latents=True), X)
    _compare_with_and_without(monkeypatch, lambda: pc.hclt(X, num_latents=K, num_cats=9, seed=1), X)   # copies
    H = torch.from_numpy(rng.integers(0, 11, (64, 9)))
    for homogeneous in (True, False):
        _compare_with_and_without(
            monkeypatch, lambda: pc.hmm(seq_len=9, num_latents=K, vocab_size=11, homogeneous=homogeneous, seed=0), H)


@needs_kernels
def test_lvd_circuit_with_groups_equal_with_and_without_the_kernels(monkeypatch):
    """Patch circuits ([n, G, B, K] level tensors, a group per (position, state)) and an HCLT
    top over the positions, both at K = 16; the top tree's evidence gradient flows too."""
    X = torch.from_numpy(np.random.default_rng(4).integers(0, 5, (48, 16)))

    def make():
        return pc.lvd_circuit(image_shape=(4, 4, 1), patch_size=2, num_states=3, num_latents=16, num_cats=5,
                              top_parents=[-1, 0, 0, 1], patch_parents=[-1, 0, 0, 1], mode="position",
                              top="hclt", top_num_latents=16, seed=0)

    _compare_with_and_without(monkeypatch, make, X)


@needs_kernels
def test_the_engine_takes_the_kernels(monkeypatch):
    calls = []
    for name in ("mm", "tmm"):
        fn = getattr(_gemm, name)
        monkeypatch.setattr(_gemm, name, lambda *a, _fn=fn, _n=name: calls.append(_n) or _fn(*a))
    X = torch.from_numpy(np.random.default_rng(0).integers(0, 5, (40, 12)))
    c = pc.hclt(X, num_latents=32, num_cats=5, seed=0, leaf_latents=True)
    _engine_step(c, X)
    assert "mm" in calls and "tmm" in calls


# --- the build -------------------------------------------------------------------------------

def _fresh(env_extra, code):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@needs_cc
def test_build_writes_one_library_per_cpu_and_reuses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LVD_CACHE_DIR", str(tmp_path))
    cc = _gemm._compiler()
    a = _gemm._build(cc)
    assert a.parent == tmp_path and a.name.startswith("gemm-") and a.suffix == ".so"
    mtime = a.stat().st_mtime_ns
    assert _gemm._build(cc) == a and a.stat().st_mtime_ns == mtime          # reused, not rebuilt
    monkeypatch.setattr(kernels, "cpu_flags", lambda: "some other cpu")
    b = _gemm._build(cc)
    assert b != a and b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, b.name])   # no temporaries left


@needs_cc
def test_a_failing_compiler_leaves_torch_matmuls_with_a_reason(tmp_path):
    code = ("from lvd.pc import _gemm; import torch; print(_gemm.available()); print(_gemm.reason());"
            "a = torch.rand(2, 5, 32); w = torch.rand(2, 32, 32); print(_gemm.mm(a, w, torch.empty(2, 5, 32)))")
    r = _fresh({"LVD_CACHE_DIR": str(tmp_path), "CC": "false"}, code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "False" and "failed" in lines[1] and lines[2] == "None"
    assert "using torch's matmuls" in r.stderr
    assert list(tmp_path.iterdir()) == []                                     # nothing half-written
    for env, mode in (({"LVD_KERNELS": "numba"}, "numba"), ({"LVD_NO_CGEMM": "1"}, "numba"),
                      ({"LVD_KERNELS": "torch"}, "torch"), ({"LVD_NO_FUSED": "1"}, "torch")):
        r = _fresh(env, code)                            # switched off: nothing to say
        assert r.stdout.splitlines()[:2] == ["False", f"switched off (kernel mode {mode})"], env
        assert "torch's matmuls" not in r.stderr


@needs_cc
def test_a_library_that_computes_wrong_products_is_refused(tmp_path):
    src = tmp_path / "bad.c"
    src.write_text("void lvd_nn(const float *a, const float *b, float *c, long rows, long K)"
                   "{ for (long i = 0; i < rows * K; i++) c[i] = 1.0f; }\n"
                   "void lvd_tn(const float *r, const float *u, float *g, long rows, long K, long i0, long i1)"
                   "{ for (long i = i0 * K; i < i1 * K; i++) g[i] = 0.0f; }\n")
    so = tmp_path / "bad.so"
    subprocess.run([_gemm._compiler(), "-shared", "-fPIC", str(src), "-o", str(so)], check=True)
    lib = ctypes.CDLL(str(so))
    v, i = ctypes.c_void_p, ctypes.c_long
    lib.lvd_nn.argtypes, lib.lvd_tn.argtypes = [v, v, v, i, i], [v, v, v, i, i, i, i]
    with pytest.raises(RuntimeError, match="lvd_nn disagrees with numpy"):
        _gemm._check(lib)


@needs_kernels
def test_the_downward_products_run_inside_the_level_kernel_where_they_fit(monkeypatch):
    """HCLT EM step (dense leaf flows, distinct leaf rows per node; kernels.FUSE_DOWN_MIN_K
    lowered to this K): the levels of at least kernels.FUSE_MIN_PAIRS pairs take their products inside down_level (r alternating between two
    buffers), the others the separate calls; the flows equal those of the separate products."""
    seen = []
    real = _fused.down_level

    def spy(*a, products=None, **k):
        seen.append(products is not None)
        return real(*a, products=products, **k)

    X = torch.from_numpy(np.random.default_rng(5).integers(0, 7, (64, 40)))

    def make():
        return pc.hclt(X, num_latents=32, num_cats=7, seed=0, leaf_latents=True)

    monkeypatch.setattr(_fused, "down_level", spy)
    monkeypatch.setattr(kernels, "FUSE_DOWN_MIN_K", 32)
    f1, l1 = _engine_step(make(), X)
    assert any(seen) and not all(seen)          # the root level has no products; wide levels fuse
    seen.clear()
    monkeypatch.setattr(kernels, "FUSE_DOWN_MIN_K", 64)
    f2, l2 = _engine_step(make(), X)
    assert not any(seen)                        # K below FUSE_DOWN_MIN_K: separate products
    torch.testing.assert_close(l1, l2, rtol=0, atol=0)
    for k in f1:
        torch.testing.assert_close(f1[k], f2[k], rtol=0, atol=0)   # the same sums, in the same order


@needs_kernels
@pytest.mark.parametrize("with_leaves", [True, False])
def test_up_level_with_products_by_hand(with_leaves):
    """up_level computing its children's messages msg = uk[:ne] wt itself (``products``): msg is
    written with the values of the separate ``_gemm.mm`` (bit for bit) and u, m are the node
    products of those messages (edge children) and of uk (the copy), as by hand."""
    n, G, B, K, C = 3, 2, 37, 16, 6
    g, leaves, base, xs, miss, par, order, ptr = tiny_level(n, G, B, K, C, seed=2)
    uk = torch.rand(4, G, B, K, generator=g) + 0.1
    wt = torch.rand(3, G, K, K, generator=g)
    sep = torch.empty(3, G, B, K)
    assert _gemm.mm(uk[:3], wt, sep) is not None
    want = leaves[base[:, :, None] + xs] if with_leaves else torch.ones(n, G, B, K)
    if with_leaves:
        want[miss] = 1.0
    for c in range(4):
        want[par[c]] *= uk[c] @ wt[c] if c < 3 else uk[c]
    want_m = want.sum(-1)
    u, s, m, msg = torch.empty(n, G, B, K), torch.empty(n, G, B), torch.empty(n, G, B), torch.full((3, G, B, K), -1.0)
    lv = (leaves, base, xs, 1, miss) if with_leaves else (None, None, None, 1, None)
    _fused.up_level(u, s, m, msg, uk, (ptr, order), 3, 8, *lv, None, C if with_leaves else 0,
                    products=(_gemm.address("nn"), wt))
    assert torch.equal(msg, sep)
    torch.testing.assert_close(m, want_m, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(u, want / want_m[..., None], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="contiguous tables"):
        _fused.up_level(u, s, m, msg, uk, (ptr, order), 3, 8, *lv, None, 0,
                        products=(_gemm.address("nn"), wt.transpose(-1, -2)))


@needs_kernels
def test_the_upward_messages_run_inside_the_level_kernel_where_they_fit(monkeypatch):
    """HCLT flows: at K <= kernels.FUSE_UP_MAX_K the levels of at least kernels.FUSE_MIN_PAIRS
    parent pairs compute their children's messages inside up_level, the others with the
    separate products; above FUSE_UP_MAX_K none does; likelihoods and flows equal those of the separate products bit for bit
    (missing values included)."""
    seen = []
    real = _fused.up_level

    def spy(*a, products=None, **k):
        seen.append(products is not None)
        return real(*a, products=products, **k)

    rng = np.random.default_rng(6)
    X = torch.from_numpy(rng.integers(0, 7, (64, 40)))
    miss = torch.from_numpy(rng.random((64, 40)) < 0.2)

    def step(K):
        c = pc.hclt(X, num_latents=K, num_cats=7, seed=0, leaf_latents=True)
        return em.flows(c, {"x": X, "missing": miss}, sparse=False)

    monkeypatch.setattr(_fused, "up_level", spy)
    f1, l1 = step(32)
    assert any(seen) and not all(seen)          # the deepest level has no children; wide levels fuse
    seen.clear()
    monkeypatch.setattr(kernels, "FUSE_UP_MAX_K", 16)
    f2, l2 = step(32)
    assert seen and not any(seen)               # K above FUSE_UP_MAX_K: separate products
    assert torch.equal(l1, l2)
    for k in f1:
        assert torch.equal(f1[k], f2[k]), k


@needs_cc
def test_a_failed_check_falls_back_with_one_line(monkeypatch, capsys):
    """A library that builds but fails its check against numpy is not used: torch's matmuls,
    the reason in reason(), one line on stderr."""
    def bad(lib):
        raise RuntimeError("lvd_nn disagrees with numpy at K = 16 (max error 1)")
    monkeypatch.setattr(_gemm, "_STATE", {})
    monkeypatch.setattr(_gemm, "_check", bad)
    assert not _gemm.available()
    assert "disagrees with numpy" in _gemm.reason()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiled kernels unavailable" in err[0] and "using torch's matmuls" in err[0]
    a, w = torch.rand(1, 4, 32), torch.rand(1, 32, 32)
    assert _gemm.mm(a, w, torch.empty(1, 4, 32)) is None
