"""Structure builders: Chow-Liu trees and the HCLT / HMM circuits.

Chow-Liu: the maximum spanning tree of pairwise mutual information. MI is estimated from at
most ``max_samples`` rows (seeded subsample) with values binned into at most ``num_bins``
equal-width bins (pixel values: neighbouring levels carry the same dependency information;
256 x 256 joint tables per pair would cost 16x more for little change in the tree). Ties are
broken by node index (Prim's algorithm takes the first maximum); zero MI is fine (any
spanning tree is a tree). The root is the tree's center, which minimizes the depth and so
the number of sequential levels in every pass.
"""

from __future__ import annotations

import numpy as np
import torch

from lvd.pc.circuit import TreeCircuit
from lvd.pc.tree import TreeStructure


def mutual_information(data, num_cats: int, num_bins: int | None = 16, max_samples: int = 5000,
                       seed: int = 0, block_vars: int = 64) -> np.ndarray:
    """Pairwise mutual information (nats) between the columns of int data [N, V] -> [V, V]."""
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError(f"data must be a non-empty [N, V] integer array, got shape {data.shape}")
    if data.min() < 0 or data.max() >= num_cats:
        raise ValueError(f"data values must lie in [0, {num_cats}), found [{data.min()}, {data.max()}]")
    rng = np.random.default_rng(seed)
    if data.shape[0] > max_samples:
        data = data[np.sort(rng.choice(data.shape[0], max_samples, replace=False))]
    bins = num_cats if num_bins is None or num_bins >= num_cats else num_bins
    x = torch.from_numpy(data.astype(np.int64) * bins // num_cats)
    N, V = x.shape
    onehot = torch.zeros(N, V * bins)
    onehot.scatter_(1, x + torch.arange(V) * bins, 1.0)
    marg = (onehot.sum(0) / N).view(V, bins)                         # [V, bins] = p(x_i = a)
    mi = np.zeros((V, V))
    # MI is symmetric: one block of rows i in [i0, i1) against the columns j >= i0 at a time
    # (about half the matmul work of the full joint, and a block's memory instead of V^2 bins^2)
    for i0 in range(0, V, block_vars):
        i1 = min(V, i0 + block_vars)
        joint = (onehot[:, i0 * bins:i1 * bins].T @ onehot[:, i0 * bins:] / N)
        joint = joint.view(i1 - i0, bins, V - i0, bins)             # p(x_i = a, x_j = b)
        outer = marg[i0:i1].view(-1, bins, 1, 1) * marg[i0:].view(1, 1, -1, bins)
        ratio = torch.where(joint > 0, joint / outer.clamp_min(1e-30), torch.ones(()))
        blk = (joint * ratio.log()).sum(dim=(1, 3)).numpy().astype(np.float64)
        mi[i0:i1, i0:] = blk
    mi = np.triu(mi, 1)
    mi = mi + mi.T                                                   # exactly symmetric, zero diagonal
    return np.maximum(mi, 0.0)


def max_spanning_tree(weights: np.ndarray) -> np.ndarray:
    """Prim's algorithm on a dense symmetric [V, V] matrix; parents with root 0 (-1)."""
    V = weights.shape[0]
    parents = np.full(V, -1, dtype=np.int64)
    in_tree = np.zeros(V, dtype=bool)
    in_tree[0] = True
    best = weights[0].astype(np.float64).copy()
    best_from = np.zeros(V, dtype=np.int64)
    for _ in range(V - 1):
        cand = np.where(in_tree, -np.inf, best)
        v = int(np.argmax(cand))
        parents[v] = best_from[v]
        in_tree[v] = True
        better = weights[v] > best
        best = np.where(better, weights[v], best)
        best_from = np.where(better, v, best_from)
    return parents


def reroot(parents: np.ndarray, root: int) -> np.ndarray:
    """The same undirected tree with ``root`` as its root."""
    V = len(parents)
    adj: list[list[int]] = [[] for _ in range(V)]
    for v, p in enumerate(parents):
        if p >= 0:
            adj[v].append(int(p))
            adj[int(p)].append(v)
    out = np.full(V, -1, dtype=np.int64)
    seen = np.zeros(V, dtype=bool)
    seen[root] = True
    stack = [root]
    while stack:
        v = stack.pop()
        for w in adj[v]:
            if not seen[w]:
                seen[w] = True
                out[w] = v
                stack.append(w)
    return out


def _farthest(parents: np.ndarray, start: int) -> tuple[int, np.ndarray]:
    p = reroot(parents, start)
    depth = np.zeros(len(p), dtype=np.int64)
    order = TreeStructure(p, np.zeros(len(p)), np.zeros(len(p))).order
    for v in order[1:]:
        depth[v] = depth[p[v]] + 1
    return int(np.argmax(depth)), p


def center(parents: np.ndarray) -> int:
    """The middle node of a longest path (minimizes the depth of the rooted tree)."""
    a, _ = _farthest(parents, 0)
    b, p = _farthest(parents, a)
    path = [b]
    while p[path[-1]] >= 0:
        path.append(int(p[path[-1]]))
    return path[len(path) // 2]


def chow_liu_tree(data, num_cats: int, num_bins: int | None = 16, max_samples: int = 5000,
                  seed: int = 0) -> np.ndarray:
    """Parents array [V] (root -1) of the Chow-Liu tree of int data [N, V], rooted at its center."""
    mi = mutual_information(data, num_cats, num_bins, max_samples, seed)
    parents = max_spanning_tree(mi)
    return reroot(parents, center(parents))


def tree_structure(parents, tied_edges: bool = False, tied_leaves: bool = False, edge_order: str = "node",
                   copies=None) -> TreeStructure:
    """Untied: every non-root node its own edge row and leaf row (leaf rows in node order).

    edge_order "node": edge rows in node order (root skipped); "bfs": in the passes' BFS order,
    so every level's edge tables are one contiguous block, read as a view (what pc.hclt and
    pc.lvd_circuit build). copies: bool [V] of nodes whose latent is their parent's (no edge
    row; ``TreeStructure``)."""
    parents = np.asarray(parents)
    V = len(parents)
    copy = np.zeros(V, bool) if copies is None else np.asarray(copies, bool) & (parents >= 0)
    edge = np.where(copy, -1, 0).astype(np.int64)
    if not tied_edges:
        if edge_order == "bfs":
            order = TreeStructure(parents, edge, np.zeros(V)).order
        elif edge_order == "node":
            order = np.arange(V)
        else:
            raise ValueError(f"edge_order must be 'node' or 'bfs', got {edge_order!r}")
        with_edge = [v for v in order if parents[v] >= 0 and not copy[v]]
        edge[with_edge] = np.arange(len(with_edge))
    leaf = np.zeros(V, dtype=np.int64) if tied_leaves else np.arange(V)
    return TreeStructure(parents, edge, leaf)


def leaf_copies(parents) -> np.ndarray:
    """bool [V]: the non-root leaves of a tree (the nodes an HCLT without leaf latents makes
    copies of their parent's latent)."""
    parents = np.asarray(parents)
    has_child = np.zeros(len(parents), bool)
    has_child[parents[parents >= 0]] = True
    return ~has_child & (parents >= 0)


def hclt(data, num_latents: int, num_cats: int, seed: int = 0, num_bins: int | None = 16,
         max_samples: int = 5000, device="cpu", leaf_latents: bool = False, parents=None) -> TreeCircuit:
    """Hidden Chow-Liu tree: a Chow-Liu tree over the variables of ``data`` [N, V] in [0, C),
    one latent with ``num_latents`` states per variable, random (seeded) parameters.

    leaf_latents=False (the default): a variable that is a leaf of the Chow-Liu tree has no
    latent of its own and emits from its parent's (PyJuice's HCLT): one K x K edge table per
    internal node instead of per node (on 60,000 Fashion-MNIST images 654 instead of 783).
    Decided on the validation split (README, scripts/hclt_leaf_latents.py: 10 + 1 epochs on
    54,000 images): as good as a latent per variable (valid bpd within 0.002 at K = 8 and
    32, mixed signs), 2% fewer parameters, 3-8% less time per epoch at K = 32.
    leaf_latents=True: one latent per variable.

    parents: the Chow-Liu tree of ``data`` when the caller has it already (it is computed
    with num_bins, max_samples and seed otherwise)."""
    if parents is None:
        data = data.cpu().numpy() if torch.is_tensor(data) else np.asarray(data)
        parents = chow_liu_tree(data, num_cats, num_bins, max_samples, seed)
    parents = np.asarray(parents)
    copies = None if leaf_latents else leaf_copies(parents)
    return TreeCircuit(tree_structure(parents, edge_order="bfs", copies=copies), num_latents, num_cats,
                       kind="hclt", seed=seed, device=device, meta={"leaf_latents": bool(leaf_latents)})


def hmm(seq_len: int, num_latents: int, vocab_size: int, homogeneous: bool = True, seed: int = 0,
        device="cpu") -> TreeCircuit:
    """Hidden Markov model as a chain tree z_1 -> z_2 -> ... -> z_T, each z_t emitting x_t.

    homogeneous=True ties the transition and emission tables across time (one row each).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    parents = np.arange(-1, seq_len - 1)
    st = tree_structure(parents, tied_edges=homogeneous, tied_leaves=homogeneous)
    return TreeCircuit(st, num_latents, vocab_size, kind="hmm", seed=seed, device=device,
                       meta={"homogeneous": bool(homogeneous)})
