"""lvd.pc.kernels: implementations chosen by measurement (scripted clocks, no timed tests), the
cache of choices keyed by the CPU and the engine's sources, the modes, the compiled products
built for every vector width, and the passes' results whichever path serves them."""

from __future__ import annotations

import ctypes
import importlib
import json
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from lvd import pc
from lvd.pc import _fused, _gemm, kernels

em = importlib.import_module("lvd.pc.em")


@pytest.fixture(autouse=True)
def engine_path(tmp_path, monkeypatch):
    """(Overrides conftest's.) Each test starts in mode auto with an empty cache of choices in a
    temporary directory."""
    monkeypatch.setenv("LVD_CACHE_DIR", str(tmp_path))
    kernels.forget()
    with kernels.forced("auto"):
        yield
    kernels.forget()


class Clock:
    """A scripted clock: each candidate advances it by its cost when it runs."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def runner(self, cost, calls=None, name=None):
        def factory():
            def run():
                self.t += cost
                if calls is not None:
                    calls.append(name)
            return run
        return factory


def test_the_fastest_candidate_wins_and_a_slow_one_never_does():
    clock = Clock()
    calls = []
    cands = {"torch": clock.runner(2.0, calls, "torch"), "slow": clock.runner(50.0, calls, "slow"),
             "fast": clock.runner(1.0, calls, "fast")}
    assert kernels.choose("test", ("a",), cands, clock=clock) == "fast"
    assert calls.count("torch") == calls.count("slow") == calls.count("fast") == 1 + kernels.ROUNDS
    calls.clear()
    assert kernels.choose("test", ("a",), cands, clock=clock) == "fast" and calls == []   # remembered
    slow_only = {"torch": clock.runner(2.0), "slow": clock.runner(2.5)}
    assert kernels.choose("test", ("b",), slow_only, clock=clock) == "torch"


def test_a_failing_fast_path_is_dropped_with_a_warning(caplog):
    clock = Clock()

    def broken():
        raise RuntimeError("no such kernel")
    with caplog.at_level("WARNING", logger="lvd.pc.kernels"):
        got = kernels.choose("test", ("fail",), {"torch": clock.runner(2.0), "fast": broken}, clock=clock)
    assert got == "torch"
    assert "the fast path failed (RuntimeError: no such kernel); not used" in caplog.text
    with pytest.raises(RuntimeError, match="no such kernel"):     # the reference's failure is the caller's
        kernels.choose("test", ("fail2",), {"torch": broken, "fast": clock.runner(1.0)}, clock=clock)


def test_the_reference_wins_ties_and_must_be_a_candidate():
    clock = Clock()
    assert kernels.choose("test", ("tie",), {"x": clock.runner(1.0), "torch": clock.runner(1.0)},
                          clock=clock) == "torch"
    with pytest.raises(ValueError, match="reference 'torch'"):
        kernels.choose("test", ("none",), {"x": clock.runner(1.0)}, clock=clock)


def test_the_median_of_the_timed_runs_decides_not_the_warm_up():
    """A candidate whose first run (the warm-up: numba loading its code) is slow, then fast."""
    clock = Clock()
    runs = []

    def first_slow():
        def run():
            clock.t += 100.0 if not runs else 1.0
            runs.append(1)
        return run

    assert kernels.choose("test", ("warm",), {"torch": clock.runner(2.0), "jit": first_slow}, clock=clock) == "jit"


def test_choices_persist_in_a_file_keyed_by_the_cpu_and_sources(tmp_path, monkeypatch):
    clock = Clock()
    kernels.choose("test", ("p",), {"torch": clock.runner(2.0), "fast": clock.runner(1.0)}, clock=clock)
    path = kernels.cache_file()
    assert path.parent == tmp_path and path.exists()
    data = json.loads(path.read_text())
    assert data["identity"] == kernels._identity() and data["choices"]["test|p"]["chosen"] == "fast"
    kernels.forget()                                   # a new process: read from the file, not measured
    never = {"torch": clock.runner(2.0), "fast": lambda: pytest.fail("measured again")}
    assert kernels.choose("test", ("p",), never, clock=clock) == "fast"
    kernels.forget()                                   # another CPU: another file, measured anew
    monkeypatch.setattr(kernels, "cpu_flags", lambda: "another cpu")
    assert kernels.cache_file() != path
    assert kernels.choose("test", ("p",), {"torch": clock.runner(1.0), "fast": clock.runner(3.0)},
                          clock=clock) == "torch"


@pytest.mark.parametrize("content", ["{not json", '{"identity": {"cpu_model": "other"}, "choices": '
                                     '{"test|q": {"chosen": "fast", "seconds": {"torch": 1, "fast": 0}}}}'])
def test_a_damaged_or_foreign_cache_file_is_ignored(content):
    path = kernels.cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    kernels.forget()
    clock = Clock()
    assert kernels.choose("test", ("q",), {"torch": clock.runner(1.0), "fast": clock.runner(2.0)},
                          clock=clock) == "torch"
    assert json.loads(path.read_text())["identity"] == kernels._identity()   # rewritten


def test_a_cached_choice_among_fewer_candidates_is_measured_again():
    clock = Clock()
    kernels.choose("test", ("r",), {"torch": clock.runner(2.0), "numba": clock.runner(1.0)}, clock=clock)
    got = kernels.choose("test", ("r",), {"torch": clock.runner(2.0), "numba": clock.runner(1.0),
                                          "compiled": clock.runner(0.5)}, clock=clock)
    assert got == "compiled"


def test_modes(monkeypatch):
    for env, want in (({}, "auto"), ({"LVD_KERNELS": "numba"}, "numba"), ({"LVD_NO_FUSED": "1"}, "torch"),
                      ({"LVD_NO_CGEMM": "1"}, "numba"), ({"LVD_KERNELS": "Compiled"}, "compiled")):
        for k in ("LVD_KERNELS", "LVD_NO_FUSED", "LVD_NO_CGEMM"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert kernels._env_mode() == want
    monkeypatch.setenv("LVD_KERNELS", "fast")
    with pytest.raises(ValueError, match="LVD_KERNELS='fast': expected one of auto, torch, numba, compiled"):
        kernels._env_mode()
    with pytest.raises(ValueError, match="kernel mode"):
        kernels.set_mode("gpu")
    with kernels.forced("torch"):
        assert kernels.mode() == "torch" and not _fused.usable(torch.zeros(1))
        assert not kernels.products_on(32)
    assert kernels.mode() == "auto"


def test_a_forced_mode_is_not_measured(monkeypatch):
    monkeypatch.setattr(kernels, "choose", lambda *a, **k: pytest.fail("measured in a forced mode"))
    for m in ("torch", "numba", "compiled"):
        with kernels.forced(m):
            assert kernels.pass_path("up", ("k",), 32, lambda p: pytest.fail("ran")) == m


def test_the_isa_and_model_are_named():
    assert kernels.vector_isa() in ("avx512", "avx2", "avx", "sse4.2", "neon", platform.machine())
    assert kernels.cpu_model()


def _hclt_flows(X, K, rows=None, **kw):
    c = pc.hclt(X, num_latents=K, num_cats=7, seed=0, leaf_latents=True)
    if rows is not None:
        X, kw = X[:rows], {k: v[:rows] for k, v in kw.items()}
    return em.flows(c, {"x": X, **kw}, sparse=False)


@pytest.mark.skipif(not _fused.ENABLED, reason="numba missing")
@pytest.mark.parametrize("K", [16, 24])
def test_auto_measures_each_pass_once_and_matches_the_reference(K):
    """In mode auto the first flows of a shape time the candidates of the upward and the
    backward pass (torch, numba, and compiled where the products won their probe at K), keep a
    choice per pass, and give the torch path's flows whichever wins."""
    rng = np.random.default_rng(3)
    X = torch.from_numpy(rng.integers(0, 7, (40, 12)))
    miss = torch.from_numpy(rng.random((40, 12)) < 0.2)
    f, lls = _hclt_flows(X, K, missing=miss)
    ch = kernels.choices()
    ups = [v for k, v in ch.items() if k.startswith("up|")]
    downs = [v for k, v in ch.items() if k.startswith("down|")]
    assert len(ups) == 1 and len(downs) == 1
    for rec in ups + downs:
        assert {"torch", "numba"} <= set(rec["seconds"]) and rec["chosen"] in rec["seconds"]
        assert ("compiled" in rec["seconds"]) == (K % 16 == 0 and kernels.products_viable(K))
    with kernels.forced("torch"):
        f_ref, lls_ref = _hclt_flows(X, K, missing=miss)
    torch.testing.assert_close(lls, lls_ref, rtol=1e-5, atol=1e-5)
    for k in f:
        torch.testing.assert_close(f[k], f_ref[k], rtol=1e-4, atol=1e-5)
    n = len(kernels.choices())
    _hclt_flows(X, K, rows=33, missing=miss)           # a smaller batch, the same power of two
    assert len(kernels.choices()) == n


@pytest.mark.skipif(not _fused.ENABLED, reason="numba missing")
@pytest.mark.parametrize("winner", ["torch", "numba"])
def test_the_chosen_path_is_the_one_that_runs(monkeypatch, winner):
    """Whatever the measurement says, that path runs: a scripted choice of torch never enters
    the fused kernels, a choice of numba never enters the compiled products."""
    monkeypatch.setattr(kernels, "choose", lambda kind, key, cands, **k: winner)
    entered = []
    real_up, real_down, real_mm = _fused.up_level, _fused.down_level, _gemm.mm

    def mm(*a, **k):
        out = real_mm(*a, **k)
        if out is not None:
            entered.append("compiled")
        return out
    monkeypatch.setattr(_fused, "up_level", lambda *a, **k: entered.append("fused") or real_up(*a, **k))
    monkeypatch.setattr(_fused, "down_level", lambda *a, **k: entered.append("fused") or real_down(*a, **k))
    monkeypatch.setattr(_gemm, "mm", mm)
    X = torch.from_numpy(np.random.default_rng(4).integers(0, 7, (32, 10)))
    _hclt_flows(X, 32)
    if winner == "torch":
        assert entered == []
    else:
        assert "fused" in entered and "compiled" not in entered


@pytest.mark.skipif(not _fused.ENABLED or _gemm._compiler() is None, reason="no numba or no C compiler")
def test_products_that_lose_their_probe_by_far_are_not_candidates(monkeypatch):
    monkeypatch.setattr(kernels, "_products", lambda K: {"chosen": "torch", "seconds": {"torch": 1.0, "compiled": 2.0}})
    seen = {}

    def spy(kind, key, cands, **k):
        seen[kind] = sorted(cands)
        return "torch"
    monkeypatch.setattr(kernels, "choose", spy)
    assert kernels.pass_path("up", ("x",), 32, lambda p: (lambda: None)) == "torch"
    assert seen["up"] == ["numba", "torch"]
    assert not kernels.products_on(32)               # nor used outside a pass


@pytest.mark.skipif(not _fused.ENABLED or _gemm._compiler() is None, reason="no numba or no C compiler")
def test_a_slow_compiled_product_is_never_chosen(monkeypatch):
    """The product probe with compiled kernels made slow on purpose: torch's matmuls win."""
    import time as time_

    if not _gemm.available():
        pytest.skip(f"compiled kernels unavailable: {_gemm.reason()}")
    real = _gemm.mm

    def slow(*a, **k):
        time_.sleep(0.02)
        return real(*a, **k)
    monkeypatch.setattr(_gemm, "mm", slow)
    assert not kernels.products_win(16)
    assert kernels.choices()[f"products|16|{torch.get_num_threads()}"]["chosen"] == "torch"


def _isa_flags():
    """-march targets of every vector width this machine runs, with the width each compiles."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    flags = set(kernels.cpu_flags().split())
    out = [("-march=x86-64", 4)]
    if "avx2" in flags and "fma" in flags:
        out.append(("-march=haswell", 8))
    if "avx512f" in flags:
        out.append(("-march=skylake-avx512", 16))
    return out


@pytest.mark.skipif(_gemm._compiler() is None or not _isa_flags(), reason="no C compiler or not x86-64")
@pytest.mark.parametrize("march,width", _isa_flags() or [("", 0)])
def test_the_products_compile_for_each_vector_width(tmp_path, march, width):
    """_gemm.c built for SSE (4 floats), AVX2 (8) and AVX-512 (16), as far as this CPU runs
    them: each reports its width and tile height and passes the check against numpy at K = 16,
    32 and 48 (tiles of two vectors and the one-vector tail)."""
    so = tmp_path / "g.so"
    flags = [f if f != "-march=native" else march for f in _gemm.FLAGS]   # (LVD_GEMM_MARCH: _gemm.flags())
    res = subprocess.run([_gemm._compiler(), *flags, str(_gemm.SOURCE), "-o", str(so)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lib = ctypes.CDLL(str(so))
    v, i = ctypes.c_void_p, ctypes.c_long
    lib.lvd_nn.argtypes, lib.lvd_tn.argtypes = [v, v, v, i, i], [v, v, v, i, i, i, i]
    lib.lvd_rows.restype = lib.lvd_vector_width.restype = i
    assert lib.lvd_vector_width() == width
    assert lib.lvd_rows() == {4: 4, 8: 6, 16: 8}[width]
    _gemm._check(lib)


def test_tmm_splits_any_tile_height(monkeypatch):
    """r^T u split between threads in parts of whole tiles for tile heights 4, 6 and 8 (6 does
    not divide K = 32: one part)."""
    if not _gemm.available():
        pytest.skip(f"compiled kernels unavailable: {_gemm.reason()}")
    g = torch.Generator().manual_seed(0)
    r, u = torch.rand(2, 50, 32, generator=g), torch.rand(2, 50, 32, generator=g)
    want = r.transpose(-1, -2).double() @ u.double()
    with kernels.forced("compiled"):
        for tile in (4, 6, 8):
            monkeypatch.setitem(_gemm._STATE, "tile", tile)
            out = torch.full((2, 32, 32), float("nan"))
            assert _gemm.tmm(r, u, out) is out
            torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-4)


def test_runtime_configuration_is_explicit(monkeypatch):
    """Importing lvd leaves the process alone; configure_process sets the waiting policy
    (unless set) and the malloc thresholds."""
    code = ("import os, lvd, lvd.pc, lvd.pc.tree; print(os.environ.get('OMP_WAIT_POLICY'));"
            "from lvd.runtime import configure_process; print(configure_process()['omp_wait_policy'])")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["None", "PASSIVE"]


def test_emulating_an_older_cpu_keys_its_own_cache_and_build(monkeypatch):
    """The EMULATION settings (e.g. an AVX2 run on an AVX-512 CPU) get their own file of
    choices, and LVD_GEMM_MARCH replaces -march=native in the products' build."""
    for k in kernels.EMULATION:
        monkeypatch.delenv(k, raising=False)
    plain = kernels.cache_file()
    assert kernels.emulation() == {} and "-march=native" in _gemm.flags()
    monkeypatch.setenv("LVD_GEMM_MARCH", "haswell")
    monkeypatch.setenv("NUMBA_CPU_NAME", "haswell")
    assert kernels.emulation() == {"LVD_GEMM_MARCH": "haswell", "NUMBA_CPU_NAME": "haswell"}
    assert kernels.cache_file() != plain
    assert "-march=haswell" in _gemm.flags() and "-march=native" not in _gemm.flags()
