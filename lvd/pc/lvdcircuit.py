"""The LVD image circuit: p(x) = sum_z p_top(z) prod_i p_i(x_i | z_i).

Two latent trees (lvd.pc.tree):
  * ``patch``: a tree over the P = p*p*Ch variables of one patch with ``num_latents`` hidden
    states per node, G parameter groups of H heads each. A group is a patch circuit with
    parameters of its own (edges, leaves, root); head h of group g is one root distribution
    over the group's root states, so the H heads of a group share every sub-circuit below
    the root and nothing else. State k of a patch latent is served by one (group, head):
      mode "position" (LVD): R = K / H groups per position, state k of position i is head
          k % H of group i * R + k // H. H = 1 (the default) gives every state of every
          position a patch circuit of its own, fitted on that state's members only
          (method.md section 2, steps 5-6); H = K is the older design where all states of
          a position share one circuit and differ only in the root mixture.
      mode "shared" (LVD-PG): one vocabulary of K = G * H states at every position; state s
          is head s % H of group s // H, and every group is evaluated on every patch.
  * ``top``: the distribution over the num_positions patch variables Z_i, in one of two forms
    (``top_kind``), both fed L[b, i, k] = log p_i(x_i(b) | Z_i = k) as soft evidence:
      "tree": a latent tree whose node i *is* Z_i (num_latents = num_states, no leaves): the
          Chow-Liu tree over the Z's directly (LVD);
      "hclt": an HCLT over the Z's (LVD-PG): node i is a hidden variable H_i with
          ``top.num_latents`` states, Z_i is its observed leaf variable (num_cats = num_states),
          so p(z) = sum_h p_tree(h) prod_i p(z_i | h_i); L enters as soft evidence on the
          leaves (TreeCircuit.group_lls(leaf_evidence=...)).
Z is materialized: hard evidence (z observed), soft evidence (log-potentials) or none.
"""

from __future__ import annotations

import numpy as np
import torch

from lvd.pc import queries
from lvd.pc.circuit import TreeCircuit, _as_long, latent_evidence
from lvd.pc.patches import patch_index
from lvd.pc.structures import chow_liu_tree, tree_structure
from lvd.pc.tree import node_major
from lvd.pc.treell import log_handles
from lvd.pc.patchtrees import group_trees
from lvd.pc.varmap import super_tree


class LVDCircuit:
    norm_dims = TreeCircuit.norm_dims
    kind = "lvd"

    def __init__(self, patch: TreeCircuit, top: TreeCircuit, image_shape, patch_size: int, mode: str):
        self.patch, self.top = patch, top
        self.image_shape = tuple(int(s) for s in image_shape)
        self.patch_size, self.mode = int(patch_size), mode
        self.index = torch.from_numpy(patch_index(*self.image_shape, self.patch_size))  # [m, P]
        m, P = self.index.shape
        if top.num_vars != m or patch.num_vars != P:
            raise ValueError(f"top tree has {top.num_vars} nodes and patch tree {patch.num_vars}; "
                             f"the image has {m} patches of {P} variables")
        G, H = patch.num_groups, patch.num_heads
        K = top.num_cats or top.num_latents
        if mode not in ("position", "shared"):
            raise ValueError(f"mode must be 'position' or 'shared', got {mode!r}")
        if K % H:
            raise ValueError(f"{H} heads per group do not divide num_states = {K}")
        want = m * (K // H) if mode == "position" else K // H
        if G != want:
            raise ValueError(f"mode {mode!r} with {K} states and {H} heads per group needs {want} "
                             f"patch groups, got {G}")

    # ----------------------------------------------------------------- basics
    @property
    def params(self) -> dict[str, torch.Tensor]:
        return {**{f"patch.{k}": v for k, v in self.patch.params.items()},
                **{f"top.{k}": v for k, v in self.top.params.items()}}

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The parts' masks (TreeCircuit.masks) under the names of ``params``."""
        return {**{f"patch.{k}": v for k, v in self.patch.masks.items()},
                **{f"top.{k}": v for k, v in self.top.masks.items()}}

    @property
    def device(self):
        return self.top.device

    @property
    def num_vars(self) -> int:
        return int(np.prod(self.image_shape))

    @property
    def num_positions(self) -> int:
        return self.index.shape[0]

    @property
    def num_states(self) -> int:
        return self.top.num_cats or self.top.num_latents

    @property
    def top_kind(self) -> str:
        """"tree" (the top tree's nodes are the Z's) or "hclt" (hidden H_i above each Z_i)."""
        return "hclt" if self.top.num_cats else "tree"

    @property
    def heads_per_group(self) -> int:
        return self.patch.num_heads

    @property
    def groups_per_position(self) -> int:
        """R: patch groups serving one position (mode "position"); 1 group = H states."""
        return self.num_states // self.patch.num_heads if self.mode == "position" else 0

    def state_group(self, position, state):
        """(group, head) of the patch circuit serving ``state`` at ``position`` (arrays or ints)."""
        H = self.patch.num_heads
        g = state // H
        if self.mode == "position":
            g = position * self.groups_per_position + g
        return g, state % H

    @property
    def num_cats(self) -> int:
        return self.patch.num_cats

    @property
    def num_params(self) -> int:
        return self.patch.num_params + self.top.num_params

    def to(self, device) -> "LVDCircuit":
        self.patch.to(device)
        self.top.to(device)
        return self

    def log_params(self) -> dict[str, torch.Tensor]:
        return {k: v.clamp_min(1e-38).log() for k, v in self.params.items()}

    def log_handles(self, requires_grad=False) -> dict[str, torch.Tensor]:
        """``log_params`` without computing a log (lvd.pc.treell.log_handles)."""
        return log_handles(self.params, requires_grad)

    @staticmethod
    def _split(logp):
        return ({k[6:]: v for k, v in logp.items() if k.startswith("patch.")},
                {k[4:]: v for k, v in logp.items() if k.startswith("top.")})

    # ------------------------------------------------------------ forward
    def _patches(self, a):
        a = torch.as_tensor(a, device=self.device)
        if a.dim() != 2 or a.shape[-1] != self.num_vars:
            raise ValueError(f"x has shape {tuple(a.shape)}, expected [B, num_vars = {self.num_vars}]")
        return a[:, self._index_on(a.device)]                        # [B, m, P]

    def _index_on(self, device) -> torch.Tensor:
        """The patch index [m, P] on ``device`` (made once per device)."""
        cache = self.__dict__.setdefault("_index_cache", {})
        key = str(device)
        if key not in cache:
            cache[key] = self.index.to(device)
        return cache[key]

    def patch_lls(self, logp_patch, x, missing=None) -> torch.Tensor:
        """L[b, i, k] = log p_i(x_i(b) | Z_i = k): [B, m, num_states]."""
        xp = self._patches(_as_long(x, self.device))
        mp = None if missing is None else self._patches(torch.as_tensor(missing).bool())
        B, m, P = xp.shape
        if self.mode == "position" and self.patch.var_map is not None:   # per-group trees: x per group
            R = self.groups_per_position
            xg = xp[:, :, None].expand(B, m, R, P).reshape(B, m * R, P)
            mg = None if mp is None else mp[:, :, None].expand(B, m, R, P).reshape(B, m * R, P)
            return self.patch.group_lls(logp_patch, xg, mg).reshape(B, m, -1)
        if self.mode == "position":
            # every position's patch goes to its R groups: laid out once in the passes' order
            queries.check_values(xp, mp, P, self.num_cats)
            xg = node_major(self.patch.structure, xp, mp, self.num_cats, repeat=self.groups_per_position)
            return self.patch.group_lls(logp_patch, xg).reshape(B, m, -1)   # [B, m, R * H]
        lls = self.patch.group_lls(logp_patch, xp.reshape(B * m, P),
                                   None if mp is None else mp.reshape(B * m, P))
        return lls.reshape(B, m, -1)                                 # [B, m, G * H]

    def objective(self, logp, batch: dict) -> torch.Tensor:
        """log p(x [, z]) per example: batch keys x, missing, z ([B, m], -1 = unobserved), evidence."""
        lp, lt = self._split(logp)
        ev = self.patch_lls(lp, batch["x"], batch.get("missing"))
        if batch.get("z") is not None:
            ev = latent_evidence(batch["z"], self.num_states, ev, self.device)
        if batch.get("evidence") is not None:
            ev = ev + torch.as_tensor(batch["evidence"], device=self.device)
        return self.top_lls(lt, ev)

    def top_lls(self, logp_top, L) -> torch.Tensor:
        """log sum_z p_top(z) prod_i exp(L[b, i, z_i]) per example [B] (differentiable)."""
        if self.top.num_cats:
            return self.top.group_lls(logp_top, leaf_evidence=L)[:, 0, 0]
        return self.top.group_lls(logp_top, evidence=L[:, None])[:, 0, 0]

    def _top_states(self, L, how: str, seed=None) -> torch.Tensor:
        """z [B, m] drawn from p_top(z | L) (how="sample") or argmax_z p_top(z) exp(L) (how="map";
        with the HCLT top: the joint MAP of (H, Z), then Z)."""
        if not self.top.num_cats:
            if how == "map":
                return queries.tree_map(self.top, evidence=L)[:, 0]
            return queries.tree_sample(self.top, L.shape[0], evidence=L, seed=seed)[1][:, 0]
        hidden = self.top.without_leaves()
        logleaf = self.top.params["leaves"].clamp_min(1e-38).log()        # log p(Z_i | H_i)
        lt = logleaf[self.top.structure.on(self.device)["leaf_index"], 0]   # [m, K, M]
        # scores of the hidden H_i given the soft evidence L on Z_i: [B, m, M], Z_i maximized
        # out (max-product, for MAP) or summed out (sampling)
        if how == "map":
            # max_k L[b, i, k] + lt[i, k, h] in blocks (queries.max_plus): no [B, m, K, M] temporary
            ev = queries.max_plus(lt.transpose(1, 2)[:, None], L.permute(1, 0, 2)[:, None])  # [m, 1, B, M]
            h = queries.tree_map(hidden, evidence=ev[:, 0].permute(1, 0, 2))[:, 0]
        else:
            h = queries.tree_sample(hidden, L.shape[0], evidence=self.top.leaf_evidence_scores(logleaf, L)[:, 0],
                                    seed=seed)[1][:, 0]                   # [B, m]
        pos = torch.arange(L.shape[1], device=self.device)[None, :].expand_as(h)
        score = L + lt[pos, :, h]                                          # [B, m, K]
        if how == "map":
            return score.argmax(-1)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed) + 7 if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        return queries._draw((score - score.amax(-1, keepdim=True)).exp(), gen)

    # ------------------------------------------------------------ queries
    @torch.no_grad()
    def log_likelihood(self, x, missing=None, z=None, evidence=None) -> torch.Tensor:
        """log p(x_observed) [B]; with z [B, m] (-1 = unobserved): log p(x_observed, z)."""
        return self.objective(self.log_handles(), {"x": x, "missing": missing, "z": z,
                                                   "evidence": evidence})

    @torch.no_grad()
    def latent_lls(self, x, missing=None) -> torch.Tensor:
        """Patch log-likelihoods under every state, [B, m, num_states] (top-level EM input)."""
        return self.patch_lls(self._split(self.log_handles())[0], x, missing)

    @torch.no_grad()
    def map_latents(self, x, missing=None) -> torch.Tensor:
        """argmax_z p(z, x_observed): int64 [B, m]."""
        return self._top_states(self.latent_lls(x, missing), "map")

    @torch.no_grad()
    def sample(self, n: int, x=None, missing=None, seed=None) -> torch.Tensor:
        """Samples int64 [n, num_vars]; with x and missing: the missing pixels given the rest."""
        dev, m = self.device, self.num_positions
        gen_seed = None if seed is None else int(seed)
        if x is None:
            ev = torch.zeros(n, m, self.num_states, device=dev)
            x = torch.zeros(n, self.num_vars, dtype=torch.long, device=dev)
            missing = torch.ones(n, self.num_vars, dtype=torch.bool, device=dev)
        else:
            x = _as_long(x, dev)
            missing = torch.zeros_like(x, dtype=torch.bool) if missing is None else \
                torch.as_tensor(missing, device=dev).bool()
            ev = self.latent_lls(x, missing)
        B = x.shape[0]
        z = self._top_states(ev, "sample", seed=gen_seed)           # [B, m]
        xp, mp = self._patches(x), self._patches(missing)
        seed2 = None if gen_seed is None else gen_seed + 1
        P = xp.shape[-1]
        pos = torch.arange(m, device=dev)[None, :]
        g, h = self.state_group(pos, z)                              # [B, m] each
        if self.mode == "position":
            R = self.groups_per_position
            xg = xp[:, :, None].expand(B, m, R, P).reshape(B, m * R, P)
            mg = mp[:, :, None].expand(B, m, R, P).reshape(B, m * R, P)
            heads = h.repeat_interleave(R, dim=1)                    # [B, G]: head of each group
            allg, _ = queries.tree_sample(self.patch, B, xg, mg, heads=heads, seed=seed2)  # [B, G, P]
            out = allg[torch.arange(B, device=dev)[:, None], g]       # [B, m, P]
        else:
            heads = h.reshape(-1, 1).expand(-1, self.patch.num_groups)
            allg, _ = queries.tree_sample(self.patch, B * m, xp.reshape(-1, P), mp.reshape(-1, P),
                                          heads=heads, seed=seed2)     # [B*m, G, P]
            out = allg[torch.arange(B * m, device=dev), g.reshape(-1)].reshape(B, m, P)
        result = x.clone()
        result[:, self.index.to(dev)] = out
        return result


def distinguishable(num_heads: int, num_latents: int) -> str | None:
    """Why heads sharing a patch circuit cannot carry distinct states, or None when they can.

    The H heads of a group are mixtures over the group's ``num_latents`` root states: with one
    root state they are all the same distribution; with more heads than root states they are
    confined to a num_latents-dimensional family (measured with 64 heads and 32 root states:
    1.3% of a position's parameters see the assignment)."""
    if num_heads > 1 and num_latents == 1:
        return (f"{num_heads} heads per group over a patch circuit with num_latents = 1 are all the "
                f"same distribution: the states cannot be told apart")
    if num_heads > num_latents:
        return (f"{num_heads} heads per group share one patch circuit with only {num_latents} root "
                f"states: the heads span at most {num_latents} directions, so states are only "
                f"weakly distinguished (use heads_per_group <= num_latents, ideally 1)")
    return None


def lvd_circuit(image_shape, patch_size: int, num_states: int, num_latents: int, num_cats: int, *,
                mode: str = "position", num_groups: int | None = None, heads_per_group: int | None = None,
                root_states: bool = False, top_parents=None, patch_parents=None, data=None, z=None,
                top: str = "tree", top_num_latents: int = 16, seed: int = 0, device="cpu",
                patch_tree: str = "pooled", patch_trees=None) -> LVDCircuit:
    """Build an LVD circuit with random (seeded) parameters.

    Structures: ``patch_parents`` (tree over one patch's P variables) defaults to the Chow-Liu
    tree of the training patches pooled over positions (needs ``data`` [N, num_vars]);
    ``top_parents`` (tree over positions) to the Chow-Liu tree of the latents ``z`` [N, m]
    (method.md section 2 step 5).

    Heads: ``heads_per_group`` H states share one patch circuit (H must divide num_states).
    Mode "position": default H = 1, every state of every position owns its patch circuit.
    Mode "shared": H = num_states / num_groups (``num_groups`` default 1) unless
    ``heads_per_group`` is given. A configuration whose heads cannot be told apart
    (``distinguishable``) raises ValueError.

    ``root_states``: head h of a group *is* root state h of its patch tree (root[g, h] =
    one-hot(h); needs heads_per_group == num_latents). Then Z_i is the patch tree's root hidden
    variable: each state owns its root leaf column and the rows of the root's edges, the deeper
    sub-circuits are shared by the group's states and fitted on all its members. EM keeps the
    one-hot roots (an entry with zero weight gets zero flow; only the pseudocount touches it).

    ``top``: "tree" (the Chow-Liu tree over the Z's, node i = Z_i) or "hclt" (the same tree
    over hidden H_i with ``top_num_latents`` states, Z_i the leaf of H_i; see the module
    docstring). Both start with random (seeded) parameters.

    ``patch_tree``: "pooled" (one tree for every group, ``patch_parents``) or "group" (every
    group its own Chow-Liu tree from its member patches, ``group_trees``; needs ``data`` and
    ``z``; LVD-PG's per-cluster trees), or give ``patch_trees`` (one parents array per group)
    directly. Per-group trees run batched inside one super-tree (lvd.pc.varmap).
    """
    if top not in ("tree", "hclt"):
        raise ValueError(f"top must be 'tree' or 'hclt', got {top!r}")
    H_img, W_img, Ch = image_shape
    idx = patch_index(H_img, W_img, Ch, patch_size)
    m, P = idx.shape
    if mode not in ("position", "shared"):
        raise ValueError(f"mode must be 'position' or 'shared', got {mode!r}")
    if heads_per_group is None:
        if mode == "position":
            heads_per_group = 1
        else:
            G = int(num_groups or 1)
            if num_states % G:
                raise ValueError(f"num_groups={G} must divide num_states={num_states}")
            heads_per_group = num_states // G
    H = int(heads_per_group)
    if H < 1 or num_states % H:
        raise ValueError(f"heads_per_group={H} must be >= 1 and divide num_states={num_states}")
    why = distinguishable(H, num_latents)
    if why is not None and num_latents == 1:
        raise ValueError(why)
    G = m * (num_states // H) if mode == "position" else num_states // H
    if patch_parents is None and patch_trees is None:
        if data is None:
            raise ValueError("lvd_circuit: give patch_parents or training data to build the patch tree")
        pooled = np.asarray(data)[:, idx].reshape(-1, P)
        patch_parents = chow_liu_tree(pooled, num_cats, seed=seed)
    if top_parents is None:
        if z is None:
            raise ValueError("lvd_circuit: give top_parents or latents z to build the top tree")
        top_parents = chow_liu_tree(np.asarray(z), num_states, num_bins=None, seed=seed)
    if root_states and H != num_latents:
        raise ValueError(f"root_states needs heads_per_group = num_latents, got {H} heads and "
                         f"{num_latents} root states")
    if patch_tree not in ("pooled", "group"):
        raise ValueError(f"patch_tree must be 'pooled' or 'group', got {patch_tree!r}")
    if patch_tree == "group" and patch_trees is None:
        if data is None or z is None:
            raise ValueError("lvd_circuit: patch_tree 'group' needs training data and latents z")
        patch_trees, _ = group_trees(data, z, image_shape, patch_size, mode, num_states, H, num_cats,
                                     patch_parents, seed=seed)
    var_map = None
    if patch_trees is not None:
        if len(patch_trees) != G:
            raise ValueError(f"patch_trees has {len(patch_trees)} trees for {G} patch groups")
        patch_parents, var_map = super_tree(patch_trees)
    patch = TreeCircuit(tree_structure(patch_parents, edge_order="bfs"), num_latents, num_cats, num_groups=G,
                        num_heads=H, kind="patch", seed=seed, device=device,
                        meta={"root_states": bool(root_states),
                              "patch_tree": "pooled" if var_map is None else "group"},
                        var_map=var_map)
    if root_states:
        patch.params["root"] = torch.eye(H, device=device).expand(G, H, H).contiguous()
    if top == "tree":
        top_tree = TreeCircuit(tree_structure(top_parents, edge_order="bfs"), num_states, 0, kind="top", seed=seed + 1,
                               device=device)
    else:
        if int(top_num_latents) < 1:
            raise ValueError(f"top_num_latents must be >= 1, got {top_num_latents!r}")
        top_tree = TreeCircuit(tree_structure(top_parents, edge_order="bfs"), int(top_num_latents), num_states, kind="top",
                               seed=seed + 1, device=device)
    return LVDCircuit(patch, top_tree, image_shape, patch_size, mode)
