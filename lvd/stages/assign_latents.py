"""Assign discrete latents: FAISS k-means over the teacher's embeddings.

Reads ``embeddings.h5`` (format lvd.embeddings: ``train`` float16 [N, num_positions, dim])
and writes ``latents.h5`` (format lvd.latents):

    z              int32   [N, P]          nearest centroid of every row (P = num_positions)
    centroids      float32 [P or 1, K, dim]
    cluster_sizes  int64   [P or 1, K]     rows per cluster over all N (0 = empty cluster)
    inertia        float64 [P or 1]        sum of squared distances to the assigned centroids
    attrs          mode, num_states, faiss_device ("cpu" or "gpu:<i>"), num_positions, dim, seconds

mode "position" runs one k-means per position (first axis P); "shared" one k-means over all
N*P rows (first axis 1). mode "clusters" (LVD-PG's progressive growing, lvd.latents.clusters):
num_clusters = num_states / heads_per_cluster clusters by one shared k-means, then a k-means of
every cluster into ``initial_heads`` sub-clusters; state = cluster * heads_per_cluster +
sub-cluster (the other heads of a cluster are grown by grow_patch_pcs); extra dataset
``sub_centroids`` float32 [num_clusters, initial_heads, dim], attrs num_clusters,
heads_per_cluster, initial_heads; ``centroids`` [1, num_clusters, dim], ``cluster_sizes``
[1, num_states]. FAISS uses the GPU only when this job's device is CUDA, the FAISS
build sees a GPU and ``use_gpu`` is "auto". With ``use_gpu: never`` the stage claims no GPU
(``--device auto`` becomes ``cpu``; the rule asks for none either).

    python -m lvd.stages.assign_latents --config '{"mode": "shared"}' \
        --embeddings embeddings.h5 --out k64/latents.h5 --num-states 64
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from lvd import io, latents
from lvd.stages import common

log = logging.getLogger("lvd.assign_latents")

MODES = ("position", "shared", "clusters")


@dataclass(frozen=True)
class Config:
    mode: str = "position"  # "position": k-means per position (LVD); "shared": one vocabulary;
                            # "clusters": one vocabulary of clusters split into heads (LVD-PG)
    num_states: int = 64  # K, clusters per k-means (CLI --num-states overrides, e.g. a wildcard)
    niter: int = 50  # Lloyd iterations per k-means run
    nredo: int = 1  # k-means runs with different seeds; the lowest training objective wins
    seed: int = 0  # FAISS seed (position p uses seed + p) and the training-subset seed
    use_gpu: str = "auto"  # "auto": FAISS GPU when the job's device is CUDA; "never": CPU FAISS
    max_points_per_centroid: int | None = 256  # train on <= this * K rows (FAISS rule); null: all rows
    heads_per_cluster: int = 4  # mode clusters: heads (states) per cluster after growing; divides num_states
    initial_heads: int = 2      # mode clusters: sub-clusters (heads) per cluster before growing

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"latents.mode is {self.mode!r}, expected one of {MODES}")
        if self.use_gpu not in latents.USE_GPU_CHOICES:
            raise ValueError(f"latents.use_gpu is {self.use_gpu!r}, expected one of "
                             f"{latents.USE_GPU_CHOICES}")
        for name in ("num_states", "niter", "nredo", "heads_per_cluster", "initial_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"latents.{name} is {value!r}, expected an integer >= 1")
        if self.mode == "clusters":
            if self.num_states % self.heads_per_cluster:
                raise ValueError(f"latents.heads_per_cluster={self.heads_per_cluster} must divide "
                                 f"num_states={self.num_states} (mode clusters)")
            if self.initial_heads > self.heads_per_cluster:
                raise ValueError(f"latents.initial_heads={self.initial_heads} exceeds "
                                 f"heads_per_cluster={self.heads_per_cluster}")
        mpc = self.max_points_per_centroid
        if mpc is not None and (not isinstance(mpc, int) or mpc < 1):
            raise ValueError(f"latents.max_points_per_centroid is {mpc!r}, expected an integer >= 1 or null")


def run(cfg: Config, embeddings: str, out: str, device="cpu") -> dict:
    """k-means over ``embeddings`` into ``out``; returns a summary (also stored as attributes)."""
    import torch

    device = torch.device(device)
    use_gpu = cfg.use_gpu if device.type == "cuda" else "never"
    gpu_id = (device.index or 0) if device.type == "cuda" else None
    faiss_device = latents.faiss_device(use_gpu, gpu_id)
    with common.Timer() as timer, io.open_artifact(embeddings, "lvd.embeddings") as f:
        emb = io.require(f, "train", ndim=3, dtype_kind="f")  # [N, P, D], read lazily in chunks
        n, p, d = emb.shape
        log.info("%s: %d samples x %d positions x dim %d; mode %s, K=%d, FAISS on %s",
                 embeddings, n, p, d, cfg.mode, cfg.num_states, faiss_device)
        fit = latents.per_position if cfg.mode == "position" else latents.shared
        kw = dict(niter=cfg.niter, nredo=cfg.nredo, seed=cfg.seed, use_gpu=use_gpu, gpu_id=gpu_id,
                  max_points_per_centroid=cfg.max_points_per_centroid)
        try:
            if cfg.mode == "clusters":
                res = latents.clusters(emb, cfg.num_states // cfg.heads_per_cluster, cfg.heads_per_cluster,
                                       cfg.initial_heads, **kw)
            else:
                res = fit(emb, cfg.num_states, **kw)
        except ValueError as e:
            raise ValueError(f"{embeddings}: field 'train' {tuple(emb.shape)}: {e}") from e
    summary = {"mode": cfg.mode, "num_states": cfg.num_states, "faiss_device": faiss_device,
               "num_positions": p, "dim": d, "seconds": timer.seconds,
               "empty_clusters": int((res.sizes == 0).sum()), "inertia": float(res.inertia.sum())}
    with io.create(out, "lvd.latents", __name__, common.config_dict(cfg)) as g:
        g["z"] = res.z
        g["centroids"] = res.centroids
        g["cluster_sizes"] = res.sizes
        g["inertia"] = res.inertia
        for key in ("mode", "num_states", "faiss_device", "num_positions", "dim", "seconds"):
            g.attrs[key] = summary[key]
        if cfg.mode == "clusters":
            g["sub_centroids"] = res.sub_centroids
            g.attrs["num_clusters"] = cfg.num_states // cfg.heads_per_cluster
            g.attrs["heads_per_cluster"] = cfg.heads_per_cluster
            g.attrs["initial_heads"] = cfg.initial_heads
    reserved = 0
    if cfg.mode == "clusters":   # the states of the heads still to grow start empty by design
        reserved = (cfg.num_states // cfg.heads_per_cluster) * (cfg.heads_per_cluster - cfg.initial_heads)
    log.info("wrote %s in %.1f s: inertia %.6g, %d empty states%s", out, timer.seconds, summary["inertia"],
             summary["empty_clusters"] - reserved,
             f" (besides the {reserved} states reserved for the heads grow_patch_pcs grows)" if reserved else "")
    return summary


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--embeddings", required=True, help="embeddings.h5 (format lvd.embeddings)")
    p.add_argument("--out", required=True, help="latents.h5 to write (format lvd.latents)")
    p.add_argument("--num-states", type=int, default=None, help="K; overrides config num_states")
    args = p.parse_args(argv)
    cfg = common.load_config(Config, args.config)
    if args.num_states is not None:
        cfg = dataclasses.replace(cfg, num_states=args.num_states)
    if cfg.use_gpu == "never" and (args.device or "auto").strip().lower() == "auto":
        args.device = "cpu"  # FAISS stays on the CPU: claim no GPU (the rule reserves none)
    device = common.setup(args, seed=cfg.seed)
    if args.threads:
        latents.load_faiss().omp_set_num_threads(args.threads)
    run(cfg, args.embeddings, args.out, device=device)


if __name__ == "__main__":
    main()
