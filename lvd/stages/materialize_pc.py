"""materialize_pc: build the circuit around the teacher's latents and count-initialize it.

Reads data.h5 (train split) and latents.h5 (``z`` [N, num_positions], attrs mode, num_states);
writes pc_init.h5 (format lvd.pc).

Images: an LVD circuit p(x) = sum_z p_top(z) prod_i p_i(x_i | z_i) (lvd.pc.lvd_circuit): the
patch tree is the Chow-Liu tree of the training patches with ``num_latents`` hidden states, the
top tree the Chow-Liu tree of z with num_states states; the latents' ``mode`` decides
"position" (one parameter group of num_states heads per patch position) or "shared"
(``num_groups`` groups of num_states / num_groups heads shared by all positions). The top tree
is count-initialized from z (method.md section 2 step 6); the patch heads stay random until
latent_em trains them.

Text: a homogeneous HMM with num_states hidden states over windows of seq_len tokens,
count-initialized from z and the windows: initial #(z_1 = a), transitions #(z_t = a, z_t+1 = b),
emissions #(z_t = a, x_t = w), plus ``pseudocount`` (method.md section 4).

    python -m lvd.stages.materialize_pc --config '{"num_latents": 16}' \
        --data data.h5 --latents k16/latents.h5 --out k16/pc_init.h5
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from lvd import io, pc
from lvd.stages import common, inputs

log = logging.getLogger("lvd.materialize_pc")
WRITER = "lvd.stages.materialize_pc"
COUNT_CHUNK = 65536  # rows of z counted at a time (text: millions of windows)


@dataclass(frozen=True)
class Config:
    num_latents: int = 16      # images: hidden states of every patch-tree node (text: unused, H = num_states)
    num_groups: int = 1        # images, shared mode: patch sub-circuits; must divide num_states
    heads_per_group: int = 0   # images: states sharing one patch circuit; 0 = the mode's default
                               # (position: 1, every state its own circuit; shared: K / num_groups)
    root_states: bool = False  # images: head h of a patch circuit is its root state h; Z_i = the
                               # patch tree's root variable (num_latents = heads_per_group = K)
    top: str = "tree"          # images: "tree" = Chow-Liu tree over the Z's (count-initialized from z);
                               # "hclt" = HCLT over the Z's (hidden H_i above each Z_i, LVD-PG)
    top_num_latents: int = 0   # images, top "hclt": states of each hidden H_i; 0 = num_states
    top_init_epochs: int = 3   # images, top "hclt": mini-batch EM epochs on z (then one full-batch)
    patch_tree: str = "auto"   # images: "pooled" = one Chow-Liu tree of the patches pooled over positions
                               # for every group; "group" = every group its own Chow-Liu tree from its
                               # member patches (lvd.pc.varmap); "auto" = group for latents mode clusters
                               # (LVD-PG's per-cluster trees), pooled otherwise
    pseudocount: float = 0.1   # added to the counts (spread evenly over each distribution)
    seed: int = 0              # random patch parameters, Chow-Liu subsampling

    def __post_init__(self):
        for name in ("num_latents", "num_groups", "heads_per_group", "top_num_latents", "top_init_epochs"):
            v = getattr(self, name)
            lo = 0 if name in ("heads_per_group", "top_init_epochs", "top_num_latents") else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"pc.{name} is {v!r}, expected an integer >= {lo}")
        if self.top not in ("tree", "hclt"):
            raise ValueError(f"pc.top is {self.top!r}, expected 'tree' or 'hclt'")
        if self.patch_tree not in ("auto", "pooled", "group"):
            raise ValueError(f"pc.patch_tree is {self.patch_tree!r}, expected 'auto', 'pooled' or 'group'")
        if not isinstance(self.pseudocount, (int, float)) or self.pseudocount < 0:
            raise ValueError(f"pc.pseudocount is {self.pseudocount!r}, expected a number >= 0")


def chunked_count_init(tc, z, x=None, pseudocount: float = 0.1, chunk: int = COUNT_CHUNK) -> None:
    """pc.count_init in chunks of rows (the same result: counts add up)."""
    total = None
    for i in range(0, len(z), chunk):
        c = pc.counts(tc, z[i:i + chunk], None if x is None else x[i:i + chunk])
        total = c if total is None else {k: total[k] + c[k] for k in total}
    pc.update(tc, {k: v.to(tc.device) for k, v in total.items()}, 1.0, pseudocount)


def pg_layout(latents: str, num_latents: int) -> tuple[int, int, int]:
    """(num_clusters, heads_per_cluster, allocated hidden states) of clusters-mode latents: the
    patch circuit allocates num_latents + (heads_per_cluster - initial_heads) states per node,
    one free state per growing round (lvd.pc.grow)."""
    a = _latent_attrs(latents)
    for key in ("num_clusters", "heads_per_cluster", "initial_heads"):
        if key not in a:
            raise io.ArtifactError(f"{latents}: mode 'clusters' but no attribute {key!r}")
    G, H, H0 = int(a["num_clusters"]), int(a["heads_per_cluster"]), int(a["initial_heads"])
    return G, H, num_latents + (H - H0)


def _latent_attrs(path) -> dict:
    with io.open_artifact(path, "lvd.latents") as f:
        return dict(f.attrs)


HCLT_TOP_LEAF_SMOOTHING = 0.01  # p(Z_i = k | H_i = k) = 1 - 0.01 + 0.01 / K at the start


def init_hclt_top(top, z, cfg: Config) -> None:
    """Fit the HCLT top on the teacher's z as observed data (its leaf variables).

    With as many hidden states as Z states (top_num_latents 0 or K) the top starts as the tree
    top: root and edges counted from z (H_i = z_i), leaves p(Z_i | H_i) the identity smoothed by
    HCLT_TOP_LEAF_SMOOTHING, so it starts next to the tree top (digits, K = 16, measured
    2026-12-02 by this stage's log: the counted tree's train ll on z -29.02 nats, the HCLT top
    from it -29.16 with smoothing 0.02, -29.10 after the EM epochs below; from a random start the
    same epochs reached only -40.39, and that LVD run ended at 2.235 test bpd against the tree
    top's 2.062). With fewer hidden states it starts random. Then ``top_init_epochs`` mini-batch EM epochs on z
    (batch 512, step 0.1 -> 0.01) and one full-batch epoch; latent_top_em then trains it on the
    patch likelihoods (soft evidence on its leaves)."""
    zt = torch.as_tensor(z)
    K = top.num_cats
    if top.num_latents == K:
        tree = pc.TreeCircuit(top.structure, K, 0, kind="top", device=top.device)
        chunked_count_init(tree, z, pseudocount=cfg.pseudocount)
        eps = HCLT_TOP_LEAF_SMOOTHING
        eye = (1 - eps) * torch.eye(K, device=top.device) + eps / K          # [C = K, M = K]
        top.params.update(edges=tree.params["edges"].clone(), root=tree.params["root"].clone(),
                          leaves=eye.expand_as(top.params["leaves"]).contiguous())
        with torch.no_grad():
            log.info("HCLT top from the counted tree: train ll on z %.4f (the tree's %.4f)",
                     float(top.log_likelihood(x=zt).mean()), float(tree.log_likelihood(z=zt).mean()))
    if cfg.top_init_epochs:
        hist = pc.em(top, zt, epochs=cfg.top_init_epochs, batch_size=512, step_size=0.1,
                     step_size_end=0.01, pseudocount=cfg.pseudocount, seed=cfg.seed)
        log.info("HCLT top on z: %d mini-batch epochs, train ll %s", cfg.top_init_epochs,
                 ", ".join(f"{h:.4f}" for h in hist))
    hist = pc.em(top, zt, epochs=1, full_batch=True, step_size=1.0, pseudocount=cfg.pseudocount)
    log.info("HCLT top on z: full-batch epoch, train ll %.4f", hist[0])


def run(cfg: Config, data: str, latents: str, out: str, device="cpu") -> dict:
    """Build and count-initialize the circuit; returns a summary (also stored as attributes)."""
    with common.Timer() as timer:
        info = inputs.data_info(data)
        x = inputs.load_split(data, "train")
        z, mode, K = inputs.load_latents(latents, len(x), inputs.num_positions(info))
        log.info("%s: %d train rows of %d variables; %s: %s mode, %d states", data, len(x),
                 info.num_vars, latents, mode, K)
        if info.kind == "image":
            if mode == "shared" and K % cfg.num_groups:   # (mode clusters: the groups are the clusters)
                raise ValueError(f"pc.num_groups={cfg.num_groups} must divide num_states={K} "
                                 f"(from {latents}) in shared mode")
            H, nl = cfg.heads_per_group or None, cfg.num_latents
            groups = cfg.num_groups
            patch_tree = cfg.patch_tree if cfg.patch_tree != "auto" else ("group" if mode == "clusters" else "pooled")
            if mode == "clusters":   # LVD-PG: grow_patch_pcs grows every cluster's circuit
                mode, groups, H, nl = "shared", *pg_layout(latents, cfg.num_latents)
                log.info("latents mode clusters: %d clusters of %d heads; %d hidden states per node "
                         "allocated (%d initial + one per growing round)", groups, H, nl, cfg.num_latents)
            elif cfg.root_states:   # Z_i is the root variable: every patch-tree node gets K states
                H = nl = K
                log.info("pc.root_states: num_latents = heads_per_group = num_states = %d", K)
            if H is not None and K % H:
                raise ValueError(f"pc.heads_per_group={H} must divide num_states={K} (from {latents})")
            why = pc.lvdcircuit.distinguishable(H or (1 if mode == "position" else K // groups), nl)
            if why and not cfg.root_states:
                log.warning("pc: %s", why)
            c = pc.lvd_circuit(info.image_shape, info.patch_size, num_states=K, num_latents=nl,
                               num_cats=info.num_cats, mode=mode, num_groups=groups,
                               heads_per_group=H, root_states=cfg.root_states, data=x, z=z,
                               top=cfg.top, top_num_latents=cfg.top_num_latents or K, seed=cfg.seed,
                               device=device, patch_tree=patch_tree)
            if patch_tree == "group":
                log.info("patch trees: every group's own Chow-Liu tree (groups with fewer than %d member "
                         "patches: the pooled tree), run inside one super-tree of %d nodes (%d variables)",
                         pc.patchtrees.MIN_TREE_MEMBERS, c.patch.num_nodes, c.patch.num_vars)
            if cfg.top == "tree":
                chunked_count_init(c.top, z, pseudocount=cfg.pseudocount)
            else:
                init_hclt_top(c.top, z, cfg)
            log.info("LVD circuit: patch tree %d vars x %d groups x %d heads, K_h=%d; top %s over %d "
                     "positions, K=%d%s", c.patch.num_vars, c.patch.num_groups, c.patch.num_heads,
                     nl, cfg.top, c.num_positions, K,
                     f", {c.top.num_latents} hidden states" if cfg.top == "hclt" else "")
        else:
            if mode != "shared":
                raise ValueError(f"{latents}: attribute 'mode' is {mode!r}; text needs 'shared' latents "
                                 "(the HMM is homogeneous, so a state must mean the same at every "
                                 "position): set latents.mode: shared")
            c = pc.hmm(info.seq_len, num_latents=K, vocab_size=info.num_cats, homogeneous=True,
                       seed=cfg.seed, device=device)
            chunked_count_init(c, z, x, pseudocount=cfg.pseudocount)
            log.info("HMM: %d hidden states, vocabulary %d, seq_len %d", K, info.num_cats, info.seq_len)
    summary = {"kind": info.kind, "mode": mode, "num_states": K, "num_params": c.num_params,
               "seconds": timer.seconds}
    if info.kind == "image":
        summary["top"] = cfg.top
        summary["patch_tree"] = patch_tree
        summary["patch_tree_nodes"] = c.patch.num_nodes
        with torch.no_grad():
            zt = torch.as_tensor(z)
            top_ll = c.top.log_likelihood(x=zt) if cfg.top == "hclt" else c.top.log_likelihood(z=zt)
            summary["top_mean_ll_z"] = float(top_ll.mean())
    pc.save(c, out, writer=WRITER, config=asdict(cfg), history=[], **summary)
    log.info("wrote %s (%d params) in %.1f s", out, c.num_params, timer.seconds)
    return summary


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="data.h5 (format lvd.data)")
    p.add_argument("--latents", required=True, help="latents.h5 (format lvd.latents)")
    p.add_argument("--out", required=True, help="pc_init.h5 to write (format lvd.pc)")
    args = p.parse_args(argv)
    cfg = common.load_config(Config, args.config)
    device = common.setup(args, seed=cfg.seed)
    run(cfg, args.data, args.latents, args.out, device=device)


if __name__ == "__main__":
    main()
