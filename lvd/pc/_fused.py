"""Fused CPU kernels (numba) for the passes' elementwise work (the EM update's: lvd.pc._fused_update).

On the CPU the passes were bound by separate elementwise, gather and scatter sweeps over the
[n, G, B, K] level tensors, not by the matmuls (torch's ``index_add_``, the leaf-flow scatter,
took a fifth of a K = 32 HCLT step at about 70 ns per K-float row). Here each level's
elementwise work is one parallel loop over blocks of ``kernels.BLOCK`` rows (node, group, examples) of
flat [n * G * B, K] views: no per-row index arithmetic (the 4-D indexing with a division per
row cost up_level half its time):

- ``up_level``: (where the caller passes ``products``: first its edge children's messages
  M = u W^T with the compiled kernel, one whole (node, group) pair an item) a node's product
  of its leaf probability (1 where the value is missing; the
  node's leaf rows streamed into the cache first when they are few),
  exp(evidence - its max), its children's messages (edge children: ``M = W u`` from the level's
  matmul; copies: u itself), rescaled after every ``kernels.RESCALE_EVERY`` children and at the end.
  The normalizer is the row's *sum* (the torch path divides by the max): a vectorized sum costs
  a third of a serial max over K floats, and it bounds the row as well (max <= sum <= K max), so
  the product cannot underflow either. Each node's log-scale is kept on its own and summed once
  for the root, vectorized, instead of a log per row.
- ``down_level``: a_child = u_child * (r W), the dense leaf flows scattered at the observed
  values while the row is in cache (in parallel over (node, group) when distinct nodes own
  distinct leaf rows, ``unique_leaf_rows``; serially otherwise), and the next level's
  r = a / M for its edge nodes (a for its copies) from the same rows.

The K x K products run in lvd.pc._gemm's compiled kernels where those serve (torch's matmuls
otherwise). The torch path
(lvd.pc.tree, lvd.pc.treell, lvd.pc.em) is the reference and what runs on CUDA, in float64,
without numba, or with ``LVD_KERNELS=torch``; which path runs on the CPU is measured
(lvd.pc.kernels); every test in tests/pc runs on both paths and
tests/pc/test_fused.py compares them directly. Per row the arithmetic is fixed, so results do
not depend on the thread count. Kernels are compiled once per machine (numba's cache beside
this file, or numba's user cache where that is read-only): about 10 s the first time.

Threads: numba's, set per call to torch's intra-op thread count (``torch.set_num_threads``).
Kernels index arrays element by element (no views inside the loops).
"""

from __future__ import annotations

import math
import types as types_

import numpy as np
import torch

from lvd.pc import kernels

try:  # numba is a dependency; a missing or broken install falls back to the torch path
    import numba
    from numba import njit, prange
except Exception:  # pragma: no cover - exercised only without numba
    numba = None

TINY = np.float32(np.finfo(np.float32).tiny)   # float32 constants keep the kernels in float32
_ONE = np.float32(1.0)
_LOW = np.float32(-1e30)
_FLOOR = np.float32(kernels.U_FLOOR)              # a normalized row's entries (kernels.U_FLOOR)
_FLAGS = {"reassoc", "contract", "nsz", "arcp"}   # no nnan / ninf: -inf evidence stays meaningful
ENABLED = numba is not None                    # the kernels can run (lvd.pc.kernels decides whether they do)

_I2 = np.zeros((1, 1), np.int64)               # stand-ins for absent arrays (fixed types)
_F2 = np.zeros((1, 1), np.float32)
_I1 = np.zeros(1, np.int64)
_B1 = np.zeros(1, np.bool_)


def usable(*tables) -> bool:
    """The fused path serves float32 tables (and evidence) on the CPU, when numba is there
    (``ENABLED``) and the kernel mode is not ``torch`` (lvd.pc.kernels: ``LVD_KERNELS=torch``)."""
    return ENABLED and kernels.mode() != "torch" and all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tables)


def _threads() -> None:
    """numba's thread count := torch's. The first call starts numba's OpenMP workers, which
    sets the process's OpenMP thread count to numba's default (seen: torch.set_num_threads(1),
    then torch.get_num_threads() == 2): torch's own setting is put back."""
    n = torch.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def level_children(st) -> list:
    """Per level d < depth - 1: (ptr [n_d + 1], kids) with the children of the level's i-th node
    at local positions kids[ptr[i]:ptr[i + 1]] of level d + 1, in rank order (made once)."""
    cache = st._device_cache.setdefault("fused", {})
    if "children" not in cache:
        out = []
        for d in range(st.depth - 1):
            a, b = st.levels[d]
            par = st.parent_local[d + 1].numpy()
            kids = np.argsort(par, kind="stable").astype(np.int64)   # level order = rank order
            ptr = np.zeros(b - a + 1, np.int64)
            np.cumsum(np.bincount(par, minlength=b - a), out=ptr[1:])
            out.append((ptr, kids))
        cache["children"] = out
    return cache["children"]


def shared_edge_row(st) -> int:
    """The one edge-table row every edge of the tree uses, where the tree has edges, they all
    share one row and no node is a copy (a homogeneous HMM); -1 otherwise."""
    cache = st._device_cache.setdefault("fused", {})
    if "shared_edge" not in cache:
        rows = st.edge_index[st.order[1:]]
        cache["shared_edge"] = int(rows[0]) if len(rows) and (rows >= 0).all() and (rows == rows[0]).all() else -1
    return cache["shared_edge"]


def unique_leaf_rows(st) -> bool:
    """Distinct nodes read distinct leaf-table rows: the leaf flows of different (node, group)
    pairs never collide, so their scatter runs in parallel."""
    cache = st._device_cache.setdefault("fused", {})
    if "unique" not in cache:
        cache["unique"] = len(np.unique(st.leaf_index)) == len(st.leaf_index)
    return cache["unique"]


if numba is not None:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    def _codegen(nargs: int):
        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            fnty = ir.FunctionType(ir.VoidType(), [i64] * nargs)
            builder.call(builder.inttoptr(args[0], fnty.as_pointer()), list(args[1:]))
            return context.get_dummy_value()
        return codegen

    # call(fn, x1, .., xn): the C function at address fn with n 64-bit arguments (pointers as
    # integers), returning nothing. The address is an argument, not a constant, so the jitted
    # drivers cache across processes (a ctypes function passed as an argument instead costs
    # numba about 0.3 ms of typing per call).
    @intrinsic
    def _call5(typingctx, fn, x1, x2, x3, x4, x5):
        return types.void(*([types.intp] * 6)), _codegen(5)

    @intrinsic
    def _call7(typingctx, fn, x1, x2, x3, x4, x5, x6, x7):
        return types.void(*([types.intp] * 8)), _codegen(7)


if numba is not None:
    @njit(inline="always", fastmath=_FLAGS, cache=True, nogil=True, boundscheck=False)
    def _normalize(u, row, K):
        """u[row] /= its sum (at least TINY), entries kept >= U_FLOOR; returns the sum."""
        mx = np.float32(0.0)
        for k in range(K):
            mx += u[row, k]
        mx = max(mx, TINY)
        inv = _ONE / mx
        for k in range(K):
            u[row, k] = max(u[row, k] * inv, _FLOOR)
        return mx

    @njit(parallel=True, fastmath=_FLAGS, cache=True, nogil=True, boundscheck=False)
    def _up(u, s, m, msg, uk, ptr, kids, ne, every, leaves, base, xs, repeat, miss, ev,
            n, G, B, has_leaves, has_miss, has_ev, has_kids, C, touch, bs, nn, pwt):
        K = u.shape[1]
        G0 = G // repeat
        nbb = (B + bs - 1) // bs
        pk, pm = uk.ctypes.data, msg.ctypes.data
        for q in prange(n * G * nbb):      # blocks of rows in parallel (a chain's level is one node)
            ig = q // nbb
            b0 = (q - ig * nbb) * bs
            i = ig // G
            g = ig - i * G
            xrow = (i * G0 + g // repeat) * B
            lb = base[i, g] if has_leaves else 0
            q0, q1 = (ptr[i], ptr[i + 1]) if has_kids else (0, 0)
            if nn != 0:                    # whole pairs (bs == B): the children's messages M = u W^T
                for qq in range(q0, q1):   # first, each child's by its one parent's item
                    j = kids[qq]
                    if j < ne:
                        jg = j * G + g
                        _call5(nn, pk + 4 * jg * B * K, pwt + 4 * jg * K * K, pm + 4 * jg * B * K, B, K)
            if has_leaves and b0 == 0 and C > 0:   # the node's C leaf rows read in order first: a stream
                tch = np.float32(0.0)              # the prefetcher follows, instead of a cache miss per
                for lr in range(lb, lb + C):       # example at a random row (its later blocks hit)
                    for k in range(0, K, 16):
                        tch += leaves[lr, k]
                touch[q] = tch
            for b in range(b0, min(B, b0 + bs)):
                row = ig * B + b
                sc = np.float32(0.0)
                if has_leaves and not (has_miss and miss[xrow + b]):
                    lr = lb + xs[xrow + b]
                    for k in range(K):
                        u[row, k] = leaves[lr, k]
                else:
                    for k in range(K):
                        u[row, k] = _ONE
                if has_ev:
                    top = _LOW
                    for k in range(K):
                        top = max(top, ev[row, k])
                    sc += top
                    for k in range(K):
                        u[row, k] *= np.float32(math.exp(ev[row, k] - top))
                cnt = 0
                for qq in range(q0, q1):
                    j = kids[qq]
                    if cnt == every:     # an intermediate rescale (nodes with > every children)
                        sc += np.float32(math.log(_normalize(u, row, K)))
                        cnt = 0
                    crow = (j * G + g) * B + b
                    if j < ne:
                        for k in range(K):
                            u[row, k] *= msg[crow, k]
                    else:
                        for k in range(K):
                            u[row, k] *= uk[crow, k]
                    cnt += 1
                m[row] = _normalize(u, row, K)
                s[row] = sc

    def _down_level_py(uk, rw, nmul, a_in_rw, scatter, flows, base, xs, repeat, miss, has_miss, zero_rows, nk, G, B,
                       bs, has_next, ptr, kids, ne_next, m_next, u_next, r_next, nn, tn, r, w, gout):
        K = uk.shape[1]
        pu, prw, pr, pw, pg = uk.ctypes.data, rw.ctypes.data, r.ctypes.data, w.ctypes.data, gout.ctypes.data
        G0 = G // repeat
        nbb = (B + bs - 1) // bs
        for q in prange(nk * G * nbb):     # items: (node, group, block of bs examples)
            jg = q // nbb
            b0 = (q - jg * nbb) * bs
            j = jg // G
            g = jg - j * G
            xrow = (j * G0 + g // repeat) * B
            lb = base[j, g] if scatter else 0
            if b0 == 0:
                for c in range(zero_rows):  # the (node, group)'s own leaf rows, zeroed in cache
                    for k in range(K):
                        flows[lb + c, k] = np.float32(0.0)
            q0, q1 = (ptr[j], ptr[j + 1]) if has_next else (0, 0)
            if nn != 0 and j < nmul:       # the (node, group)'s products first, all B rows (bs == B):
                off = 4 * jg * B * K       # its edge flows r^T u (u still the upward pass's), then r W
                if tn != 0:
                    _call7(tn, pr + off, pu + off, pg + 4 * jg * K * K, B, K, 0, K)
                _call5(nn, pr + off, pw + 4 * jg * K * K, prw + off, B, K)
            into_rw = a_in_rw and j < nmul
            for b in range(b0, min(B, b0 + bs)):
                row = jg * B + b
                if into_rw:                 # a = u * (r W) into the r W buffer (u only read)
                    for k in range(K):
                        rw[row, k] *= uk[row, k]
                elif j < nmul:              # a = u * (r W) in place
                    for k in range(K):
                        uk[row, k] *= rw[row, k]
                a = rw if into_rw else uk
                if scatter and not (has_miss and miss[xrow + b]):
                    fr = lb + xs[xrow + b]
                    for k in range(K):
                        flows[fr, k] += a[row, k]
                for qq in range(q0, q1):    # the next level: r = a / M (edge children), a (copies)
                    c = kids[qq]
                    crow = (c * G + g) * B + b
                    if c < ne_next:
                        for k in range(K):
                            r_next[crow, k] = a[row, k] / m_next[crow, k]
                    else:
                        for k in range(K):
                            u_next[crow, k] = a[row, k]

    def _renamed(fn, name: str):
        """fn under another name. numba names a function's cache files by its qualified name and
        first line and keys the entries by signature, not by options: two dispatchers of one
        function, one parallel and one not, shared one entry, and whichever compiled first in a
        fresh cache served both in later processes (the serial kernel loaded as the parallel one
        after a test run compiled it first: a K = 128 HCLT step 0.28 -> 0.45 s)."""
        out = types_.FunctionType(fn.__code__.replace(co_name=name), fn.__globals__, name, fn.__defaults__,
                                  fn.__closure__)
        out.__qualname__ = name
        return out

    _down_level_par = njit(parallel=True, fastmath=_FLAGS, cache=True, nogil=True, boundscheck=False)(
        _renamed(_down_level_py, "_down_level_par_py"))
    _down_level_ser = njit(parallel=False, fastmath=_FLAGS, cache=True, nogil=True, boundscheck=False)(
        _renamed(_down_level_py, "_down_level_ser_py"))


def _rows(t, dummy, out=False):
    """An [n, G, B, K] tensor as the kernels' [n * G * B, K] array (``dummy`` for None). Inputs
    that are not contiguous are copied; outputs must be (the kernels write through the view)."""
    return dummy if t is None else _contig(t, out).reshape(-1, t.shape[-1])


def _flat(t, dummy, out=False):
    return dummy if t is None else _contig(t, out).reshape(-1)


def _contig(t, out):
    if not t.is_contiguous():
        if out:
            raise ValueError(f"fused kernel output of shape {tuple(t.shape)} must be contiguous")
        t = t.contiguous()
    return t.detach().numpy()


def up_level(u, s, m, msg, uk, children, ne, every, leaves_flat, base, xs, repeat, miss, ev, C: int = 0,
             products=None) -> None:
    """One level of the upward pass in place: u [n, G, B, K] of the level's nodes, normalized
    to sum 1; s [n, G, B] the logs of the node's own intermediate sums and evidence maxima
    (usually 0), m [n, G, B] its final sum (log-scale of the node itself: s + log m; the
    children's scales are not added: the caller sums every node's once, vectorized). msg
    [ne, G, B, K]: the messages of the next level's edge nodes, uk that level's u (None at the
    deepest level); children = (ptr, kids) of level_children; leaves_flat [L_t * G * C, K] or
    None; base [n, G] flat rows of value 0; xs, miss [n, G0, B]; ev [n, G, B, K] or None.
    Every tensor is contiguous (the passes' slices of whole-level buffers).

    C > 0 (the values per leaf row block): each (node, group) first reads its C leaf rows in
    order, which the hardware prefetcher streams, so that its examples' reads at random rows hit
    the cache (HCLT K = 32, batch 512: up_level 23-24 -> 17 ms a step, measured in one process
    alternating both); results are the same either way. Worth it when C is not much more than
    the batch (lvd.pc.kernels.LEAF_STREAM).

    ``products`` = (nn, wt): the messages are computed here, msg = uk[:ne] wt per (child,
    group) pair, wt [ne, G, K, K] the children's W^T (contiguous) and nn the address of
    lvd.pc._gemm's ``lvd_nn``: each item then takes a whole (node, group) pair and first computes
    its edge children's messages (every child has one parent, so no two items write one),
    one parallel region a level instead of two. msg is an output then (it must be contiguous);
    its values are those of ``_gemm.mm``'s separate products (the same kernel on the same rows)."""
    _threads()
    has_kids = uk is not None
    ptr, kids = children if has_kids else (_I2[0], _I2[0])
    n, G, B, _ = u.shape
    nn, pwt, bs = 0, 0, kernels.BLOCK
    if products is not None and ne:
        nn, wt = products
        if wt.shape != (ne, G, u.shape[-1], u.shape[-1]) or not wt.is_contiguous() or msg is None:
            raise ValueError("up_level: products need msg and contiguous tables wt [ne, G, K, K]")
        pwt, bs = wt.data_ptr(), max(B, 1)
    nbb = (B + bs - 1) // bs
    _up(_rows(u, None, True), _flat(s, None, True), _flat(m, None, True), _rows(msg, _F2, nn != 0), _rows(uk, _F2), ptr, kids,
        int(ne), int(every), _rows(leaves_flat, _F2), _I2 if base is None else _contig(base, False), _flat(xs, _I1), int(repeat),
        _flat(miss, _B1), _rows(ev, _F2), n, G, B, leaves_flat is not None, miss is not None, ev is not None, has_kids,
        int(C), np.empty(n * G * nbb, np.float32), bs, int(nn), int(pwt))


def down_level(uk, rw, nmul, flows, base, xs, repeat, miss, unique_rows: bool, zero_rows: int = 0,
               children=None, ne_next: int = 0, m_next=None, u_next=None, r_next=None, a_in_rw: bool = False,
               products=None) -> None:
    """One level of the downward pass in place, uk [nk, G, B, K] the level's u (its edge nodes'
    first): uk[j] *= rw[j] for j < nmul (a = u * (r W)); with ``flows`` [rows, K] the dense leaf
    flows flows[base[j, g] + xs[j, g0, b]] += a[j, g, b] (missing values skipped; with
    ``zero_rows`` = C each (node, group) first zeroes its own C rows from base[j, g], so the
    table needs no separate fill when the pairs own every row); and, with ``children`` =
    (ptr, kids) of level_children, the next level's start while a is in cache: r_next[c] = a /
    m_next[c] for its ne_next edge nodes, u_next[c] = a for its copies.

    Parallel over (node, group, 32 examples) without leaf flows, over (node, group) when the
    pairs own distinct leaf rows (``unique_rows``), serial otherwise.

    ``a_in_rw``: the edge nodes' flows go into rw (rw <- u * rw) and uk is only read (it keeps
    the upward pass's u, which lvd.pc.treell uses for edge flows after the level loop).

    ``products`` = (nn, tn, r, w, g) (only where the items take whole (node, group) pairs:
    dense leaf flows with ``unique_rows``): each item first computes its pair's edge flows
    g = r^T u (tn, an address of lvd.pc._gemm's ``lvd_tn``; 0: not wanted, g None) and then
    rw = r w (nn: ``lvd_nn``) with the compiled kernels, so rw is an output and the level takes
    one parallel region instead of three; r [nmul, G, B, K], w [nmul, G, K, K], g [nmul, G, K, K].
    The values are those of the separate products."""
    _threads()
    nk, G, B, _ = uk.shape
    scatter = flows is not None
    has_next = children is not None
    ptr, kids = children if has_next else (_I2[0], _I2[0])
    fn = _down_level_par if (not scatter or unique_rows) else _down_level_ser
    if a_in_rw and nmul and (rw is None or rw.shape[0] < nmul):
        raise ValueError("down_level: a_in_rw needs rw for every edge node")
    nn = tn = 0
    r = w = g = None
    if products is not None and nmul:
        nn, tn, r, w, g = products
        if not (scatter and unique_rows) or rw is None or (tn != 0 and g is None):
            raise ValueError("down_level: products need whole-pair items (dense unique leaf rows), rw and g")
    fn(_rows(uk, None, True), _rows(rw, _F2, a_in_rw or nn != 0), int(nmul), bool(a_in_rw and nmul), scatter, _F2 if flows is None else _contig(flows, True),
       _I2 if base is None else _contig(base, False), _flat(xs, _I1), int(repeat), _flat(miss, _B1),
       miss is not None, int(zero_rows), nk, G, B, B if scatter else kernels.BLOCK, has_next, ptr, kids, int(ne_next),
       _rows(m_next, _F2), _rows(u_next, _F2, True), _rows(r_next, _F2, True), int(nn), int(tn),
       _rows(r, _F2), _rows(w, _F2), _rows(g, _F2, tn != 0))
