"""grow_patch_pcs: LVD-PG's progressive growing of the clusters' patch circuits, one shard per job.

Reads data.h5 (train), latents.h5 (mode "clusters": state = cluster * H + head, attrs
num_clusters, heads_per_cluster H, initial_heads H0), embeddings.h5 (the teacher's embedding of
every (image, patch)) and pc_init.h5 (materialize_pc's LVD circuit in the "shared" layout: one
patch group per cluster, H heads, num_latents + (H - H0) hidden states per node allocated);
writes one shard file (format lvd.pc_shard), which latent_top_em gathers like latent_em's.

Cluster g's members are every patch (any position) whose state s has s // H == g; their heads
start at s % H (the initial sub-clusters). Every cluster of the shard is grown by
lvd.pc.grow.progressive_growing (method.md section 3): rounds of masked EM with each patch's flow
through its own head only (``epochs`` mini-batch + ``full_batch_epochs`` full-batch epochs per
round), pruning of edges with flow below ``prune_threshold`` x (cluster members), re-assignment
to the best head with ``stay_bonus`` nats for the current one, and growth of the worst head
(copies of its high-flow states, log-normal noise ``grow_noise``) whose members are split by a
2-means on their embeddings, until H heads. Shard i of S grows clusters i, i+S, i+2S, ...;
cluster g's randomness derives from (seed, g) alone, so the gathered result does not depend on
the number of shards (tested: 1 shard == 3 shards).

Shard file (lvd.shardio.write_shard; the layout is described there): latent_em's fields (``groups``,
``num_examples``, ``history`` [g, rounds] = the growing curve: mean log p(patch | own head) of
each cluster after each round's EM and pruning, ``params/edges``, ``params/root``,
``params/leaves``) and the grown fields: ``heads`` int64 [sum n_g] (final head of every member,
clusters in ``groups`` order, members in np.nonzero(z // H == g) order), ``num_heads`` int64 [g]
(active heads), ``pruned`` int64 [g, rounds] (entries pruned per round), ``masks/edges`` bool
[E_t, g, K, K], ``masks/root`` bool [g, H, K], ``masks/active`` bool [V, g, K]; attrs as
latent_em's shards plus ``embeddings_fingerprint``, ``initial_states``, ``rounds``.

    python -m lvd.stages.grow_patch_pcs --config '{"epochs": 50}' --data data.h5 \
        --latents k64/latents.h5 --embeddings embeddings.h5 --pc k64/lvd/s0/pc_init.h5 \
        --shard 0 --num-shards 2 --out k64/lvd/s0/grow/shard0.h5
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from lvd import fingerprints, io, metrics, pc, shardio, training
from lvd.pc import grow
from lvd.stages import common, inputs
from lvd.stages.shards import group_seed, shard_groups

log = logging.getLogger("lvd.grow_patch_pcs")
WRITER = "lvd.stages.grow_patch_pcs"
PASS_BYTES = 256 * 2**20   # working memory of one batch of the likelihood / flow passes


@dataclass(frozen=True)
class Config:
    """Config section ``grow`` (the authors' defaults, method.md section 3)."""
    epochs: int = 50                # mini-batch EM epochs of every cluster per growing round
    full_batch_epochs: int = 0      # then full-batch EM epochs per round
    batch_size: int = 256           # patches per mini-batch
    step_size: float = 0.1          # annealed linearly to step_size_end over each round's steps
    step_size_end: float = 0.01
    pseudocount: float = 0.1
    prune_threshold: float = 1e-4   # edges with flow < this x (cluster members) are pruned
    stay_bonus: float = 1.0         # nats added to a patch's current head when re-assigning
    grow_noise: float = 0.2         # std of the log-normal noise on a grown head's copied nodes
    num_shards: int = 1             # jobs the clusters are split over (one Snakemake job each)
    seed: int = 0                   # cluster g's shuffling and noise derive from (seed, g)

    def __post_init__(self):
        training.check_schedule(self, "grow")
        if not isinstance(self.num_shards, int) or self.num_shards < 1:
            raise ValueError(f"grow.num_shards is {self.num_shards!r}, expected an integer >= 1")
        for name in ("prune_threshold", "stay_bonus", "grow_noise"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"grow.{name} is {v!r}, expected a number >= 0")


def cluster_layout(latents: str) -> tuple[int, int, int]:
    """(num_clusters, heads_per_cluster, initial_heads) of clusters-mode latents."""
    with io.open_artifact(latents, "lvd.latents") as f:
        a = dict(f.attrs)
    if a.get("mode") != "clusters":
        raise io.ArtifactError(f"{latents}: attribute 'mode' is {a.get('mode')!r}; grow_patch_pcs needs "
                               f"latents.mode: clusters")
    for key in ("num_clusters", "heads_per_cluster", "initial_heads"):
        if key not in a:
            raise io.ArtifactError(f"{latents}: missing attribute {key!r} (mode clusters)")
    return int(a["num_clusters"]), int(a["heads_per_cluster"]), int(a["initial_heads"])


def load_embeddings(path: str, num_train: int, num_positions: int) -> np.ndarray:
    """The teacher's train embeddings [N, P, D] (as stored, float16), checked against the data."""
    with io.open_artifact(path, "lvd.embeddings") as f:
        e = io.require(f, "train", ndim=3, dtype_kind="f")
        if e.shape[:2] != (num_train, num_positions):
            raise io.ArtifactError(f"{path}: field 'train' has shape {e.shape}, expected ({num_train}, "
                                   f"{num_positions}, dim) (train rows x positions of data.h5)")
        return e[()]


def cluster_members(c: pc.LVDCircuit, x, z, emb, g: int):
    """(patches int64 [n, P], heads int64 [n], embeddings float32 [n, D]) of cluster g."""
    H = c.patch.num_heads
    rows, pos = np.nonzero(z // H == g)
    idx = c.index.numpy()
    return x[rows[:, None], idx[pos]], z[rows, pos] % H, np.asarray(emb[rows, pos], dtype=np.float32)


def settings_of(cfg: Config, heads: int) -> grow.GrowSettings:
    return grow.GrowSettings(heads=heads, em_epochs=cfg.epochs, full_batch_epochs=cfg.full_batch_epochs,
                             batch_size=cfg.batch_size, step_size=cfg.step_size, step_size_end=cfg.step_size_end,
                             pseudocount=cfg.pseudocount, prune_threshold=cfg.prune_threshold,
                             stay_bonus=cfg.stay_bonus, noise=cfg.grow_noise)


def run(cfg: Config, data: str, latents: str, embeddings: str, pc_path: str, shard: int, num_shards: int,
        out: str, device="cpu") -> dict:
    """Grow the clusters of one shard; returns a summary (also stored as attributes)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard {shard} is outside [0, --num-shards {num_shards})")
    with common.Timer() as timer:
        info = inputs.data_info(data)
        if info.kind != "image":
            raise ValueError(f"{data}: grow_patch_pcs is for images (attribute 'kind' is {info.kind!r})")
        G, H, H0 = cluster_layout(latents)
        c = pc.load(pc_path, device=device)
        if not isinstance(c, pc.LVDCircuit) or c.mode != "shared":
            raise io.ArtifactError(f"{pc_path}: expected an LVD circuit in the 'shared' layout (materialize_pc "
                                   f"with latents mode clusters)")
        if (c.patch.num_groups, c.patch.num_heads) != (G, H):
            raise io.ArtifactError(f"{pc_path}: {c.patch.num_groups} patch groups of {c.patch.num_heads} heads, "
                                   f"but {latents} has {G} clusters of {H} heads")
        K0 = c.patch.num_latents - (H - H0)
        if K0 < 1:
            raise io.ArtifactError(f"{pc_path}: {c.patch.num_latents} hidden states per node cannot hold "
                                   f"{H - H0} growing rounds")
        x = inputs.load_split(data, "train")
        z, _, K = inputs.load_latents(latents, len(x), c.num_positions)
        emb = load_embeddings(embeddings, len(x), c.num_positions)
        groups = shard_groups(G, shard, num_shards)
        members = [cluster_members(c, x, z, emb, g) for g in groups]
        del emb
        xs, hs, es = (list(t) for t in zip(*members)) if groups else ([], [], [])
        n = np.array([len(a) for a in xs], dtype=np.int64)
        log.info("shard %d/%d: %d of %d clusters, %d patches; %d -> %d heads, %d initial hidden states "
                 "(%d allocated), %d EM epochs per round", shard, num_shards, len(groups), G, int(n.sum()),
                 H0, H, K0, c.patch.num_latents, cfg.epochs)
        for g, k in zip(groups, n):
            if k == 0:
                log.warning("cluster %d has no members: its tables keep their initial values", g)
        sub = c.patch.select_groups(groups)
        masks = grow.init_masks(sub, K0, H0)
        per_row = 4 * 8 * max(len(groups), 1) * sub.num_nodes * sub.num_latents
        res = grow.progressive_growing(sub, masks, xs, hs, es, settings_of(cfg, H),
                                       [group_seed(cfg.seed, g) for g in groups],
                                       pass_batch=int(max(16, min(4096, PASS_BYTES // per_row))))
        means = metrics.size_weighted_means(res.curve, n)
        for r in range(res.curve.shape[1]):
            if (n * np.isfinite(res.curve[:, r])).any():
                log.info("round %d: mean ll given the head %.4f, %d entries pruned", r + 1,
                         float(means[r]), int(res.pruned[:, r].sum()))
    rounds = H - H0 + 1   # also for a shard without clusters (more shards than clusters)
    summary = {"shard": shard, "num_shards": num_shards, "num_groups": G, "groups": len(groups),
               "seconds": timer.seconds, "initial_states": K0, "rounds": rounds,
               "pc_fingerprint": fingerprints.fingerprint(pc_path), "latents_fingerprint": fingerprints.fingerprint(latents),
               "embeddings_fingerprint": fingerprints.fingerprint(embeddings, contents=False)}
    grown = {"heads": np.concatenate(res.heads).astype(np.int64) if groups else np.zeros(0, np.int64),
             "num_heads": masks.heads.astype(np.int64),
             "pruned": res.pruned.astype(np.int64).reshape(len(groups), rounds),
             "masks/edges": masks.edges.cpu().numpy(), "masks/root": masks.root.cpu().numpy(),
             "masks/active": masks.active.cpu().numpy()}
    shardio.write_shard(out, WRITER, asdict(cfg), summary, groups=np.asarray(groups, dtype=np.int64), num_examples=n,
                   history=np.asarray(res.curve, dtype=np.float64).reshape(len(groups), rounds),
                   params={k: v.cpu().numpy() for k, v in sub.params.items()}, grown=grown)
    log.info("wrote %s: %d clusters in %.1f s", out, len(groups), timer.seconds)
    return summary


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="data.h5 (format lvd.data)")
    p.add_argument("--latents", required=True, help="latents.h5 (format lvd.latents, mode clusters)")
    p.add_argument("--embeddings", required=True, help="embeddings.h5 (format lvd.embeddings)")
    p.add_argument("--pc", required=True, help="pc_init.h5 (format lvd.pc, an LVD circuit)")
    common.add_shard_args(p)
    args = p.parse_args(argv)
    cfg = common.load_config(Config, args.config)
    device = common.setup(args, seed=cfg.seed)
    n = common.num_shards(args, cfg, "grow", log)
    run(cfg, args.data, args.latents, args.embeddings, args.pc, args.shard, n, args.out, device=device)


if __name__ == "__main__":
    main()
