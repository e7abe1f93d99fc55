"""Masks of a growing patch circuit and pruning (LVD-PG; method.md section 3), on the dense engine.

The dense tables of lvd.pc.tree stay dense; what growing (lvd.pc.grow) and pruning change is
which entries may be non-zero, kept here as ``Masks`` (bool, shaped like the tables; see
lvd.pc.grow's docstring for their meaning). ``prune`` masks out the entries whose flow is
below a per-group threshold, keeping every distribution's largest entry; ``apply_masks``
zeroes and renormalizes the tables. After growing, the edge and root masks travel with the
circuit (TreeCircuit.masks), so later EM keeps the pruned entries zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lvd.pc.em import masked_


@dataclass
class Masks:
    """Allowed entries of a growing patch circuit (see the module docstring)."""
    edges: torch.Tensor     # bool [E_t, G, K, K]
    root: torch.Tensor      # bool [G, H, K]
    active: torch.Tensor    # bool [V, G, K]
    heads: np.ndarray       # int64 [G]: heads 0 .. heads[g] - 1 of group g are active

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The masks of the EM update, by table name (lvd.pc.groups.em_groups(masks=...))."""
        return {"edges": self.edges, "root": self.root}

    def select(self, groups) -> "Masks":
        g = torch.as_tensor(groups, device=self.edges.device).long()
        return Masks(self.edges.index_select(1, g).clone(), self.root.index_select(0, g).clone(),
                     self.active.index_select(1, g).clone(), self.heads[np.asarray(groups, dtype=np.int64)].copy())


def _edge_nodes(st) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(non-root nodes v, their parents, their edge rows); every non-root node must own its row."""
    v = np.flatnonzero(st.parents >= 0)
    rows = st.edge_index[v]
    if len(np.unique(rows)) != len(rows):
        raise ValueError("growing needs untied edges: every non-root node its own edge table row")
    return v, st.parents[v], rows


def _root(st) -> int:
    return int(np.flatnonzero(st.parents < 0)[0])


def rebuild_edge_mask(tc, active: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Edge mask [E_t, G, K, K] allowing every (active parent state -> active child state) entry
    (intersected with ``keep`` when given). Rows of inactive parent states allow the active child
    states, so they stay valid distributions."""
    st = tc.structure
    v, par, rows = _edge_nodes(st)
    E_t, G, K, _ = tc.params["edges"].shape
    m = torch.zeros(E_t, G, K, K, dtype=torch.bool, device=tc.device)
    m[rows] = active[v][:, :, None, :].expand(-1, -1, K, -1)          # child state active
    if E_t > len(rows):                                                # unused rows (the root's slot)
        unused = np.setdiff1d(np.arange(E_t), rows)
        m[unused] = True
    return m if keep is None else m & keep


def apply_masks(tc, masks: Masks) -> None:
    """Zero the masked entries of ``tc``'s edges and roots and renormalize (in place)."""
    with torch.no_grad():
        for name, m in masks.as_dict().items():
            masked_(tc.params[name], m.to(tc.device), tc.norm_dims[name])


def init_masks(tc, num_states: int, num_heads) -> Masks:
    """Masks with states 0 .. num_states - 1 of every node active and ``num_heads`` (int or [G])
    heads active, applied to ``tc`` (its other states get zero incoming weight). Inactive heads'
    root rows become copies of head 0's (valid, never assigned)."""
    K, G, H, V = tc.num_latents, tc.num_groups, tc.num_heads, tc.num_nodes
    if not 1 <= num_states <= K:
        raise ValueError(f"init_masks: {num_states} active states, the circuit allocates {K}")
    heads = np.broadcast_to(np.asarray(num_heads, dtype=np.int64), (G,)).copy()
    if G and (heads.min() < 1 or heads.max() > H):
        raise ValueError(f"init_masks: active heads must be in [1, {H}], got {sorted(set(heads.tolist()))}")
    active = torch.zeros(V, G, K, dtype=torch.bool, device=tc.device)
    active[:, :, :num_states] = True
    root = active[_root(tc.structure)][:, None, :].expand(G, H, K).clone()
    masks = Masks(rebuild_edge_mask(tc, active), root, active, heads)
    apply_masks(tc, masks)
    with torch.no_grad():
        for g in range(G):
            tc.params["root"][g, heads[g]:] = tc.params["root"][g, 0]
    return masks


# --------------------------------------------------------------------------------- pruning
def prune(tc, masks: Masks, flow: dict, threshold) -> np.ndarray:
    """Mask out the edges and root entries whose flow is below threshold[g]; returns the number
    of entries pruned per group [G]. A row that would lose every allowed entry keeps the one with
    the largest flow. Rows of inactive parent states and inactive heads are left alone. Applies
    the masks to ``tc`` (zeroed, renormalized)."""
    G = tc.num_groups
    thr = torch.as_tensor(np.broadcast_to(np.asarray(threshold, dtype=np.float64), (G,)).copy(),
                          dtype=torch.float32, device=tc.device)
    before = masks.edges.sum(dim=(0, 2, 3)) + masks.root.sum(dim=(1, 2))
    st = tc.structure
    v, par, rows = _edge_nodes(st)
    # edges: rows (edge row e, group g, parent state k) of active parent states
    Fe = flow["edges"].to(tc.device)
    live_rows = torch.zeros(masks.edges.shape[:3], dtype=torch.bool, device=tc.device)   # [E_t, G, K]
    live_rows[rows] = masks.active[par]
    masks.edges = _prune_rows(masks.edges, Fe, thr.view(1, G, 1, 1), live_rows)
    # root: one row per (group, active head)
    H = tc.num_heads
    live_heads = torch.as_tensor(np.arange(H)[None, :] < masks.heads[:, None], device=tc.device)  # [G, H]
    masks.root = _prune_rows(masks.root, flow["root"].to(tc.device), thr.view(G, 1, 1), live_heads)
    apply_masks(tc, masks)
    after = masks.edges.sum(dim=(0, 2, 3)) + masks.root.sum(dim=(1, 2))
    return (before - after).cpu().numpy()


def _prune_rows(mask, F, thr, live):
    keep = mask & (F >= thr)
    best = torch.where(mask, F, torch.full_like(F, -1.0)).argmax(-1, keepdim=True)
    lost = ~keep.any(-1, keepdim=True) & mask.any(-1, keepdim=True)
    keep = keep | (torch.zeros_like(keep).scatter_(-1, best, True) & lost)
    return torch.where(live[..., None], keep, mask)
