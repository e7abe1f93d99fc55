"""materialize_pc: build the circuit around the teacher's latents and count-initialize it.

Reads data.h5 (train split) and latents.h5 (``z`` [N, num_positions], attrs mode, num_states);
writes pc_init.h5 (format lvd.pc; root attributes ``latents_mode``, the latents' mode as
latents.mode names it, and ``mode``, the circuit's layout as lvd.pc.lvdcircuit names it).

Images: an LVD circuit p(x) = sum_z p_top(z) prod_i p_i(x_i | z_i) (lvd.pc.lvd_circuit): the
patch tree is the Chow-Liu tree of the training patches with ``num_latents`` hidden states, the
top tree the Chow-Liu tree of z with num_states states; the latents' mode decides the
circuit's layout: latents "position" -> layout "position" (one parameter group of num_states
heads per patch position), "shared" -> "shared" (``num_groups`` groups of num_states /
num_groups heads shared by all positions), "clusters" (LVD-PG) -> "shared" with one group of
heads_per_cluster heads per cluster (docs/glossary.md, "latents mode, circuit layout"). The top
tree is count-initialized from z (method.md section 2 step 6); the patch heads stay random
until latent_em trains them.

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
from lvd.stages.topinit import chunked_count_init, init_hclt_top, top_init_schedule

log = logging.getLogger("lvd.materialize_pc")
WRITER = "lvd.stages.materialize_pc"


@dataclass(frozen=True)
class Config:
    num_latents: int = 16      # images: hidden states of every patch-tree node (text: unused, H = num_states)
    num_groups: int = 1        # images, latents mode shared: patch sub-circuits; must divide num_states
    heads_per_group: int = 0   # images: states sharing one patch circuit; 0 = the latents mode's default
                               # (position: 1, every state its own circuit; shared: K / num_groups;
                               # clusters: heads_per_cluster)
    root_states: bool = False  # images: head h of a patch circuit is its root state h; Z_i = the
                               # patch tree's root variable (num_latents = heads_per_group = K)
    top: str = "tree"          # images: "tree" = Chow-Liu tree over the Z's (count-initialized from z);
                               # "hclt" = HCLT over the Z's (hidden H_i above each Z_i, LVD-PG)
    top_num_latents: int = 0   # images, top "hclt": states of each hidden H_i; 0 = num_states
    top_init_epochs: int = 3   # images, top "hclt": mini-batch EM epochs on z (then one full-batch)
    top_init_batch_size: int = 512         # ... their mini-batch (rows of z)
    top_init_step_size: float = 0.1        # ... their step size, annealed linearly to
    top_init_step_size_end: float = 0.01   # top_init_step_size_end
    patch_tree: str = "auto"   # images: "pooled" = one Chow-Liu tree of the patches pooled over positions
                               # for every group; "group" = every group its own Chow-Liu tree from its
                               # member patches (lvd.pc.varmap); "auto" = group for latents mode clusters
                               # (LVD-PG's per-cluster trees), pooled otherwise
    pseudocount: float = 0.1   # added to the counts (spread evenly over each distribution)
    seed: int = 0              # random patch parameters, Chow-Liu subsampling

    def __post_init__(self):
        for name in ("num_latents", "num_groups", "heads_per_group", "top_num_latents", "top_init_epochs",
                     "top_init_batch_size"):
            v = getattr(self, name)
            lo = 0 if name in ("heads_per_group", "top_init_epochs", "top_num_latents") else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"pc.{name} is {v!r}, expected an integer >= {lo}")
        for name in ("top_init_step_size", "top_init_step_size_end"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
                raise ValueError(f"pc.{name} is {v!r}, expected a number in (0, 1]")
        if self.top not in ("tree", "hclt"):
            raise ValueError(f"pc.top is {self.top!r}, expected 'tree' or 'hclt'")
        if self.patch_tree not in ("auto", "pooled", "group"):
            raise ValueError(f"pc.patch_tree is {self.patch_tree!r}, expected 'auto', 'pooled' or 'group'")
        if not isinstance(self.pseudocount, (int, float)) or self.pseudocount < 0:
            raise ValueError(f"pc.pseudocount is {self.pseudocount!r}, expected a number >= 0")


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


def run(cfg: Config, data: str, latents: str, out: str, device="cpu") -> dict:
    """Build and count-initialize the circuit; returns a summary (also stored as attributes)."""
    with common.Timer() as timer:
        info = inputs.data_info(data)
        x = inputs.load_split(data, "train")
        z, mode, K = inputs.load_latents(latents, len(x), inputs.num_positions(info))
        latents_mode = mode   # mode: from here on the circuit's layout (position | shared)
        log.info("%s: %d train rows of %d variables; %s: %s mode, %d states", data, len(x),
                 info.num_vars, latents, mode, K)
        if info.kind == "image":
            if mode == "shared" and K % cfg.num_groups:   # (mode clusters: the groups are the clusters)
                raise ValueError(f"pc.num_groups={cfg.num_groups} must divide num_states={K} "
                                 f"(from {latents}) with latents mode shared")
            H, nl = cfg.heads_per_group or None, cfg.num_latents
            groups = cfg.num_groups
            patch_tree = cfg.patch_tree if cfg.patch_tree != "auto" else ("group" if mode == "clusters" else "pooled")
            if mode == "clusters":   # LVD-PG: grow_patch_pcs grows every cluster's circuit
                mode, groups, H, nl = "shared", *pg_layout(latents, cfg.num_latents)
                log.info("latents mode clusters: circuit layout shared, one patch group per cluster: %d "
                         "clusters of %d heads; %d hidden states per node allocated (%d initial + one per "
                         "growing round)", groups, H, nl, cfg.num_latents)
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
                init_hclt_top(c.top, z, cfg.pseudocount, top_init_schedule(asdict(cfg)), cfg.seed)
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
    summary = {"kind": info.kind, "latents_mode": latents_mode, "num_states": K, "num_params": c.num_params,
               "seconds": timer.seconds}
    if info.kind == "image":
        summary["mode"] = mode   # the circuit's layout (lvd.pc.save writes it too)
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
