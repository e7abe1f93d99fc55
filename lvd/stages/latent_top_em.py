"""latent_top_em: gather the latent_em shards, then train the top tree on the patch likelihoods.

Reads data.h5 (train, valid), latents.h5, pc_init.h5 and the shard files of latent_em; writes
pc_latent_em.h5 (format lvd.pc). Settings: config section ``latent_top_em`` (its own EM schedule;
latent_em's settings reach it only through the shards).

Gather: every shard 0..S-1 must be given exactly once, all with the same num_shards, all trained
from this pc_init and these latents (fingerprints), together covering every parameter group;
anything else is an error naming the shard file. The trained tables replace pc_init's patch
tables.

Latent distribution step (method.md section 2 step 7): the patch heads are frozen, the patch
log-likelihoods (patch_lls) L[n, i, k] = log p_i(x_i(n) | Z_i = k) are computed once (float32
in memory when they fit in ``patch_lls_memory_gb``; otherwise a float16 temporary HDF5 file
beside the output holding L minus its per-(n, i) maximum, rows in a seeded random order read
sequentially, the float32 maxima kept in memory), and the top tree (count-initialized from z by materialize_pc) is trained by mini-batch
EM on the true marginal sum_z p_top(z) prod_i exp(L[n, i, z_i]) with the schedule of
lvd.training (``epochs`` mini-batch epochs, step size ``step_size`` -> ``step_size_end``, then
the mini-batch phases of ``next_phases``, then ``full_batch_epochs``; one Schedule, epoch e of
it shuffling with a seed from (seed, e)). Its valid log-likelihood after each epoch is the
whole circuit's valid log p(x).

Several processes (data-parallel EM of the top, docs/scaleout.md "One circuit on several
processes"): started by ``torchrun --nproc-per-node N`` or ``srun`` with N tasks (the rule's
``tasks`` resource), the processes join one group (gloo on CPUs, NCCL on GPUs). Each gathers
the shards (the same tables on every process), then the patch pass is split: chunk j of L is
computed by process j mod N and broadcast, so every process holds all of L, because every
mini-batch is split by rows (r, r + N, ..) across the processes (lvd.pc.em_epoch) and its rows
are anywhere in L. Spilled L (over ``patch_lls_memory_gb``) is not split: every process computes
its own temporary file (the process's rank in its name), since an HDF5 file takes no concurrent
writers. The top's flows are summed over the processes before every update, so the result
equals the single process's up to the order of float sums; process 0 alone writes the output
and the log.

    python -m lvd.stages.latent_top_em --config '{"epochs": 10}' --data data.h5 \
        --latents k16/latents.h5 --pc k16/pc_init.h5 --shards k16/latent_em/shard*.h5 --out k16/pc_latent_em.h5
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from lvd import fingerprints, io, metrics, pc, shardio, training
from lvd.pc import distributed, validate
from lvd.stages import common, emstage, inputs, topinit
from lvd.stages.shards import shard_groups

log = logging.getLogger("lvd.latent_top_em")
WRITER = "lvd.stages.latent_top_em"
CHUNK_BYTES = 256 * 2**20  # working memory per chunk of the patch pass


@dataclass(frozen=True)
class Config:
    """Config section ``latent_top_em``: the top tree's EM on the patch likelihoods L."""
    epochs: int = 10                 # mini-batch EM epochs of the top tree (each a pass over the images)
    full_batch_epochs: int = 0       # then full-batch EM epochs (step 1)
    batch_size: int = 256            # images per mini-batch
    step_size: float = 0.1           # annealed linearly to step_size_end over all mini-batch steps
    step_size_end: float = 0.01
    pseudocount: float = 0.1         # EM pseudocount
    next_phases: tuple = ()          # mini-batch phases after the first, each {epochs, step_size, step_size_end}
                                     # (LVD-PG: [{epochs: 10, step_size: 0.01, step_size_end: 0.001}] after 10
                                     # epochs at 0.1 -> 0.01); full_batch_epochs come last
    patch_lls_memory_gb: float = 2.0  # L in memory (float32) up to this size, else a float16 temp file
    seed: int = 0                    # shuffling (epoch e with a seed from (seed, e)); the temp file's row order

    def __post_init__(self):
        training.check_schedule(self, "latent_top_em")     # every phase, next_phases' too
        if not self.patch_lls_memory_gb >= 0:
            raise ValueError(f"latent_top_em.patch_lls_memory_gb is {self.patch_lls_memory_gb!r}, expected >= 0")


def gather(c: pc.LVDCircuit, shards: list[str], pc_path: str, latents: str) -> dict:
    """Copy the shards' trained tables into ``c.patch`` (in place); returns the per-group records.

    Every shard is read and checked by lvd.shardio.read_shard; here they are checked against each
    other and against this circuit, pc_init and latents (shardio.ShardError naming the file)."""
    if not shards:
        raise shardio.ShardError("no shard files given (--shards)")
    G = c.patch.num_groups
    want_pc, want_lat = fingerprints.fingerprint(pc_path), fingerprints.fingerprint(latents)
    seen: dict[int, str] = {}
    num_shards = None
    hist = np.full((G, 0), np.nan)
    counts = np.zeros(G, dtype=np.int64)
    pg = PGGather(c.patch)    # grow_patch_pcs's grown fields (LVD-PG shards)
    for path in shards:
        sh = shardio.read_shard(path)
        s, S = sh.shard, sh.num_shards
        if num_shards is None:
            num_shards = S
        elif S != num_shards:
            raise shardio.ShardError(f"{path}: attribute 'num_shards' is {S}, but {shards[0]} has {num_shards}")
        if s in seen:
            raise shardio.ShardError(f"{path}: shard {s} given twice (also {seen[s]})")
        if sh.attrs["pc_fingerprint"] != want_pc:
            raise shardio.ShardError(f"{path}: attribute 'pc_fingerprint' does not match {pc_path}: the shard "
                                f"was trained from another pc_init; rerun latent_em")
        if sh.attrs["latents_fingerprint"] != want_lat:
            raise shardio.ShardError(f"{path}: attribute 'latents_fingerprint' does not match {latents}: the "
                                f"shard was trained on other latents; rerun latent_em")
        groups = sh.groups
        expected = shard_groups(G, s, S)
        if groups.tolist() != expected:
            raise shardio.ShardError(f"{path}: field 'groups' is {groups.tolist()[:8]}..., expected groups "
                                f"{expected[:8]}... of shard {s}/{S} over {G} groups")
        if set(sh.params) != set(c.patch.params):
            raise shardio.ShardError(f"{path}: tables {sorted(sh.params)}, but the patch tree of {pc_path} has "
                                f"{sorted(c.patch.params)}")
        for name, table in c.patch.params.items():
            dim = shardio.SHARD_GROUP_DIMS[name]
            want = list(table.shape)
            want[dim] = len(groups)
            arr = sh.params[name]
            if list(arr.shape) != want:
                raise shardio.ShardError(f"{path}: field 'params/{name}' has shape {arr.shape}, expected {tuple(want)}")
            validate.check_table(str(path), f"params/{name}", arr, tuple(want), c.patch.norm_dims[name])
            t = torch.from_numpy(arr).to(table.device)
            table.index_copy_(dim, torch.as_tensor(groups, device=table.device), t)
        h = sh.history
        if hist.shape[1] == 0:
            hist = np.full((G, h.shape[1]), np.nan)
        if h.shape[1] == hist.shape[1]:
            hist[groups] = h
        counts[groups] = sh.num_examples
        pg.add(sh)
        seen[s] = path
    missing = sorted(set(range(num_shards)) - set(seen))
    if missing:
        raise shardio.ShardError(f"missing shard(s) {missing} of num_shards={num_shards}; given: {shards}")
    log.info("gathered %d shards covering %d groups", num_shards, G)
    return {"history": hist, "num_examples": counts, "pg": pg if pg.shards else None}


class PGGather:
    """The grown fields of grow_patch_pcs's shards (LVD-PG), gathered over the shards: the
    masks of the pruned entries (into the patch tree's ``masks``, so that the later EM keeps
    them zero), every patch's final head, the active heads and the entries pruned per round.
    Either every shard has them or none."""

    def __init__(self, patch):
        G, H, K = patch.num_groups, patch.num_heads, patch.num_latents
        self.shapes = {"edges": tuple(patch.params["edges"].shape), "root": (G, H, K)}
        self.edges = self.root = None     # allocated by the first grow_patch_pcs shard
        self.heads: dict[int, np.ndarray] = {}
        self.num_heads = np.full(G, H, dtype=np.int64)
        self.pruned = np.zeros((G, 0), dtype=np.int64)
        self.shards, self.plain = 0, 0

    def add(self, sh: shardio.Shard) -> None:
        """Gather one shard's grown fields (their layout checked by shardio.read_shard, the tables'
        shapes against the circuit by ``gather``)."""
        if sh.grown is None:
            self.plain += 1
            if self.shards:
                raise shardio.ShardError(f"{sh.path}: no grown fields (a latent_em shard?) but other shards "
                                    f"are grow_patch_pcs's")
            return
        if self.plain:
            raise shardio.ShardError(f"{sh.path}: a grow_patch_pcs shard among latent_em shards")
        arrays, groups = sh.grown, sh.groups
        g = torch.as_tensor(groups)
        if self.edges is None:
            self.edges, self.root = (torch.ones(self.shapes[k], dtype=torch.bool) for k in ("edges", "root"))
        for name, full in (("edges", self.edges), ("root", self.root)):
            full.index_copy_(shardio.SHARD_GROUP_DIMS[name], g, torch.from_numpy(arrays[f"masks/{name}"]))
        for grp, part in zip(groups.tolist(), np.split(arrays["heads"], np.cumsum(sh.num_examples)[:-1])):
            self.heads[grp] = part
        self.num_heads[groups] = arrays["num_heads"]
        pr = arrays["pruned"]
        if self.pruned.shape[1] == 0:
            self.pruned = np.zeros((len(self.num_heads), pr.shape[1]), dtype=np.int64)
        self.pruned[groups] = pr
        self.shards += 1

    def grown_latents(self, z: np.ndarray, H: int) -> tuple[np.ndarray, float]:
        """(z after growing: state = cluster * H + final head, the fraction of patches whose
        state changed). Cluster g's members are np.nonzero(z // H == g), grow_patch_pcs's order."""
        cluster = (z // H).ravel()
        order = np.argsort(cluster, kind="stable")      # each cluster's patches in np.nonzero order
        starts = np.concatenate([[0], np.cumsum(np.bincount(cluster, minlength=len(self.num_heads)))])
        out = z.ravel().copy()
        for g, heads in self.heads.items():
            members = order[starts[g]:starts[g + 1]]
            if len(members) != len(heads):
                raise shardio.ShardError(f"cluster {g}: {len(heads)} heads in its shard but {len(members)} patches "
                                    f"in the latents")
            out[members] = g * H + heads
        out = out.reshape(z.shape)
        return out, float((out != z).mean()) if z.size else 0.0


def chunk_rows(c: pc.LVDCircuit, budget: int | None = None) -> int:
    """Rows of images per chunk of the patch pass within ``budget`` bytes (default
    ``CHUNK_BYTES``; about 4 buffers)."""
    budget = CHUNK_BYTES if budget is None else budget
    groups_per_patch = c.groups_per_position if c.mode == "position" else c.patch.num_groups
    per_row = 4 * 4 * c.num_positions * c.patch.num_nodes * groups_per_patch * c.patch.num_latents
    return int(max(1, min(4096, budget // per_row)))


def patch_lls(c: pc.LVDCircuit, x: np.ndarray, rows: int) -> torch.Tensor:
    """The patch log-likelihoods L [N, m, K] = log p_i(x_i(n) | Z_i = k), float32 in memory
    (the engine computes them as ``LVDCircuit.latent_lls``). Under several processes chunk j
    is computed by process j mod N and broadcast from it: every process returns all of L."""
    out = torch.empty(len(x), c.num_positions, c.num_states)
    rank, size = distributed.world()
    starts = range(0, len(x), rows)
    for j, i in enumerate(starts):
        if j % size == rank:
            out[i:i + rows] = c.latent_lls(x[i:i + rows]).cpu()
    if size > 1:
        for j, i in enumerate(starts):
            distributed.broadcast_rows(out[i:i + rows], j % size, c.device)
    return out


def spill_patch_lls(c: pc.LVDCircuit, x: np.ndarray, near: str, rows: int, seed: int):
    """The patch log-likelihoods L [N, m, K] in a temporary float16 file beside ``near``
    (lvd.shardio.SpillArray), rows in a seeded random order: file row r is example perm[r], read
    sequentially by the unshuffled EM. Returns (the SpillArray, perm); close it when done."""
    N = len(x)
    perm = np.random.default_rng(seed).permutation(N)
    rank, size = distributed.world()     # (each process of several writes a file of its own)
    L = shardio.SpillArray(near, (N, c.num_positions, c.num_states), tag="lls" if size == 1 else f"lls-r{rank}")
    try:  # an error or SIGTERM while filling removes the file too
        for i in range(0, N, rows):
            block = c.latent_lls(x[perm[i:i + rows]]).cpu().numpy()       # [rows, m, K]
            L.write(i, block)
            if (i // rows) % 20 == 19:
                log.info("L on disk: %d / %d rows", i + len(block), N)
    except BaseException:
        L.close()
        raise
    return L, perm


def train_top(c: pc.LVDCircuit, cfg: Config, valid, shuffle: bool, **arrays) -> dict:
    """Run the schedule of ``cfg`` (lvd.training.schedule_from: the first phase, ``next_phases``,
    then the full-batch epochs; epoch e of the whole schedule shuffles with a seed from (seed, e))
    on the top tree; returns its record, with ``phase_epochs`` the epochs of each phase."""
    sched = training.schedule_from(cfg)
    _, record = training.train(c.top, None, sched, stage="latent_top_em", valid=valid, shuffle=shuffle, **arrays)
    record["phase_epochs"] = [p.epochs for p in sched.phases]
    return record


def run(cfg: Config, data: str, latents: str, pc_path: str, shards: list[str], out: str, device="cpu") -> dict:
    """Gather the shards and train the top tree; returns a summary (also stored as attributes)."""
    with common.Timer() as timer:
        c = pc.load(pc_path, device=device)
        if not isinstance(c, pc.LVDCircuit):
            raise io.ArtifactError(f"{pc_path}: attribute 'circuit' is not 'lvd' (expected an LVD circuit)")
        x = inputs.load_split(data, "train")
        xv = inputs.load_split(data, "valid")
        z = inputs.load_latents(latents, len(x), c.num_positions)[0]  # checks z against the data
        g = gather(c, [str(s) for s in shards], pc_path, latents)
        n = g["num_examples"]
        cond = [float(np.nansum(g["history"][:, e] * n) / len(x)) for e in range(g["history"].shape[1])]
        patch_record = {"stage": "latent_em", "epochs": len(cond), "num_shards": len(shards),
                        "train_ll_given_z": cond, "group_sizes": n.tolist()}
        if g["pg"] is not None:   # LVD-PG: keep the pruned entries out, the top from the grown z
            pg = g["pg"]
            c.patch.masks = {"edges": pg.edges.to(c.device), "root": pg.root.to(c.device)}
            zg, moved = pg.grown_latents(z, c.patch.num_heads)
            log.info("LVD-PG: %d of %d patch-tree entries pruned; %.1f%% of the patches changed state "
                     "while growing; the top is initialized again from the grown assignment",
                     int((~pg.edges).sum() + (~pg.root).sum()), pg.edges.numel() + pg.root.numel(),
                     100 * moved)
            topinit.init_top(c, zg, pc_path)   # as materialize_pc did, from the grown z
            patch_record.update(stage="grow_patch_pcs", growing_curves=g["history"].tolist(),
                                pruned=pg.pruned.tolist(), num_heads=pg.num_heads.tolist(),
                                moved_fraction=moved)
        distributed.sync_params(c.top)      # (identical already: the same files, the same counting)
        rows = chunk_rows(c)
        need = len(x) * c.num_positions * c.num_states * 4
        valid_L = patch_lls(c, xv, rows)
        disk = None
        try:
            if need <= cfg.patch_lls_memory_gb * 2**30:
                log.info("L: %d x %d x %d float32 in memory (%.2f GB)", len(x), c.num_positions,
                         c.num_states, need / 2**30)
                L, shuffle = patch_lls(c, x, rows), True
            else:
                log.info("L: %.2f GB float32 > patch_lls_memory_gb=%s: a float16 temporary file beside %s",
                         need / 2**30, cfg.patch_lls_memory_gb, out)
                L = disk = spill_patch_lls(c, x, out, rows, cfg.seed)[0]
                shuffle = False
            # L is soft evidence on the top's nodes (tree top: node i = Z_i) or on its leaf
            # variables (HCLT top: Z_i is the observed child of the hidden H_i)
            key = "leaf_evidence" if c.top_kind == "hclt" else "evidence"
            valid = lambda t: pc.mean_log_likelihood(t, None, **{key: valid_L})  # noqa: E731
            start = valid(c.top)
            log.info("before top EM: valid ll %.4f (bpd %.4f)", start, metrics.bpd(start, c.num_vars))
            record = train_top(c, cfg, valid, shuffle, **{key: L})
        finally:
            if disk is not None:
                disk.close()
        record["valid_ll_init"] = start
    history = inputs.history_of(pc_path) + [patch_record, record]
    final = record["valid_ll"][-1] if record["valid_ll"] else start
    summary = {"seconds": timer.seconds, "valid_ll": final, "valid_bpd": metrics.bpd(final, c.num_vars),
               "patch_lls_on_disk": disk is not None}
    size = distributed.world()[1]
    if size > 1:
        summary["processes"] = size
    if not distributed.is_main():       # process 0 writes the output
        return summary
    pc.save(c, out, writer=WRITER, config=asdict(cfg), history=history, **summary)
    log.info("wrote %s in %.1f s: valid bpd %.4f", out, timer.seconds, summary["valid_bpd"])
    return summary


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="data.h5 (format lvd.data)")
    p.add_argument("--latents", required=True, help="latents.h5 (format lvd.latents)")
    p.add_argument("--pc", required=True, help="pc_init.h5 (format lvd.pc)")
    p.add_argument("--shards", nargs="+", required=True, help="every shard file of latent_em")
    p.add_argument("--out", required=True, help="pc_latent_em.h5 to write (format lvd.pc)")
    args = p.parse_args(argv)
    cfg = common.load_config(Config, args.config)
    device = common.setup(args, seed=cfg.seed)
    emstage.join_group(device)
    run(cfg, args.data, args.latents, args.pc, args.shards, args.out, device=device)
    distributed.leave()


if __name__ == "__main__":
    main()
