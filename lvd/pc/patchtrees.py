"""Per-group patch trees: every parameter group's own Chow-Liu tree from its member patches
(``pc.patch_tree: group``, LVD-PG's per-cluster trees; lvd.pc.lvdcircuit.lvd_circuit runs them
in one super-tree, lvd.pc.varmap)."""

from __future__ import annotations

import numpy as np

from lvd.pc.patches import patch_index
from lvd.pc.structures import chow_liu_tree

MIN_TREE_MEMBERS = 32   # a group with fewer member patches gets the pooled tree (patch_tree "group")


def group_trees(data, z, image_shape, patch_size: int, mode: str, num_states: int, heads_per_group: int,
                num_cats: int, pooled, seed: int = 0) -> tuple[list, list[int]]:
    """Every parameter group's own Chow-Liu tree over the patch variables, from its members:
    the patches whose state it serves (mode "shared": every position's patches with state s,
    s // H == g; mode "position": position i's patches with z_i // H == r for group i * R + r).
    Groups with fewer than MIN_TREE_MEMBERS members get ``pooled`` (a parents array). Returns
    (parents per group, member counts)."""
    data, z = np.asarray(data), np.asarray(z)
    idx = patch_index(*image_shape, patch_size)
    m, P = idx.shape
    H = int(heads_per_group)
    R = num_states // H
    G = m * R if mode == "position" else R
    owner = z // H if mode == "shared" else np.arange(m)[None, :] * R + z // H      # [N, m] group
    order = np.argsort(owner.reshape(-1), kind="stable")
    bounds = np.searchsorted(owner.reshape(-1)[order], np.arange(G + 1))
    trees, counts = [], []
    for g in range(G):
        flat = order[bounds[g]:bounds[g + 1]]
        rows, pos = np.divmod(flat, m)
        counts.append(len(flat))
        if len(flat) < MIN_TREE_MEMBERS:
            trees.append(np.asarray(pooled))
            continue
        trees.append(chow_liu_tree(data[rows[:, None], idx[pos]], num_cats, seed=seed + g))
    return trees, counts
