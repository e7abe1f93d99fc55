"""A tiny circuit level for the level-kernel tests (test_fused, test_gemm; imported by them).

Three nodes in G groups over B examples, each with C leaf values: leaf tables, each node's
leaf rows (base) and observed values (xs), a missing mask, and a next level of four children
(three edge nodes, then a copy) with their parents (par) in the kernels' CSR form (ptr, order).
"""

from __future__ import annotations

import numpy as np
import torch


def tiny_level(n, G, B, K, C, seed):
    g = torch.Generator().manual_seed(seed)
    leaves = torch.rand(n * G * C, K, generator=g) + 0.1
    base = (torch.arange(n)[:, None] * G + torch.arange(G)[None, :]) * C
    xs = torch.randint(0, C, (n, G, B), generator=g)
    miss = torch.rand(n, G, B, generator=g) < 0.3
    par = torch.tensor([1, 0, 1, 2])                       # the next level: 3 edge nodes, then a copy
    order = np.argsort(par.numpy(), kind="stable").astype(np.int64)
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(par.numpy(), minlength=n), out=ptr[1:])
    return g, leaves, base, xs, miss, par, order, ptr
