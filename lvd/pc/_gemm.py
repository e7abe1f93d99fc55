"""Batched K x K products of the passes in compiled C (``_gemm.c``), threaded by numba.

The fused CPU path (lvd.pc._fused) spends half of an HCLT step at K = 32 in three batched
matmuls per level: the messages M = u W^T (upward), r W (downward) and the edge flows r^T u,
each [B, K] by [K, K] per (node, group). torch runs those shapes well below its own 2048^2
peak; the kernels of ``_gemm.c`` keep a tile of the product in registers and run them near the
core's FMA rate on the CPUs where they win. Whether they do is measured on the machine that
runs them (lvd.pc.kernels); ``scripts/bench_gemm.py`` prints the comparison.

Built on first use: the machine's C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) with
``-O3 -march=native`` (the vector width follows the CPU's instruction set: 16 floats with
AVX-512, 8 with AVX/AVX2, 4 otherwise) into ``$LVD_CACHE_DIR`` (default ``$XDG_CACHE_HOME/lvd`` or
``~/.cache/lvd``), named by a hash of the source, the flags, the compiler and the CPU (its
/proc/cpuinfo flags), so machines of different CPUs that share a home directory each build
their own; written under a temporary name and renamed. After loading, each kernel is checked
once against numpy on small random operands; a library that fails the check, a missing
compiler or a failed build leaves the engine on torch's matmuls (``available()`` is False; the
reason is in ``reason()`` and in one line on stderr). They serve contiguous CPU float32
operands with K a multiple of 16 and at most ``kernels.MAX_K`` where lvd.pc.kernels lets them
(``kernels.products_on``); other calls return None and the caller uses torch.

Threads: numba's (its thread count is set to torch's by lvd.pc._fused), over (pair, block of
``kernels.ROW_BLOCK`` rows) for the row products and (pair, rows of the output) for r^T u. Every output
entry is one sum in a fixed order, so results do not depend on the thread count.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from lvd.pc import _fused, kernels

SOURCE = Path(__file__).with_name("_gemm.c")
FLAGS = ["-O3", "-march=native", "-std=gnu11", "-ffp-contract=fast", "-fPIC", "-shared"]


def flags() -> list[str]:
    """FLAGS, with ``-march=$LVD_GEMM_MARCH`` where that is set (to build for an older CPU than
    the one at hand, e.g. ``haswell`` for AVX2: how the AVX2 figures of docs/results.md were
    measured on an AVX-512 CPU; see EMULATION in lvd.pc.kernels)."""
    march = os.environ.get("LVD_GEMM_MARCH")
    return [f"-march={march}" if f == "-march=native" and march else f for f in FLAGS]

_STATE: dict = {}


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return shutil.which(cc)
    return None


def cache_dir() -> Path:
    if os.environ.get("LVD_CACHE_DIR"):
        return Path(os.environ["LVD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lvd"


def _build(cc: str) -> Path:
    src = SOURCE.read_bytes()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    key = hashlib.sha256(b"\0".join([src, " ".join(flags()).encode(), version.encode(), kernels.cpu_flags().encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    out = cache_dir() / f"gemm-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name, suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run([cc, *flags(), str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE}: {res.stderr.strip()[-2000:]}")
        os.replace(tmp, out)          # atomic: concurrent builders leave one complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _check(lib) -> None:
    """Each kernel against numpy on random operands (K = 16, 32 and 48; row counts that are not
    multiples of the tile): a miscompiled library is never used."""
    rng = np.random.default_rng(0)
    for K, rows in ((16, 5), (32, 37), (48, 19)):
        A = rng.random((rows, K), dtype=np.float32)
        Bm = rng.random((K, K), dtype=np.float32)
        C = np.empty_like(A)
        G = np.empty((K, K), np.float32)
        want = A.astype(np.float64) @ Bm
        lib.lvd_nn(A.ctypes.data, Bm.ctypes.data, C.ctypes.data, rows, K)
        got = [("nn", C.copy(), want)]
        U = rng.random((rows, K), dtype=np.float32)
        lib.lvd_tn(A.ctypes.data, U.ctypes.data, G.ctypes.data, rows, K, 0, K)
        got.append(("tn", G.copy(), A.T.astype(np.float64) @ U))
        for name, g, w in got:
            if not np.allclose(g, w, rtol=1e-5, atol=1e-5):
                raise RuntimeError(f"lvd_{name} disagrees with numpy at K = {K} (max error "
                                   f"{np.abs(g - w).max():.3g})")


def _off() -> str:
    """Why the kernels are off in this process now ('' when they may run). Not cached: the
    kernel mode can change within a process (lvd.pc.kernels.forced)."""
    if kernels.mode() in ("torch", "numba"):
        return f"switched off (kernel mode {kernels.mode()})"
    if not _fused.ENABLED:
        return "needs numba (the fused path drives the kernels)"
    return ""


def _load():
    if _off():
        return None
    if "lib" in _STATE:
        return _STATE["lib"]
    lib = None
    reason, tell = "", False
    if (cc := _compiler()) is None:
        reason, tell = "no C compiler (set CC, or install gcc or clang)", True
    else:
        try:
            lib = ctypes.CDLL(str(_build(cc)))
            v, i = ctypes.c_void_p, ctypes.c_long
            for name, args in (("lvd_nn", [v, v, v, i, i]), ("lvd_tn", [v, v, v, i, i, i, i])):
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, None
            lib.lvd_rows.restype = i
            lib.lvd_vector_width.restype = i
            _check(lib)
        except Exception as e:   # a build or check failure: torch's matmuls instead
            lib, reason, tell = None, f"{type(e).__name__}: {e}", True
    _STATE["lib"], _STATE["reason"] = lib, reason
    if lib is not None:   # the addresses the drivers call, and the tile height
        _STATE.update(nn=ctypes.cast(lib.lvd_nn, ctypes.c_void_p).value,
                      tn=ctypes.cast(lib.lvd_tn, ctypes.c_void_p).value, tile=int(lib.lvd_rows()),
                      width=int(lib.lvd_vector_width()))
    if tell:                # a machine that should have them, once per process
        print(f"lvd.pc._gemm: compiled kernels unavailable ({reason}); using torch's matmuls",
              file=sys.stderr)
    return lib


def available() -> bool:
    """The compiled kernels are built, loaded and checked (builds them on the first call)."""
    return _load() is not None


def vector_width() -> int:
    """Floats per vector the kernels were compiled for (0 where they are unavailable)."""
    return _STATE.get("width", 0) if available() else 0


def reason() -> str:
    """Why the kernels are unavailable ('' when they are)."""
    _load()
    return _off() or _STATE["reason"]


if _fused.numba is not None:
    from numba import njit, prange

    from lvd.pc._fused import _call5, _call7

    @njit(parallel=True, cache=True, nogil=True)
    def _rows_drive(fn, pa, pb, pc, P, rows, K, bs, sb):
        """C[p] = A[p] B[p] for P pairs of [rows, K] x [K, K] (addresses pa, pb, pc; B's pairs
        sb floats apart), over (pair, bs rows)."""
        nb = (rows + bs - 1) // bs
        for q in prange(P * nb):
            p = q // nb
            r0 = (q - p * nb) * bs
            off = 4 * (p * rows * K + r0 * K)
            _call5(fn, pa + off, pb + 4 * p * sb, pc + off, min(bs, rows - r0), K)

    @njit(parallel=True, cache=True, nogil=True)
    def _tn_drive(fn, pr, pu, pg, P, rows, K, split):
        """G[p] = R[p]^T U[p] for P pairs, each G's rows in ``split`` parts."""
        per = K // split
        for q in prange(P * split):
            p = q // split
            i0 = (q - p * split) * per
            _call7(fn, pr + 4 * p * rows * K, pu + 4 * p * rows * K, pg + 4 * p * K * K, rows, K, i0, i0 + per)


def _ok(*ts) -> bool:
    for t in ts:
        if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
            return False
    return True


def _serves(K: int) -> bool:
    return K % 16 == 0 and 16 <= K <= kernels.MAX_K and available() and kernels.products_on(K)


def serves(w: torch.Tensor) -> bool:
    """The kernels serve products with the tables w [..., K, K] (contiguous CPU float32, K a
    multiple of 16 up to kernels.MAX_K), are available, and lvd.pc.kernels lets them serve K."""
    return w.dim() >= 2 and w.shape[-1] == w.shape[-2] and _ok(w) and _serves(w.shape[-1])


def address(name: str) -> int:
    """The address of the loaded kernel lvd_<name> ("nn", "tn"), for numba kernels that call it."""
    if _load() is None:
        raise RuntimeError(f"the compiled kernels are unavailable: {reason()}")
    return _STATE[name]


def transposed(w: torch.Tensor):
    """w^T [..., K, K] contiguous (one pass over w) where the kernels serve w, else None: the
    upward pass's M = u W^T is ``mm`` with the rows of W^T."""
    return w.transpose(-1, -2).contiguous() if serves(w) else None


def mm(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor):
    """out = a @ w per pair (a [..., rows, K], w [..., K, K], the same leading shape); None
    (nothing done) where the kernels do not serve the call."""
    K = a.shape[-1]
    if (a.dim() < 2 or w.shape[:-2] != a.shape[:-2] or w.shape[-2:] != (K, K) or out.shape != a.shape
            or not serves(w) or not _ok(a, out)):
        return None
    rows = a.shape[-2]
    P = math.prod(a.shape[:-2])
    if P * rows == 0:
        return out
    _fused._threads()
    _rows_drive(_STATE["nn"], a.data_ptr(), w.data_ptr(), out.data_ptr(), P, rows, K, kernels.ROW_BLOCK, K * K)
    return out


def tmm(r: torch.Tensor, u: torch.Tensor, out: torch.Tensor):
    """out = r^T @ u per pair (r, u [..., rows, K]; out [..., K, K]); None where not served."""
    K = r.shape[-1]
    if (r.dim() < 2 or r.shape != u.shape or out.shape != (*r.shape[:-2], K, K) or not _serves(K)
            or not _ok(r, u, out)):
        return None
    rows = r.shape[-2]
    P = math.prod(r.shape[:-2])
    if P == 0:
        return out
    if rows == 0:
        return out.zero_()
    _fused._threads()
    tile = _STATE["tile"]
    split = max(1, min(K // tile, (4 * _fused.numba.get_num_threads()) // P))
    while split > 1 and (K % split or (K // split) % tile):   # parts of whole tiles (lvd_tn does any)
        split -= 1
    _tn_drive(_STATE["tn"], r.data_ptr(), u.data_ptr(), out.data_ptr(), P, rows, K, split)
    return out
