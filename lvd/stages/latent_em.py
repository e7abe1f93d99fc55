"""latent_em: train the patch heads with the latents observed, one shard of the groups per job.

Reads data.h5 (train), latents.h5 (z) and pc_init.h5 (an LVD circuit); writes one shard file
(format lvd.pc_shard). With z observed, log p(x, z) = log p_top(z) + sum_i log p_i(x_i | z_i),
so every parameter group of the patch tree is an independent EM problem on its own members
only (method.md section 2 step 6). With H heads per group (lvd.pc.lvdcircuit):

    mode "position": group i * (K / H) + c serves states c * H .. c * H + H - 1 of position i;
                     members: patch i of every train image with z[:, i] // H == c, observed
                     head z[:, i] % H (H = 1: one group per (position, state), its members
                     exactly that state's patches)
    mode "shared":   group g serves states g * H .. g * H + H - 1 at every position; members:
                     every patch (any position) whose state s has s // H == g, head s % H

Each member's flow runs through its own head; the sub-circuit below the root is shared by the
group's heads only. The shard's groups train together in one batched EM (lvd.pc.groups:
every group keeps the schedule it would have alone, lvd.training.schedule_from of this
section). Shard i of S trains groups i, i+S, i+2S, ...; group g runs the schedule with a seed
s_g derived from (seed, g) alone, its epoch e shuffling with a seed from (s_g, e) (the rule of
every EM loop), so the gathered result does not depend on the number of shards. latent_top_em
gathers the shards.

Shard file (lvd.shardio.write_shard, the layout described there): ``groups`` int64 [g],
``num_examples`` int64 [g], ``history`` float64 [g, epochs] (mean log p(patch | observed head)
per epoch; NaN for a group without members), the trained tables ``params/edges``
[E_t, g, K, K], ``params/root`` [g, H, K], ``params/leaves`` [L_t, g, C, K]; attrs shard,
num_shards, num_groups, pc_fingerprint, latents_fingerprint, seconds.

    python -m lvd.stages.latent_em --config '{"epochs": 10}' --data data.h5 \
        --latents k16/latents.h5 --pc k16/pc_init.h5 --shard 0 --num-shards 2 --out k16/latent_em/shard0.h5
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from lvd import fingerprints, io, pc, shardio, training
from lvd.stages import common, inputs
from lvd.stages.shards import group_seed, shard_groups

log = logging.getLogger("lvd.latent_em")
WRITER = "lvd.stages.latent_em"


@dataclass(frozen=True)
class Config:
    """Config section ``latent_em`` (the top tree's EM has its own: lvd.stages.latent_top_em)."""
    epochs: int = 10                # patch-head mini-batch EM epochs (each a pass over the group's members)
    full_batch_epochs: int = 0      # then full-batch EM epochs of every group (exact EM, step 1)
    batch_size: int = 256           # patches per mini-batch
    step_size: float = 0.1          # annealed linearly to step_size_end over each group's steps
    step_size_end: float = 0.01
    pseudocount: float = 0.1        # EM pseudocount
    num_shards: int = 1             # jobs the groups are split over (Snakemake makes one per shard)
    seed: int = 0                   # group g runs the schedule with a seed from (seed, g)

    def __post_init__(self):
        training.check_schedule(self, "latent_em")
        if not isinstance(self.num_shards, int) or self.num_shards < 1:
            raise ValueError(f"latent_em.num_shards is {self.num_shards!r}, expected an integer >= 1")


def group_members(c: pc.LVDCircuit, x: np.ndarray, z: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """(patches int64 [n, P], observed heads int64 [n]) of parameter group g."""
    idx = c.index.numpy()                                              # [m, P]
    H = c.patch.num_heads
    if c.mode == "position":
        R = c.groups_per_position
        pos, cluster = divmod(g, R)
        rows = np.flatnonzero(z[:, pos] // H == cluster)
        return x[rows][:, idx[pos]], z[rows, pos] % H
    rows, pos = np.nonzero(z // H == g)                                # [n] each
    return x[rows[:, None], idx[pos]], z[rows, pos] % H


def train_groups(c: pc.LVDCircuit, x, z, groups: list[int], cfg: Config):
    """Batched EM of ``groups``' tables on their members; returns (tables, sizes, history)."""
    sub = c.patch.select_groups(groups)
    xs, hs = zip(*(group_members(c, x, z, g) for g in groups)) if groups else ((), ())
    sizes = [len(a) for a in xs]
    for g, n in zip(groups, sizes):
        if n == 0:
            log.warning("group %d has no members: its tables keep their initial values", g)
    hist = pc.em_groups(sub, list(xs), list(hs), training.schedule_from(cfg),
                        group_seeds=[group_seed(cfg.seed, g) for g in groups])
    return sub.params, sizes, hist


def run(cfg: Config, data: str, latents: str, pc_path: str, shard: int, num_shards: int, out: str,
        device="cpu") -> dict:
    """Train the groups of one shard; returns a summary (also stored as attributes)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard {shard} is outside [0, --num-shards {num_shards})")
    with common.Timer() as timer:
        info = inputs.data_info(data)
        if info.kind != "image":
            raise ValueError(f"{data}: latent_em is for images (attribute 'kind' is {info.kind!r}); "
                             f"text HMMs go from materialize_pc straight to finetune")
        c = pc.load(pc_path, device=device)
        if not isinstance(c, pc.LVDCircuit):
            raise io.ArtifactError(f"{pc_path}: attribute 'circuit' is not 'lvd' (expected an LVD circuit)")
        x = inputs.load_split(data, "train")
        z, mode, K = inputs.load_latents(latents, len(x), c.num_positions)
        if mode != c.mode or K != c.num_states:
            raise io.ArtifactError(f"{latents}: latents mode {mode!r} with {K} states, but {pc_path} was built "
                                   f"in the circuit layout {c.mode!r} with {c.num_states} states")
        groups = shard_groups(c.patch.num_groups, shard, num_shards)
        log.info("shard %d/%d: %d of %d groups (%s mode), %d epochs each", shard, num_shards, len(groups),
                 c.patch.num_groups, mode, cfg.epochs)
        params, counts, hists = train_groups(c, x, z, groups, cfg)
        if groups:
            n = np.asarray(counts)
            first, last = (float(np.nansum(hists[:, e] * n) / max(n.sum(), 1)) for e in (0, -1))
            log.info("%d groups, %d members: mean ll given the state %.4f -> %.4f", len(groups),
                     n.sum(), first, last)
    summary = {"shard": shard, "num_shards": num_shards, "num_groups": c.patch.num_groups,
               "groups": len(groups), "seconds": timer.seconds,
               "pc_fingerprint": fingerprints.fingerprint(pc_path),
               "latents_fingerprint": fingerprints.fingerprint(latents)}
    shardio.write_shard(out, WRITER, asdict(cfg), summary, groups=np.asarray(groups, dtype=np.int64),
                   num_examples=np.asarray(counts, dtype=np.int64),
                   history=np.asarray(hists, dtype=np.float64).reshape(len(groups), cfg.epochs + cfg.full_batch_epochs),
                   params={name: t.cpu().numpy() for name, t in params.items()})
    log.info("wrote %s: %d groups in %.1f s", out, len(groups), timer.seconds)
    return summary


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="data.h5 (format lvd.data)")
    p.add_argument("--latents", required=True, help="latents.h5 (format lvd.latents)")
    p.add_argument("--pc", required=True, help="pc_init.h5 (format lvd.pc, an LVD circuit)")
    common.add_shard_args(p)
    args = p.parse_args(argv)
    cfg = common.load_config(Config, args.config)
    device = common.setup(args, seed=cfg.seed)
    n = common.num_shards(args, cfg, "latent_em", log)
    run(cfg, args.data, args.latents, args.pc, args.shard, n, args.out, device=device)


if __name__ == "__main__":
    main()
