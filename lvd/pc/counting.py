"""Initialization by counting from observed latents (LVD, method.md section 2 step 6 and 4).

With every latent of a tree observed, maximum-likelihood parameters are closed-form counts:
    root   [a]      proportional to #(z_root = a)
    edges  [a, b]   proportional to #(z_parent = a, z_child = b)
    leaves [a, v]   proportional to #(z_node = a, x_node = v)
each smoothed by the same pseudocount rule as the EM update. Tied rows add their counts.
"""

from __future__ import annotations

import numpy as np
import torch

from lvd.pc.em import update


def counts(tc, z, x=None) -> dict[str, torch.Tensor]:
    """Count tables of a G = 1 tree from states z [N, V] (and values x [N, V])."""
    if tc.num_groups != 1 or tc.num_heads != 1:
        raise ValueError("counting initialization is defined for single-group, single-head trees")
    if getattr(tc, "var_map", None) is not None:
        raise ValueError("counting initialization is not defined for a circuit with a var_map (per-group trees)")
    z = torch.as_tensor(np.asarray(z) if not torch.is_tensor(z) else z).long().cpu()
    N, V = z.shape
    K, st = tc.num_latents, tc.structure
    if V != st.num_nodes:
        raise ValueError(f"z has {V} columns, the circuit has {st.num_nodes} latent nodes")
    if z.min() < 0 or z.max() >= K:
        raise ValueError(f"latent states must lie in [0, {K}), found [{int(z.min())}, {int(z.max())}]")
    out = {k: torch.zeros_like(v, device="cpu") for k, v in tc.params.items()}
    root = int(st.order[0])
    out["root"][0, 0] = torch.bincount(z[:, root], minlength=K).float()
    if st.copy.any():                            # a copy's latent is its parent's (its own column ignored)
        z = z.clone()
        for v in st.order[1:]:
            if st.copy[v]:
                z[:, v] = z[:, st.parents[v]]
    nodes = torch.from_numpy(np.flatnonzero((st.parents >= 0) & ~st.copy))
    par = torch.from_numpy(st.parents[nodes.numpy()])
    rows = torch.from_numpy(st.edge_index[nodes.numpy()])
    # flat index (row, parent state, child state) for every (example, edge)
    flat = (rows[None, :] * K + z[:, par]) * K + z[:, nodes]
    E_t = out["edges"].shape[0]
    out["edges"][:, 0] = torch.bincount(flat.reshape(-1), minlength=E_t * K * K).float().view(E_t, K, K)
    if x is not None and "leaves" in out:
        x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).long().cpu()
        C = tc.num_cats
        if x.min() < 0 or x.max() >= C:
            raise ValueError(f"values must lie in [0, {C}), found [{int(x.min())}, {int(x.max())}]")
        L_t = out["leaves"].shape[0]
        lrows = torch.from_numpy(st.leaf_index)
        flat = (lrows[None, :] * C + x) * K + z                              # layout [L_t, C, K]
        out["leaves"][:, 0] = torch.bincount(flat.reshape(-1), minlength=L_t * C * K).float().view(L_t, C, K)
    elif "leaves" in out:
        del out["leaves"]
    return out


def count_init(tc, z, x=None, pseudocount: float = 0.1) -> None:
    """Set the tree's parameters from observed latents (in place); leaves need x."""
    c = counts(tc, z, x)
    update(tc, {k: v.to(tc.device) for k, v in c.items()}, 1.0, pseudocount)
