"""Brute-force references for the LVD image circuit (tiny models only; imported by the tests).

Like pc_bruteforce (whose tree enumeration it uses), nothing here calls the engine's passes:
p(x) = sum_z p_top(z) prod_i p_i(x_i | z_i) is computed from the tables by enumeration, the
patch evidence by looping over the contract's patch order. ``LVD_CONFIGS`` / ``make_lvd`` are the
tiny configurations the LVD tests share.
"""

from __future__ import annotations

import numpy as np

from pc_bruteforce import condition, joint_of, posterior_counts, posterior_counts_soft, tables, top_posterior_of_z


# ------------------------------------------------------------------ the LVD circuit
def patch_cols(image_shape, p):
    """[num_positions, p*p*Ch] flat indices of each patch, by loops over the contract's order:
    patches row-major over the grid, inside a patch row-major (h, w, ch)."""
    H, W, Ch = image_shape
    out = []
    for gr in range(H // p):
        for gc in range(W // p):
            out.append([((gr * p + dh) * W + gc * p + dw) * Ch + ch
                        for dh in range(p) for dw in range(p) for ch in range(Ch)])
    return np.array(out)


def lvd_state_head(m, i, s):
    """(group, head) of the patch circuit that serves state s at position i."""
    H = m.patch.num_heads
    if m.mode == "position":                       # K / H groups per position, in state order
        return i * (m.num_states // H) + s // H, s % H
    return s // H, s % H


def lvd_patch_evidence(m, x, missing=None):
    """L[i, s] = log p_i(x_i,observed | Z_i = s) by enumeration of the patch tree: [num_pos, K]."""
    idx = patch_cols(m.image_shape, m.patch_size)
    L = np.zeros((idx.shape[0], m.num_states))
    for i, cols in enumerate(idx):
        for s in range(m.num_states):
            g, h = lvd_state_head(m, i, s)
            J = joint_of(m.patch, g, h)
            mi = None if missing is None else np.asarray(missing)[cols]
            L[i, s] = np.log(condition(J, len(cols), np.asarray(x)[cols], mi).sum())
    return L


def lvd_flows(m, X, missing=None, z=None):
    """Brute-force flows of LVDCircuit.objective ("patch.*" and "top.*") and lls [B]."""
    out = {k: np.zeros(tuple(v.shape)) for k, v in m.params.items()}
    idx = patch_cols(m.image_shape, m.patch_size)
    lls = np.zeros(len(X))
    tt = tables(m.top)
    for b in range(len(X)):
        mb = None if missing is None else np.asarray(missing)[b]
        L = lvd_patch_evidence(m, X[b], mb)
        if z is not None:
            for i, k in enumerate(np.asarray(z[b])):
                if k >= 0:
                    keep = L[i, k]
                    L[i] = -np.inf
                    L[i, k] = keep
        tot, c = posterior_counts_soft(tt, L) if m.top.num_cats else posterior_counts(tt, evidence=L)
        lls[b] = np.log(tot)
        out["top.root"][0, 0] += c["root"]
        out["top.edges"][:, 0] += c["edges"]
        if m.top.num_cats:
            out["top.leaves"][:, 0] += c["leaves"]
        # p(Z_i = s | x) from the top, then the patch posterior counts given Z_i = s
        _, J = top_posterior_of_z(m, L)
        V = J.ndim
        for i, cols in enumerate(idx):
            pz = J.sum(axis=tuple(a for a in range(V) if a != i))
            for s in range(m.num_states):
                if pz[s] == 0:
                    continue
                g, h = lvd_state_head(m, i, s)
                mi = None if mb is None else mb[cols]
                _, pc_ = posterior_counts(tables(m.patch, g, h), np.asarray(X[b])[cols], mi)
                out["patch.root"][g, h] += pz[s] * pc_["root"]
                out["patch.edges"][:, g] += pz[s] * pc_["edges"]
                out["patch.leaves"][:, g] += pz[s] * pc_["leaves"]
    return out, lls


def lvd_lls_bf(m, X, missing=None):
    res = []
    for b in range(len(X)):
        L = lvd_patch_evidence(m, X[b], None if missing is None else np.asarray(missing)[b])
        res.append(np.log(top_posterior_of_z(m, L)[0]))
    return np.array(res)


LVD_CONFIGS = {
    "pos4": dict(image_shape=(2, 2, 1), patch_size=1, num_states=3, num_latents=2, num_cats=3,
                 top_parents=[-1, 0, 0, 1], patch_parents=[-1], mode="position"),
    "pos1": dict(image_shape=(2, 2, 1), patch_size=2, num_states=2, num_latents=3, num_cats=3,
                 top_parents=[-1], patch_parents=[1, -1, 1, 0], mode="position"),
    "posH": dict(image_shape=(2, 2, 1), patch_size=2, num_states=4, num_latents=2, num_cats=3,
                 top_parents=[-1], patch_parents=[1, -1, 1, 0], mode="position", heads_per_group=2),
    "posR": dict(image_shape=(2, 2, 1), patch_size=2, num_states=4, num_latents=2, num_cats=3,
                 top_parents=[-1], patch_parents=[1, -1, 1, 0], mode="position", heads_per_group=2,
                 root_states=True),
    "shared": dict(image_shape=(2, 2, 1), patch_size=1, num_states=4, num_latents=2, num_cats=3,
                   top_parents=[1, -1, 1, 2], patch_parents=[-1], mode="shared", num_groups=2),
    "chan": dict(image_shape=(2, 2, 2), patch_size=1, num_states=3, num_latents=2, num_cats=2,
                 top_parents=[-1, 0, 1, 2], patch_parents=[-1, 0], mode="shared", num_groups=1),
    # the HCLT top (hidden H_i above each Z_i), position and shared modes
    "pos4h": dict(image_shape=(2, 2, 1), patch_size=1, num_states=3, num_latents=2, num_cats=3,
                  top_parents=[-1, 0, 0, 1], patch_parents=[-1], mode="position", top="hclt",
                  top_num_latents=2),
    "sharedh": dict(image_shape=(2, 2, 1), patch_size=1, num_states=4, num_latents=2, num_cats=3,
                    top_parents=[1, -1, 1, 2], patch_parents=[-1], mode="shared", num_groups=2,
                    top="hclt", top_num_latents=3),
}


def make_lvd(name, seed=0):
    """A tiny LVD circuit with random parameters (configurations documented in test_lvd.py)."""
    from lvd import pc

    return pc.lvd_circuit(**LVD_CONFIGS[name], seed=seed)
