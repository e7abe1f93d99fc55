"""TreeCircuit: parameters + structure of one latent tree, and its queries.

A circuit object holds probability tables in ``params`` (name -> tensor) and knows which
dimension each table is normalized over (``norm_dims``). Everything EM needs is
``objective(logp, batch)``: per-example log-likelihoods as a differentiable function of the
log-parameter tables, so that flows = d(sum objective) / d(log params).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lvd.pc import queries, varmap
from lvd.pc.tree import NodeMajor, TreeStructure
from lvd.pc.treell import Probs, log_handles, tree_lls


def _as_long(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, device=device).long()


def random_table(shape, dim, gen, device="cpu") -> torch.Tensor:
    """Random positive table normalized over ``dim`` (seeded by ``gen``)."""
    t = torch.rand(shape, generator=gen, dtype=torch.float32) + 0.1
    return (t / t.sum(dim, keepdim=True)).to(device)


class TreeCircuit:
    """One latent tree (see lvd.pc.tree): HCLT, HMM, or a part of an LVD circuit.

    params:
        edges  [E_t, G, K, K]  p(child state | parent state)
        root   [G, H, K]       root state distribution per head
        leaves [L_t, G, C, K]  p(value | state); absent when num_cats == 0

    masks (optional; {} = every entry free, the dense path): {table name: bool tensor shaped
    like that table}, the entries allowed to be non-zero (LVD-PG's pruned edges and inactive
    states, lvd.pc.grow). The tables are zero outside their masks; ``lvd.pc.em.update`` keeps
    them so (zeroed and renormalized after every step, so neither flows nor the pseudocount
    revive a pruned entry), ``num_params`` counts only allowed entries, and the masks travel
    with the circuit through ``to``, ``select_groups`` and lvd.pc.serialize.

    var_map (optional; None = node v observes variable v): int64 [G, V], group g's slot v
    observes input variable var_map[g, v], -1 = padding (lvd.pc.varmap: every group its own
    tree inside one shared super-tree, LVD-PG's per-cluster Chow-Liu trees). Inputs x are then
    [B, (G,) num_vars] over the P input variables (``num_vars`` = P, ``num_nodes`` = V); the
    padding slots' tables are not counted in ``num_params``; ``sample`` returns the variables.
    (``num_inputs``: P for a var_map without rows, a selection of no groups.) The var_map's
    index tensors are made once per device (``slots``).
    """

    norm_dims = {"edges": -1, "root": -1, "leaves": 2}

    def __init__(self, structure: TreeStructure, num_latents: int, num_cats: int, *,
                 num_groups: int = 1, num_heads: int = 1, kind: str = "tree",
                 params: dict | None = None, seed: int = 0, device="cpu", meta: dict | None = None,
                 masks: dict | None = None, var_map=None, num_inputs: int = 0):
        self.structure = structure
        self.num_latents, self.num_cats = int(num_latents), int(num_cats)
        self.num_groups, self.num_heads = int(num_groups), int(num_heads)
        self.kind = kind
        self.meta = dict(meta or {})
        K, G = self.num_latents, self.num_groups
        if params is None:
            gen = torch.Generator().manual_seed(seed)
            E_t = int(structure.edge_index.max()) + 1 if structure.num_nodes > 1 else 1
            params = {"edges": random_table((E_t, G, K, K), -1, gen),
                      "root": random_table((G, self.num_heads, K), -1, gen)}
            if self.num_cats > 0:
                L_t = int(structure.leaf_index.max()) + 1
                params["leaves"] = random_table((L_t, G, self.num_cats, K), 2, gen)
        self.params = {k: v.to(device).float().contiguous() for k, v in params.items()}
        self.masks = {}
        for name, m in (masks or {}).items():
            if name not in self.params or tuple(m.shape) != tuple(self.params[name].shape):
                raise ValueError(f"mask {name!r} of shape {tuple(m.shape)} does not match a table "
                                 f"(tables: { {k: tuple(v.shape) for k, v in self.params.items()} })")
            self.masks[name] = torch.as_tensor(m).to(device=self.device, dtype=torch.bool).contiguous()
        self.var_map, self._num_inputs, self._slots = None, None, None
        if var_map is not None:
            vm = var_map.cpu().numpy() if torch.is_tensor(var_map) else np.asarray(var_map)
            why = varmap.problems(vm, structure.parents, structure.edge_index, structure.leaf_index, G)
            if why:
                raise ValueError(f"var_map {why}")
            self.var_map = torch.as_tensor(vm, dtype=torch.long, device=self.device)
            self._num_inputs = varmap.num_inputs(vm) if len(vm) else int(num_inputs)

    # ------------------------------------------------------------------ basics
    @property
    def device(self) -> torch.device:
        return self.params["edges"].device

    @property
    def num_vars(self) -> int:
        """Observed input variables per example (= num_nodes unless there is a var_map)."""
        return self.structure.num_nodes if self._num_inputs is None else self._num_inputs

    @property
    def slots(self) -> varmap.Slots | None:
        """The var_map's index tensors on the circuit's device (made once; None without one)."""
        if self.var_map is not None and (self._slots is None or self._slots.flat.device != self.var_map.device):
            self._slots = varmap.Slots(self.var_map, self._num_inputs)
        return None if self.var_map is None else self._slots

    @property
    def num_nodes(self) -> int:
        """Nodes (latent variables) of the tree structure."""
        return self.structure.num_nodes

    @property
    def num_edges(self) -> int:
        """K x K weight blocks an example passes through (non-root nodes that are not copies)."""
        return self.structure.num_edges

    @property
    def num_params(self) -> int:
        """Free parameters (each normalized distribution of size n has n - 1; with a mask, a
        distribution with a allowed entries has a - 1)."""
        total = 0
        real = self._real_rows()
        for name, t in self.params.items():
            dim = self.norm_dims[name]
            n = t.shape[dim]
            if name in self.masks:
                free = (self.masks[name].sum(dim) - 1).clamp_min(0)
            else:
                free = torch.full(t.shape[:dim % t.dim()] + t.shape[dim % t.dim() + 1:], n - 1, device=t.device)
            if name in real:       # [rows, G, ...]: padding slots' tables are not parameters
                free = free * real[name].to(free.device).view(*real[name].shape, *[1] * (free.dim() - 2))
            total += int(free.sum())
        return total

    def _real_rows(self) -> dict[str, torch.Tensor]:
        """{table: bool [rows, G]} of the rows that belong to real nodes (only with a var_map)."""
        if self.var_map is None:
            return {}
        st, vm = self.structure, self.var_map.cpu().numpy()
        edge = np.where(st.parents < 0, -1, st.edge_index)
        out = {"edges": torch.from_numpy(varmap.real_rows(vm, edge, self.params["edges"].shape[0]))}
        if "leaves" in self.params:
            out["leaves"] = torch.from_numpy(varmap.real_rows(vm, st.leaf_index, self.params["leaves"].shape[0]))
        return out

    def to(self, device) -> "TreeCircuit":
        self.params = {k: v.to(device) for k, v in self.params.items()}
        self.masks = {k: m.to(device) for k, m in self.masks.items()}
        if self.var_map is not None:
            self.var_map = self.var_map.to(device)
        return self

    def log_params(self) -> dict[str, torch.Tensor]:
        return {k: v.clamp_min(1e-38).log() for k, v in self.params.items()}

    def log_handles(self, requires_grad=False) -> dict[str, torch.Tensor]:
        """``log_params`` without computing a log: treell.log_handles of the tables (what
        ``objective`` reads through treell.probs)."""
        return log_handles(self.params, requires_grad)

    # ------------------------------------------------------------ core forward
    def group_lls(self, logp, x=None, missing=None, evidence=None, leaf_evidence=None) -> torch.Tensor:
        """[B, G, H] log-likelihoods; x [B, G, V] or [B, V] (broadcast to every group), or a
        tree.NodeMajor the caller built and checked.

        leaf_evidence [B, V, C] or [B, G, V, C]: soft evidence on the observed variables instead
        of x, log-potentials phi over each variable's values; node v in state k then scores
        log sum_c theta_v[c, k] exp(phi[b, v, c]) (an observed value c is phi = 0 at c, -inf
        elsewhere). Flows to the leaves (through autograd) are the expected counts
        p(state k, value c | evidence).
        """
        if leaf_evidence is not None:
            if x is not None:
                raise ValueError("give x or leaf_evidence, not both")
            if self.var_map is not None:
                raise ValueError("leaf_evidence is not supported on a circuit with a var_map (per-group trees)")
            node_ev = self.leaf_evidence_scores(logp["leaves"], leaf_evidence)
            evidence = node_ev if evidence is None else node_ev + (
                evidence[:, None] if evidence.dim() == 3 else evidence)
            return tree_lls(self.structure, logp["edges"], logp["root"], None, None, None, evidence)
        if x is not None and not isinstance(x, NodeMajor):
            x = _as_long(x, self.device)
            if missing is not None:
                missing = torch.as_tensor(missing, device=self.device).bool()
            queries.check_values(x, missing, self.num_vars, self.num_cats)
            if x.dim() == 2:
                x = x[:, None, :].expand(-1, self.num_groups, -1)
            if missing is not None and missing.dim() == 2:
                missing = missing[:, None, :].expand(-1, self.num_groups, -1)
            if self.var_map is not None:
                x, missing = varmap.to_nodes(self.slots, x, missing)
        if evidence is not None and evidence.device != self.device:
            evidence = evidence.to(self.device)            # differentiable: gradients reach the caller's tensor
        if evidence is not None and evidence.dim() == 3:
            evidence = evidence[:, None].expand(-1, self.num_groups, -1, -1)
        return tree_lls(self.structure, logp["edges"], logp["root"], logp.get("leaves"),
                        x, missing, evidence)

    def leaf_evidence_scores(self, logleaves, leaf_evidence) -> torch.Tensor:
        """Node scores [B, G, V, K] of soft evidence [B, (G,) V, C] on the observed variables:
        log sum_c theta_v[c, k] exp(phi[b, v, c]), one batched matmul per node (differentiable)."""
        phi = torch.as_tensor(leaf_evidence, device=self.device).float()
        if phi.dim() == 3:
            phi = phi[:, None].expand(-1, self.num_groups, -1, -1)
        B, G, V, C = phi.shape
        if (G, V, C) != (self.num_groups, self.num_vars, self.num_cats):
            raise ValueError(f"leaf_evidence has shape {tuple(phi.shape)}, expected [B, ({self.num_groups},) "
                             f"{self.num_vars}, {self.num_cats}] (batch, groups, num_vars, num_cats)")
        top = phi.amax(-1, keepdim=True).clamp_min(-1e30)     # [B, G, V, 1]; no host sync
        rows = self.structure.on(self.device)["leaf_index"]
        theta = Probs.apply(logleaves).index_select(0, rows)  # [V, G, C, K]
        e = (phi - top).exp().permute(2, 1, 0, 3)             # [V, G, B, C]
        s = torch.matmul(e, theta)                            # [V, G, B, K]
        return s.clamp_min(1e-38).log().permute(2, 1, 0, 3) + top

    def objective(self, logp, batch: dict) -> torch.Tensor:
        """Per-example log-likelihood [B] for EM; batch keys: x, missing, evidence, z,
        leaf_evidence (soft evidence on the observed variables, see ``group_lls``)."""
        ev = batch.get("evidence")
        z = batch.get("z")
        if z is not None:
            ev = latent_evidence(z, self.num_latents, ev, self.device)
        lls = self.group_lls(logp, batch.get("x"), batch.get("missing"), ev, batch.get("leaf_evidence"))
        if self.num_heads == 1:
            return lls.sum(dim=(1, 2))
        # several heads and no head observed: the uniform mixture of the heads
        return (lls.logsumexp(-1) - math.log(self.num_heads)).sum(1)

    # ----------------------------------------------------------------- queries
    @torch.no_grad()
    def log_likelihood(self, x=None, missing=None, z=None, evidence=None, leaf_evidence=None) -> torch.Tensor:
        """log p(x_observed [, z]) per example: x int64 [B, V], missing bool [B, V] -> [B].

        z: int64 [B, V] observed latent states (-1 = not observed) — hard evidence;
        evidence: float [B, V, K] log-potentials per state — soft evidence;
        leaf_evidence: float [B, V, C] log-potentials per value of the observed variables
        (instead of x).
        """
        return self.objective(self.log_handles(), {"x": x, "missing": missing, "z": z,
                                                   "evidence": evidence, "leaf_evidence": leaf_evidence})

    def latent_posterior(self, x=None, missing=None, evidence=None) -> torch.Tensor:
        """p(state of node v = k | evidence): [B, V, K] (G = 1 circuits)."""
        B = x.shape[0] if x is not None else evidence.shape[0]
        ev = torch.zeros(B, self.num_nodes, self.num_latents, device=self.device) \
            if evidence is None else torch.as_tensor(evidence, device=self.device).clone()
        ev.requires_grad_(True)
        lls = self.group_lls(self.log_handles(), x, missing, ev)
        (post,) = torch.autograd.grad(lls.sum(), ev)
        return post

    @torch.no_grad()
    def sample(self, n: int, x=None, missing=None, seed=None, evidence=None) -> torch.Tensor:
        """Samples int64 [n, num_vars]; with x and missing: the missing values given the observed ones."""
        xs, _ = queries.tree_sample(self, n, x, missing, evidence, heads=None, seed=seed)
        return xs[:, 0]

    @torch.no_grad()
    def map_latents(self, x=None, missing=None, evidence=None) -> torch.Tensor:
        """Most likely joint latent states given the observed values: int64 [B, V]."""
        return queries.tree_map(self, x, missing, evidence)[:, 0]

    def without_leaves(self) -> "TreeCircuit":
        """The same tree with no observed variables (edges and root shared, not copied): the
        hidden part, for queries that supply every node's evidence themselves."""
        return TreeCircuit(self.structure, self.num_latents, 0, num_groups=self.num_groups,
                           num_heads=self.num_heads, kind=self.kind,
                           params={"edges": self.params["edges"], "root": self.params["root"]}, meta=self.meta,
                           masks={k: m for k, m in self.masks.items() if k in ("edges", "root")},
                           var_map=self.var_map)

    def select_groups(self, groups) -> "TreeCircuit":
        """A circuit over a subset of parameter groups (views copied)."""
        g = torch.as_tensor(groups, device=self.device).long()
        params = {k: v.index_select(0 if k == "root" else 1, g).clone() for k, v in self.params.items()}
        masks = {k: m.index_select(0 if k == "root" else 1, g).clone() for k, m in self.masks.items()}
        return TreeCircuit(self.structure, self.num_latents, self.num_cats, num_groups=len(g),
                           num_heads=self.num_heads, kind=self.kind, params=params, meta=self.meta,
                           masks=masks, var_map=None if self.var_map is None else self.var_map.index_select(0, g),
                           num_inputs=self.num_vars)


_STATES: dict = {}


def _states(K: int, device) -> torch.Tensor:
    """arange(K) on ``device``, made once per (K, device) (latent_evidence runs every EM step
    of a circuit trained with observed latents)."""
    key = (int(K), str(device))
    if key not in _STATES:
        _STATES[key] = torch.arange(K, device=device)
    return _STATES[key]


def latent_evidence(z, K: int, evidence=None, device="cpu") -> torch.Tensor:
    """Hard evidence as log-potentials: 0 at the observed state, -inf elsewhere; z = -1 is unobserved.
    (Elementwise, without reading anything back from the device.)"""
    z = _as_long(z, device)
    states = _states(K, z.device)
    off = (z[..., None] >= 0) & (states != z[..., None])               # [..., K]
    ev = torch.zeros(off.shape, device=z.device).masked_fill_(off, float("-inf"))
    if evidence is not None:
        ev = ev + evidence.to(ev.device)
    return ev
