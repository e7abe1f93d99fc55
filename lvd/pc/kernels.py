"""Which implementation runs each pass of the engine on the CPU, chosen by measurement.

The engine has one reference implementation, the torch path (lvd.pc.tree, lvd.pc.treell,
lvd.pc.em: what CUDA, float64 and installs without numba run), and two CPU fast paths:

- ``numba``: each level's elementwise work in one fused numba kernel (lvd.pc._fused), the
  K x K products in torch's matmuls;
- ``compiled``: the same, with the products in lvd.pc._gemm's C kernels, built on first use
  for the machine's vector width.

A fast path tuned on one CPU can be a slow path on another (the compiled products built with
16-float vectors ran at 1-3.5 GFLOP/s on an AVX2-only CPU against torch's 20-63, and made the
default path 8-20x slower than the reference there). So nothing is assumed: on first use the
candidates are timed against each other on the shapes at hand, and the fastest is kept. The
reference wins ties, so the default path is never measured slower than the torch path.

- **products** (per K and thread count): the compiled kernels (``lvd_nn`` and ``lvd_tn``)
  against torch's batched matmuls on PROBE_PAIRS pairs of [PROBE_ROWS, K] blocks. Outside the
  passes they serve where they win; the passes try them (the ``compiled`` candidate) where they
  take at most VIABLE times torch's time, since inside a level kernel they also save a
  parallel region.
- **passes** (per pass kind and shape: nodes, depth, groups, batch size rounded up to a power
  of two, K, values, evidence, missing values, threads): the upward pass (``up``) and the
  backward pass (``down``), each with every candidate that serves the call. A candidate runs
  once to warm up (numba loads its compiled code, torch its buffers), then ROUNDS alternating
  timed runs; the lowest median wins. The backward candidates run on copies of the forward's
  buffers, which they overwrite.

Choices are kept for the process and in a JSON file beside the compiled products
(``lvd.pc._gemm.cache_dir()``), named and keyed by the CPU (model and flags), the engine's
kernel sources and the torch and numba versions: another CPU, another engine version or a
damaged file is ignored and measured again. ``choices()`` lists what this process chose
(``python -m lvd.bench`` prints it).

``LVD_KERNELS`` overrides the measurement: ``auto`` (the default), ``torch`` (the reference
everywhere), ``numba`` or ``compiled`` (that path wherever it serves the call, untimed).
``set_mode`` and ``forced`` do the same in a process (tests, benchmarks). The older switches
``LVD_NO_FUSED=1`` and ``LVD_NO_CGEMM=1`` mean ``torch`` and ``numba``.

The settings of the fast paths are defined here, once; each was measured where it is
explained (docs/engine.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from statistics import median

import torch

log = logging.getLogger("lvd.pc.kernels")

MODES = ("auto", "torch", "numba", "compiled")

# --- settings of the CPU fast paths (the only definitions) ------------------------------------
MAX_K = 256          # the compiled products serve K = 16, 32, .., MAX_K (multiples of 16)
ROW_BLOCK = 64       # rows per work item of the compiled row products (lvd.pc._gemm.mm)
BLOCK = 32           # examples per parallel work item of the fused level kernels (lvd.pc._fused)
RESCALE_EVERY = 2    # child messages multiplied into a node's product between rescales (both paths)
LEAF_STREAM = 4      # the upward kernel streams a node's C leaf rows first when C <= LEAF_STREAM * B
FUSE_UP_MAX_K = 32   # the upward messages M = u W^T inside the level kernel up to this K ...
FUSE_DOWN_MIN_K = 16  # ... the downward products inside the level kernel from this K
FUSE_MIN_PAIRS = 4   # ... and only on levels of at least this many (node, group) pairs
PROBE_PAIRS = 8      # the product probe: pairs of [PROBE_ROWS, K] blocks
PROBE_ROWS = 256
ROUNDS = 3           # timed runs of each candidate after its warm-up
# The floor of a normalized message row (both paths). With every entry of u at least
# U_FLOOR and every row of a K x K table summing to 1 (an entry >= 1 / K), each message
# M_j = sum_k u_k W_jk has a term >= U_FLOOR / K >= float32's smallest normal for K <= 2^16, so
# M stays a normal float even with denormals flushed to zero (lvd.runtime), and the backward's
# r = a / M never divides by 0. Entries below it are e^-76 of the row's largest.
U_FLOOR = torch.finfo(torch.float32).tiny * 2.0 ** 16

_STATE: dict = {"mode": None, "active": None, "memo": {}, "disk": None}


def _env_mode() -> str:
    m = os.environ.get("LVD_KERNELS", "").strip().lower()
    if m:
        if m not in MODES:
            raise ValueError(f"LVD_KERNELS={m!r}: expected one of {', '.join(MODES)}")
        return m
    if os.environ.get("LVD_NO_FUSED"):
        return "torch"
    if os.environ.get("LVD_NO_CGEMM"):
        return "numba"
    return "auto"


def mode() -> str:
    """The process's kernel mode: ``set_mode``'s, else ``LVD_KERNELS`` (default ``auto``)."""
    if _STATE["mode"] is None:
        _STATE["mode"] = _env_mode()
    return _STATE["mode"]


def set_mode(m: str) -> None:
    """Set the process's kernel mode (one of MODES)."""
    if m not in MODES:
        raise ValueError(f"kernel mode {m!r}: expected one of {', '.join(MODES)}")
    _STATE["mode"] = m


@contextlib.contextmanager
def forced(m: str):
    """Run the block in kernel mode ``m`` (restored after)."""
    old = mode()
    set_mode(m)
    try:
        yield
    finally:
        _STATE["mode"] = old


@contextlib.contextmanager
def _running(m: str):
    """The path a pass runs on while it runs (read by ``products_on``)."""
    old = _STATE["active"]
    _STATE["active"] = m
    try:
        yield
    finally:
        _STATE["active"] = old


def products_on(K: int) -> bool:
    """The compiled products serve K x K products now: inside a pass, where that pass runs the
    ``compiled`` path; elsewhere in mode ``compiled``, or in ``auto`` where they won the probe
    at this K. (K is a multiple of 16 up to MAX_K: lvd.pc._gemm checks.)"""
    from lvd.pc import _gemm

    m = _STATE["active"] or mode()
    if m == "auto":
        return _gemm.available() and products_win(K)
    return m == "compiled" and _gemm.available()


# --- the CPU's identity ------------------------------------------------------------------------
def cpu_flags() -> str:
    """The CPU's feature flags (/proc/cpuinfo), or the platform's name for the processor."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def vector_isa() -> str:
    """The widest float vector instruction set of the CPU: avx512, avx2, avx, sse4.2, neon, or
    the machine name."""
    flags = set(cpu_flags().split())
    for name, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"), ("sse4.2", "sse4_2"),
                       ("neon", "asimd"), ("neon", "neon")):
        if flag in flags:
            return name
    return platform.machine()


# Settings that make this CPU behave as an older one (for measuring another ISA's speed here):
# the compiled products' -march, numba's target CPU, torch's kernel dispatch and oneDNN's and
# MKL's instruction sets. They are part of the cache's identity.
EMULATION = ("LVD_GEMM_MARCH", "NUMBA_CPU_NAME", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def emulation() -> dict:
    """The EMULATION settings in force ({} on a plain run)."""
    return {k: os.environ[k] for k in EMULATION if os.environ.get(k)}


def _identity() -> dict:
    here = Path(__file__).parent
    src = hashlib.sha256()
    for name in ("_gemm.c", "_gemm.py", "_fused.py", "tree.py", "treell.py", "kernels.py"):
        p = here / name
        src.update(p.read_bytes() if p.exists() else b"")
    try:
        import numba
        nv = numba.__version__
    except Exception:     # pragma: no cover - without numba
        nv = ""
    return {"cpu_model": cpu_model(), "cpu_flags": hashlib.sha256(cpu_flags().encode()).hexdigest()[:16],
            "machine": platform.machine(), "torch": torch.__version__, "numba": nv,
            "sources": src.hexdigest()[:16], "emulation": emulation()}


def cache_file() -> Path:
    from lvd.pc import _gemm

    ident = json.dumps(_identity(), sort_keys=True).encode()
    return _gemm.cache_dir() / f"choices-{hashlib.sha256(ident).hexdigest()[:16]}.json"


def _disk() -> dict:
    """The cached choices of this CPU and engine version ({} when absent, foreign or damaged)."""
    if _STATE["disk"] is None:
        out = {}
        try:
            data = json.loads(cache_file().read_text())
            if isinstance(data, dict) and data.get("identity") == _identity() and isinstance(data.get("choices"), dict):
                out = data["choices"]
        except (OSError, ValueError):
            pass
        _STATE["disk"] = out
    return _STATE["disk"]


def _save(name: str, record: dict) -> None:
    disk = _disk()
    disk[name] = record
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"identity": _identity(), "choices": disk}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)                 # concurrent writers: the last complete file wins
    except OSError as e:                      # a read-only cache: the choice holds for this process
        log.debug("kernel choices not saved to %s: %s", path, e)


def forget() -> None:
    """Drop this process's choices and reread the file next time (tests)."""
    _STATE["memo"].clear()
    _STATE["disk"] = None


def choices() -> dict:
    """This process's choices: {key: {"chosen": name, "seconds": {name: median}}}."""
    return dict(_STATE["memo"])


# --- the measurement ---------------------------------------------------------------------------
def _timed(factory, clock) -> float:
    run = factory()
    t = clock()
    run()
    return clock() - t


def choose(kind: str, key: tuple, candidates: dict, reference: str = "torch", clock=time.perf_counter) -> str:
    """The fastest of ``candidates`` ({name: factory}; factory() returns the zero-argument
    callable to time, so copies of inputs are made outside the timing) for ``kind`` and
    ``key``: from this process's memory, the cache file, or measured now (one warm-up run each,
    then ROUNDS alternating timed runs; the lowest median wins, ``reference`` on ties). A
    candidate other than the reference that raises is dropped with a warning naming the error.
    A single candidate is returned untimed."""
    if reference not in candidates:
        raise ValueError(f"choose: the reference {reference!r} is not among {sorted(candidates)}")
    name = "|".join([kind, *map(str, key)])
    rec = _STATE["memo"].get(name) or _disk().get(name)
    if isinstance(rec, dict) and rec.get("chosen") in candidates and set(rec.get("seconds", {})) >= set(candidates):
        _STATE["memo"][name] = rec
        return rec["chosen"]
    if len(candidates) == 1:
        return reference
    candidates = dict(candidates)
    for n, f in list(candidates.items()):
        try:
            _timed(f, clock)                              # warm-up, not counted
        except Exception as e:                            # a fast path that fails is no candidate
            if n == reference:
                raise
            log.warning("kernels: %s|%s: the %s path failed (%s: %s); not used", kind, "|".join(map(str, key)), n,
                        type(e).__name__, e)
            del candidates[n]
    times = {n: [] for n in candidates}
    for _ in range(ROUNDS):
        for n, f in candidates.items():
            times[n].append(_timed(f, clock))
    med = {n: float(median(t)) for n, t in times.items()}
    best = reference
    for n, t in med.items():
        if t < med[best]:
            best = n
    rec = {"chosen": best, "seconds": med, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _STATE["memo"][name] = rec
    _save(name, rec)
    log.info("kernels: %s -> %s (%s)", name, best, ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in med.items()))
    return best


def products_win(K: int) -> bool:
    """The compiled K x K products beat torch's batched matmuls at K on this CPU and thread
    count (measured once: ``choose("products", ...)``)."""
    return _products(K)["chosen"] == "compiled"


def products_viable(K: int) -> bool:
    """The compiled products are worth trying inside the passes at K: at most VIABLE times
    torch's time in the probe (inside a level kernel they also save a parallel region, so a
    near tie in the probe can still win the pass; a pass never takes them untimed)."""
    sec = _products(K).get("seconds", {})
    return "compiled" in sec and sec["compiled"] <= VIABLE * sec["torch"]


VIABLE = 1.5


def _products(K: int) -> dict:
    from lvd.pc import _gemm

    key = (K, torch.get_num_threads())
    name = "|".join(["products", *map(str, key)])
    rec = _STATE["memo"].get(name)
    if rec is not None:
        return rec
    g = torch.Generator().manual_seed(0)
    a = torch.rand(PROBE_PAIRS, PROBE_ROWS, K, generator=g)
    u = torch.rand(PROBE_PAIRS, PROBE_ROWS, K, generator=g)
    w = torch.rand(PROBE_PAIRS, K, K, generator=g)
    out, gout = torch.empty_like(a), torch.empty(PROBE_PAIRS, K, K)

    def torch_products():
        torch.matmul(a, w, out=out)
        torch.matmul(a.transpose(-1, -2), u, out=gout)

    def compiled_products():
        with _running("compiled"):
            if _gemm.mm(a, w, out) is None or _gemm.tmm(a, u, gout) is None:
                raise RuntimeError(f"the compiled products do not serve K = {K}")

    try:
        chosen = choose("products", key, {"torch": lambda: torch_products, "compiled": lambda: compiled_products})
    except RuntimeError:
        chosen = "torch"
    return _STATE["memo"].setdefault(name, {"chosen": chosen, "seconds": {}})


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def pass_key(st, G: int, B: int, K: int, *extra) -> tuple:
    """The shape a pass's choice is keyed by (the batch and group counts rounded up to powers of
    two, so that a last, smaller batch reuses the choice)."""
    return (st.num_nodes, st.depth, max(st.num_edge_nodes), _pow2(G), _pow2(B), K, *extra, torch.get_num_threads())


def pass_path(kind: str, key: tuple, K: int, run) -> str:
    """The path the pass ``kind`` takes for ``key``: ``mode()`` where it is not ``auto``, else
    the fastest of torch, numba and (where the products are viable at K) compiled, timed
    with ``run(path)`` (which returns the callable to time). The chosen path must then be run
    under ``running(path)``. Callers only ask when the fused kernels serve the call."""
    from lvd.pc import _gemm

    m = mode()
    if m != "auto":
        return m
    def candidate(path):
        def factory():
            fn = run(path)

            def go():
                with _running(path):
                    fn()
            return go
        return factory

    paths = ["torch", "numba"]
    if K % 16 == 0 and 16 <= K <= MAX_K and _gemm.available() and products_viable(K):
        paths.append("compiled")
    return choose(kind, key, {p: candidate(p) for p in paths})


def running(path: str):
    """Context: a pass runs on ``path`` (torch, numba or compiled) inside the block."""
    return _running(path)
