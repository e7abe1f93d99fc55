"""The latent tree's log-likelihood as an autograd function, with its backward written by hand.

``TreeLL`` (``tree_lls``): given d(loss)/d(lls) the backward returns flows (expected counts)
as the gradients of the *log*-parameter tables, and the posterior state weights as the
gradient of the evidence. So ``torch.autograd`` composes trees (the LVD circuit feeds patch
log-likelihoods into the top tree as evidence) and EM reads flows off ``.grad``. The passes
read probability tables, never their logs: ``log_handles`` gives EM autograd handles for the
log tables that carry the probability tables along (``probs``), so a step computes no log or
exp of any table. Shapes and the upward pass: lvd.pc.tree.

Backward, level by level from the root: r = a_parent / M_child (a: flows of a node's states,
M: the message the child sent up), edge flows W * (r^T u_child) (the r^T u products summed per
table row, W multiplied once at the end), a_child = u_child * (r W). Leaf flows: a scattered
into the leaf table at the observed values (dense), or handed back as a sparse COO tensor
when the consumer accepts that and the batch reads fewer entries than the table has rows
(``sparse_leaf_flows``: an HMM's 33,278-word emission table and a batch of 512 x 32 tokens).
"""

from __future__ import annotations

import torch

from lvd.pc import _fused, _gemm, kernels
from lvd.pc._cpu import index_add, index_select
from lvd.pc.tree import TINY, NodeMajor, _mm, _prepare, _repeat, edge_level, leaf_rows, max_edge_nodes, upward

# a leaf table's flows come back sparse (``sparse_leaf_flows``) when the batch reads at most this
# many entries per table row (V * G * B entries against L_t * G * C rows); 0: never
SPARSE_LEAF_FLOWS = 1.0


def probs(log_table: torch.Tensor) -> torch.Tensor:
    """The probability table behind a log table: the one a ``log_handles`` handle carries (no
    pass over the table), else exp(log_table)."""
    p = getattr(log_table, "_lvd_probs", None)
    return log_table.exp() if p is None else p


def log_handles(params: dict, requires_grad=False) -> dict:
    """Autograd handles for the log-parameter tables of ``params`` (name -> probability table):
    zero-stride NaN tensors of each table's shape that carry the table itself (``probs``), so
    EM differentiates with respect to log tables it never computes. requires_grad: True, False
    or a predicate on the name. Whatever reads a handle's values instead of ``probs`` gets NaN."""
    out = {}
    for k, p in params.items():
        h = torch.full((), float("nan"), device=p.device, dtype=p.dtype).expand(p.shape)
        want = requires_grad(k) if callable(requires_grad) else bool(requires_grad)
        if want:
            h.requires_grad_(True)
        h._lvd_probs = p.detach()
        out[k] = h
    return out


def sparse_leaf_flows(handle: torch.Tensor) -> torch.Tensor:
    """Let the passes return the flows of the leaf-table handle ``handle`` as a sparse COO
    tensor when that pays (``SPARSE_LEAF_FLOWS``): sparse over (row, group, value), dense over
    the K states, one entry per (node, group, example) read, duplicates not summed (missing
    values: entries of zero). Only for a consumer that accepts sparse flows (lvd.pc.em.flows
    -> em_step); the default is a dense table. Returns ``handle``."""
    handle._lvd_sparse_flows = True
    return handle


def _sparse_pays(handle, entries: int, rows: int) -> bool:
    return bool(getattr(handle, "_lvd_sparse_flows", False)) and entries <= SPARSE_LEAF_FLOWS * rows


class Probs(torch.autograd.Function):
    """theta = Probs.apply(log_table): the probability table, differentiable with respect to the
    log table (gradient = theta * d/dtheta: flows); reads a handle's table without a pass."""

    @staticmethod
    def forward(ctx, log_table):
        p = probs(log_table)
        ctx.save_for_backward(p)
        return p.view_as(p)

    @staticmethod
    def backward(ctx, grad):
        (p,) = ctx.saved_tensors
        return grad * p


class TreeLL(torch.autograd.Function):
    """lls = TreeLL.apply(st, log_edges, log_root, log_leaves, x, missing, evidence) -> [B, G, H].

    The backward reuses (overwrites) the buffers the forward saved: one backward per forward."""

    @staticmethod
    def forward(ctx, st, log_edges, log_root, log_leaves, x, missing, evidence):
        B = (x.batch_size if isinstance(x, NodeMajor) else x.shape[0]) if x is not None else evidence.shape[0]
        G = log_edges.shape[1]
        C = log_leaves.shape[2] if log_leaves is not None else None
        W = probs(log_edges)
        root = probs(log_root)
        leaves = probs(log_leaves) if log_leaves is not None else None
        xs, miss, ev = _prepare(st, x, missing, evidence, C, G, W.device)
        repeat = x.repeat if isinstance(x, NodeMajor) else 1
        u, s, M = upward(st, W, leaves, xs, miss, ev, B, keep_messages=True, repeat=repeat)
        q = _mm(u[0], root.transpose(-1, -2))                            # [G, B, H]
        lls = q.clamp_min(TINY).log_().add_(s[0, :, :, None])
        ctx.st = st
        ctx.save_for_backward(W, root, u, M, q, xs, miss)
        ctx.shapes = (B, G, C, None if log_leaves is None else log_leaves.shape[0], evidence is not None,
                      repeat)
        ctx.sparse = log_leaves is not None and _sparse_pays(log_leaves, st.num_nodes * G * B,
                                                             log_leaves.shape[0] * G * C)
        ctx.used = False
        return lls.permute(1, 0, 2)

    @staticmethod
    def backward(ctx, grad):
        if ctx.used:
            raise RuntimeError("TreeLL's backward reuses its saved buffers and runs once per forward")
        ctx.used = True
        st = ctx.st
        W, root, u, M, q, xs, miss = ctx.saved_tensors
        B, G, C, L_t, has_ev, repeat = ctx.shapes
        want_ev = has_ev and ctx.needs_input_grad[6]
        K = W.shape[-1]
        idx = st.on(W.device)
        want_edges, want_leaves = ctx.needs_input_grad[1], L_t is not None and ctx.needs_input_grad[3]
        rq = grad.permute(1, 0, 2) / q.clamp_min(TINY)                    # [G, B, H]
        g_root = root * torch.matmul(rq.transpose(-1, -2), u[0])         # [G, H, K]
        g_edges = None
        if want_edges:
            g_edges = torch.empty_like(W) if _edge_rows_written(st, W) else torch.zeros_like(W)
        u[0].mul_(torch.matmul(rq, root))                                # u[0] <- flows a of the root
        dense_leaves = want_leaves and not ctx.sparse
        keep_a = want_ev or (want_leaves and not dense_leaves)   # what _finish reads of every node's a
        path = "torch"
        if _fused.usable(W, u):
            def run(p):                       # a candidate for the measurement, on copies
                cu, cm = u.clone(), M.clone()
                cg = None if g_edges is None else g_edges.clone()
                if p == "torch":
                    return lambda: _down_torch(st, idx, W, cu, cm, xs, miss, repeat, cg, C, L_t, dense_leaves)
                return lambda: _down_fused(st, idx, W, cu, cm, xs, miss, repeat, cg, C, L_t, dense_leaves, keep_a)

            key = kernels.pass_key(st, G, B, K, C or 0, miss is not None, want_edges, want_leaves, dense_leaves,
                                   keep_a, repeat)
            path = kernels.pass_path("down", key, K, run)
        if path != "torch":
            with kernels.running(path):
                g_leaves, a = _down_fused(st, idx, W, u, M, xs, miss, repeat, g_edges, C, L_t, dense_leaves, keep_a)
        else:
            with kernels.running("torch"):
                g_leaves, a = _down_torch(st, idx, W, u, M, xs, miss, repeat, g_edges, C, L_t, dense_leaves)
        return _finish(ctx, st, idx, W, a, xs, miss, repeat, g_edges, g_leaves, want_edges, want_leaves,
                       dense_leaves, want_ev, g_root, (L_t, G, C, K))


def _down_torch(st, idx, W, u, M, xs, miss, repeat, g_edges, C, L_t, dense_leaves):
    """The reference backward's level loop: u[0] holds the root's flows; u gets every node's
    flows a (overwritten level by level), g_edges (if given) the sums of r^T u per edge row.
    Returns (the dense leaf flows [L_t * G * C, K] or None, u). Few device operations a level
    (what a GPU launches): the dense leaf flows are one scatter of every node's a after the loop."""
    G, B, K = u.shape[1], u.shape[2], u.shape[3]
    # level by level: r = a_parent / M_child; edge flows W * (r^T u_child); a_child = u_child * (r W)
    for d in range(st.depth - 1):
        a, b = st.levels[d]
        c0, c1 = st.levels[d + 1]
        ne = st.num_edge_nodes[d + 1]
        par = idx["parent_local"][d + 1]
        if ne < c1 - c0:                                             # copies: a_c = a_parent
            index_select(u[a:b], par[ne:], out=u[c0 + ne:c1])
        if not ne:
            continue
        r = index_select(u[a:b], par[:ne])                           # [ne, G, B, K]
        r.div_(M[c0:c0 + ne])                                        # M >= TINY (kernels.U_FLOOR)
        Wl = edge_level(st, idx, W, d + 1)
        uc = u[c0:c0 + ne]
        if g_edges is not None:                                      # r^T u now, times W once at the end
            _edge_flows(st, idx, g_edges, r, uc, d, c0, ne, K, B)
        uc.mul_(_mm(r, Wl, out=M[c0:c0 + ne]))                       # u[c] <- flows a of c
    g_leaves = None
    if dense_leaves:                                                 # a at the observed values, summed
        sink = L_t * G * C
        g_leaves = W.new_zeros(sink + 1, K)                          # last row: missing values
        rows = leaf_rows(st, 0, st.num_nodes, G, C, xs, repeat)     # [V, G, B]
        if miss is not None:
            rows = rows.masked_fill(_repeat(miss, 0, st.num_nodes, repeat), sink)
        index_add(g_leaves, rows.reshape(-1), u.view(-1, K))
        g_leaves = g_leaves[:-1]
    return g_leaves, u


def _edge_rows_written(st, table) -> bool:
    """Every row of the edge flow table ``table`` is written (not accumulated) exactly once by
    the backward, so it starts uninitialized rather than zeroed."""
    return st.edge_rows_exact and table.shape[0] == st.num_edges


def _finish(ctx, st, idx, W, u, xs, miss, repeat, g_edges, g_leaves, want_edges, want_leaves, dense_leaves,
            want_ev, g_root, leaf_shape):
    """The backward's outputs once the flows a are in u: evidence gradient, edge flows times W,
    leaf flows (dense g_leaves [L_t * G * C, K], or sparse from u)."""
    g_ev = None
    if want_ev:
        g_ev = index_select(u, idx["position"]).permute(2, 1, 0, 3)      # [B, G, V, K]
    if want_edges:
        g_edges.mul_(W)                                                  # flows = W * sum of r^T u
    if dense_leaves:
        g_leaves = g_leaves.view(leaf_shape)
    elif want_leaves:
        g_leaves = _sparse_leaf_grad(st, u, xs, miss, repeat, leaf_shape)
    else:
        g_leaves = None
    return None, g_edges, g_root, g_leaves, None, None, g_ev


def _down_fused(st, idx, W, u, M, xs, miss, repeat, g_edges, C, L_t, dense_leaves, keep_a=True):
    """The backward's level loop with the elementwise work fused (lvd.pc._fused.down_level):
    u[0] holds the root's flows; g_edges (if given) gets the sums of r^T u per edge row.
    Returns (the dense leaf flows [L_t * G * C, K] or None, every node's flows [V, G, B, K]:
    u itself, overwritten level by level, or M; None without ``keep_a``).

    Where every edge shares one table row (a homogeneous HMM: ``_fused.shared_edge_row``) the
    edge flows are one matmul after the loop, the sum over all nodes of r^T u with nodes and
    examples as its inner dimension, instead of one small accumulating matmul per level. That
    needs every level's r (kept in a [V, G, B, K] buffer) and the upward pass's u: the flows
    a = u * r W go into M's rows (``a_in_rw``; M's rows are read for the last time just before)
    instead of overwriting u.

    ``keep_a`` False (the caller reads no node's flows after the loop: dense leaf flows, no
    evidence gradient): every level's r W and flows a go into one reused level-sized buffer
    (``a_in_rw``; it stays in cache from level to level) and u is only read, instead of writing
    a over u and r W over M's rows: one pass over a [V, G, B, K] tensor fewer (HCLT K = 32 and
    128, batch 512: 1% off a step, the median of 40 and 12 alternated pairs in one process).
    Every node's flows are then not returned (None)."""
    G, B, K = u.shape[1], u.shape[2], u.shape[3]
    flows = base = None
    unique = _fused.unique_leaf_rows(st)
    zero = C if dense_leaves and unique and len(st.leaf_index) == L_t else 0   # nodes own every row
    if dense_leaves:
        flows = W.new_empty(L_t * G * C, K) if zero else W.new_zeros(L_t * G * C, K)
        base = st.leaf_base(W.device, G, C)
    children = _fused.level_children(st)
    shared = _fused.shared_edge_row(st) if g_edges is not None and G == 1 else -1
    if shared >= 0:
        r = W.new_empty(st.num_nodes, G, B, K)                # every level's r, at its nodes' rows
    else:
        r = W.new_empty(max(max_edge_nodes(st), 1), G, B, K)  # one level's r = a_parent / M
    small = shared < 0 and not keep_a          # a into a one-level buffer; u keeps the upward pass's values
    rwbuf = W.new_empty(max(max_edge_nodes(st), 1), G, B, K) if small else None
    # the products inside the level kernels (one parallel region a level, not three) where its
    # items take whole (node, group) pairs; level d + 1's r is then written while level d's is
    # read, so the levels alternate between two r buffers
    fuse = (K >= kernels.FUSE_DOWN_MIN_K and shared < 0 and dense_leaves and unique and _gemm.serves(W)
            and max_edge_nodes(st) * G >= kernels.FUSE_MIN_PAIRS)
    r2 = W.new_empty(r.shape) if fuse else None

    def r_of(d, c0, ne):
        if shared >= 0:
            return r[c0:c0 + ne]
        return (r2 if fuse and d % 2 else r)[:ne]

    def level(d, rw, nmul, products=None):
        """Level d's flows a = u * rw, its leaf flows, and level d + 1's r (and copies)."""
        a, b = st.levels[d]
        nxt = {}
        if d + 1 < st.depth:
            c0, c1 = st.levels[d + 1]
            ne = st.num_edge_nodes[d + 1]
            nxt = dict(children=children[d], ne_next=ne, m_next=M[c0:c0 + ne] if ne else None, u_next=u[c0:c1],
                       r_next=r_of(d + 1, c0, ne) if ne else None)
        _fused.down_level(u[a:b], rw, nmul, flows, None if base is None else base[a:b],
                          None if xs is None else xs[a:b], repeat, None if miss is None else miss[a:b], unique,
                          zero, a_in_rw=shared >= 0 or small, products=products, **nxt)

    level(0, None, 0)
    for d in range(1, st.depth):
        c0 = st.levels[d][0]
        ne = st.num_edge_nodes[d]
        rw = products = None
        if ne:
            Wl, out, rl = edge_level(st, idx, W, d), rwbuf[:ne] if small else M[c0:c0 + ne], r_of(d, c0, ne)
            sl = st.edge_slices[d]
            in_kernel = fuse and ne * G >= kernels.FUSE_MIN_PAIRS and (g_edges is None or (sl is not None and st.edge_rows_exact))
            if g_edges is not None and shared < 0 and not in_kernel:
                _edge_flows(st, idx, g_edges, rl, u[c0:c0 + ne], d - 1, c0, ne, K, B)
            if in_kernel:
                products = (_gemm.address("nn"), 0 if g_edges is None else _gemm.address("tn"), rl, Wl,
                            None if g_edges is None else g_edges[sl[0]:sl[1]])
                rw = out
            else:
                rw = _gemm.mm(rl, Wl, out)
                if rw is None:
                    rw = _mm(rl, Wl, out=out)
        level(d, rw, ne, products)
    if shared < 0:
        return flows, None if small else u
    R, U = r[1:].view(-1, K).t(), u[1:].view(-1, K)          # all nodes and examples at once
    if _edge_rows_written(st, g_edges):                      # one edge: g_edges is not zeroed
        torch.matmul(R, U, out=g_edges[shared, 0])
    else:
        g_edges[shared, 0].addmm_(R, U)
    M[0].copy_(u[0])                                          # the root's flows; the others' are in M
    return flows, M


def _edge_flows(st, idx, g_edges, r, uc, d, c0, ne, K, B) -> None:
    """g_edges rows of level d + 1 += r^T u_child (written, or accumulated for tied rows)."""
    sl = st.edge_slices[d + 1]
    if sl is not None and st.edge_rows_exact:
        if _gemm.tmm(r, uc, g_edges[sl[0]:sl[1]]) is None:
            torch.matmul(r.transpose(-1, -2), uc, out=g_edges[sl[0]:sl[1]])
    elif sl is not None:                                                 # tied rows: accumulate in the GEMM
        g_edges[sl[0]:sl[1]].view(-1, K, K).baddbmm_(r.transpose(-1, -2).reshape(-1, K, B), uc.reshape(-1, B, K))
    else:
        index_add(g_edges, idx["edge_rows"][c0:c0 + ne], torch.matmul(r.transpose(-1, -2), uc))


def _sparse_leaf_grad(st, a, xs, miss, repeat, shape):
    """Flows a [V, G, B, K] (BFS order; overwritten at missing values) of the leaf table
    ``shape`` = [L_t, G, C, K] as an uncoalesced sparse COO tensor: entry (leaf row of v, g,
    x[v, g, b]) gets a[v, g, b] (zero where the value is missing)."""
    V, G, B, K = a.shape
    if miss is not None:
        a.masked_fill_(_repeat(miss, 0, V, repeat)[..., None], 0.0)
    if repeat > 1:
        xs = xs[:, :, None].expand(V, xs.shape[1], repeat, B).reshape(V, G, B)
    idx = st.on(a.device)
    ind = torch.stack([idx["leaf_rows"][:, None, None].expand(V, G, B),
                       st.group_index(a.device, G)[None, :, None].expand(V, G, B), xs]).view(3, -1)
    return torch.sparse_coo_tensor(ind, a.view(-1, K), shape, check_invariants=False)


def tree_lls(st, log_edges, log_root, log_leaves, x=None, missing=None, evidence=None):
    """Differentiable log-likelihoods [B, G, H]; see the module docstring for shapes."""
    return TreeLL.apply(st, log_edges, log_root, log_leaves, x, missing, evidence)
