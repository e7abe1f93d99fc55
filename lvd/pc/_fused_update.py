"""Fused CPU kernels (numba) for the EM update, the companions of lvd.pc._fused's pass kernels
(the same conditions: CPU float32 tables, numba present, kernel mode not ``torch``; the same
thread count):

- ``em_update``: the dense update of lvd.pc.em.em_step, one pass for the sums and one for
  p <- keep p + w (F + a / n);
- ``sparse_step``: the sparse update (the pass with zero flow, then the entries' share), by row
  ranges (threads never write the same entry).

Each returns False (nothing done) where it does not serve the call; lvd.pc.em then runs torch's.
"""

from __future__ import annotations

import numpy as np
import torch

from lvd.pc._fused import _FLAGS, _ONE, _threads, numba, usable

if numba is not None:
    from numba import njit, prange


if numba is not None:
    @njit(parallel=True, fastmath=_FLAGS, cache=True, nogil=True, boundscheck=False)
    def _em_update(p, F, step, pseudo, min_denom):
        A, N, R = p.shape
        for a in prange(A):
            acc = np.zeros(R, np.float32)
            for n in range(N):
                for r in range(R):
                    acc[r] += F[a, n, r]
            w = np.empty(R, np.float32)
            keep = np.empty(R, np.float32)
            add = np.empty(R, np.float32)
            for r in range(R):
                denom = acc[r] + pseudo
                if denom >= min_denom:
                    w[r] = step / denom
                    keep[r] = _ONE - step
                else:
                    w[r] = np.float32(0.0)
                    keep[r] = _ONE
                add[r] = w[r] * (pseudo / N)
            for n in range(N):
                for r in range(R):
                    p[a, n, r] = keep[r] * p[a, n, r] + (w[r] * F[a, n, r] + add[r])


if numba is not None:
    @njit(parallel=True, fastmath=_FLAGS, cache=True, nogil=True, boundscheck=False)
    def _em_update_rows(p, F, step, pseudo, min_denom):
        A, N = p.shape                     # distributions along the last, contiguous axis
        for a in prange(A):
            acc = np.float32(0.0)
            for n in range(N):
                acc += F[a, n]
            denom = acc + pseudo
            w, keep = np.float32(0.0), _ONE
            if denom >= min_denom:
                w, keep = step / denom, _ONE - step
            add = w * (pseudo / N)
            for n in range(N):
                p[a, n] = keep * p[a, n] + (w * F[a, n] + add)


def em_update(p: torch.Tensor, F: torch.Tensor, dim: int, step_size: float, pseudocount: float,
              min_denom: float) -> bool:
    """lvd.pc.em.em_step's dense update in one parallel kernel (one pass over F for the sums,
    one over p and F for the update) when p and F are contiguous CPU float32 tables; False
    (nothing done) otherwise."""
    if not (usable(p, F) and p.is_contiguous() and F.is_contiguous() and p.shape == F.shape
            and isinstance(step_size, float | int) and p.dim() > 0):
        return False
    dim = dim % p.dim()
    A = int(np.prod(p.shape[:dim], dtype=np.int64))
    R = int(np.prod(p.shape[dim + 1:], dtype=np.int64))
    _threads()
    args = (np.float32(step_size), np.float32(pseudocount), np.float32(min_denom))
    if R == 1:
        _em_update_rows(p.numpy().reshape(A, p.shape[dim]), F.detach().numpy().reshape(A, p.shape[dim]), *args)
    else:
        _em_update(p.numpy().reshape(A, p.shape[dim], R), F.detach().numpy().reshape(A, p.shape[dim], R), *args)
    return True


if numba is not None:
    @njit(parallel=True, fastmath=_FLAGS, cache=True, nogil=True, boundscheck=False)
    def _sparse_step(p, n, keep, add, rows, vals, w, dist, nblk):
        R, K = p.shape
        ne = rows.shape[0]
        span = (R + nblk - 1) // nblk
        for t in prange(nblk):             # blocks own row ranges: no two write one entry, and
            r0 = t * span                  # each row's entries add up in their order, whatever
            r1 = min(R, r0 + span)         # nblk is
            for r in range(r0, r1):        # the update with zero flow
                d = r // n
                for k in range(K):
                    p[r, k] = keep[d, k] * p[r, k] + add[d, k]
            for e in range(ne):            # plus the entries' share
                r = rows[e]
                if r >= r0 and r < r1:
                    d = dist[e]
                    for k in range(K):
                        p[r, k] += vals[e, k] * w[d, k]


def sparse_step(p: torch.Tensor, n: int, keep: torch.Tensor, add: torch.Tensor, w: torch.Tensor,
                rows: torch.Tensor, vals: torch.Tensor, dist: torch.Tensor) -> bool:
    """The sparse EM update of lvd.pc.em._em_step_sparse in one kernel, on p viewed [R, K] with
    distribution d = r // n for row r (its n rows consecutive): p[r] <- keep[d] p[r] + add[d]
    everywhere, then p[rows[e]] += vals[e] * w[dist[e]] (keep, add, w [nd, K]). Blocks own row
    ranges (4 per thread) and take whole rows: splitting the columns between the threads
    instead was 4x slower (7.6 against 1.6 ms for the share of 16,384 entries of 256 floats on 2
    threads). False (nothing done) unless the tensors are contiguous CPU float32 / int64 ones."""
    if not (usable(p, vals, w, keep, add) and p.dim() == 2 and vals.dim() == 2
            and all(t.is_contiguous() for t in (p, vals, w, keep, add))):
        return False
    _threads()
    _sparse_step(p.numpy(), int(n), keep.numpy(), add.numpy(), rows.contiguous().numpy(), vals.detach().numpy(),
                 w.numpy(), dist.contiguous().numpy(), 4 * numba.get_num_threads())
    return True
