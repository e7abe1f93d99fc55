"""Time LVD-PG's growing work on one shard of a run: one pass over the members with flows,
one without, and one masked EM epoch of every cluster (lvd.pc.grow.member_pass,
lvd.pc.groups.em_groups), on a run's data, latents and pc_init.h5. Prints seconds and a
checksum of the flows (equal checksums: the same numbers).

    python scripts/grow_passes.py results/fashion_mnist_pg_full --num-states 64 --seed 0 \\
        --shard 0 --num-shards 2 --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lvd import runtime


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="results/<run> of an LVD-PG run (data.h5, k<K>/latents.h5, pc_init.h5)")
    p.add_argument("--num-states", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="the LVD arm's seed folder s<seed>")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=0, help="rows per member pass; 0 = grow_patch_pcs's own")
    args = p.parse_args(argv)
    runtime.configure_process()
    import torch

    from lvd import pc
    from lvd.pc import grow
    from lvd.pc.groups import em_groups
    from lvd.stages import grow_patch_pcs as gp
    from lvd.stages import inputs
    from lvd.stages.shards import shard_groups

    torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    kdir = run / f"k{args.num_states}"
    c = pc.load(kdir / "lvd" / f"s{args.seed}" / "pc_init.h5")
    x = inputs.load_split(run / "data.h5", "train")
    z = inputs.load_latents(kdir / "latents.h5", len(x), c.num_positions)[0]
    G, H, H0 = gp.cluster_layout(str(kdir / "latents.h5"))
    groups = shard_groups(G, args.shard, args.num_shards)
    none = np.zeros((len(x), c.num_positions, 1), np.float16)      # (the embeddings are not used)
    members = [gp.cluster_members(c, x, z, none, g) for g in groups]
    xs, hs = [m[0] for m in members], [m[1] for m in members]
    sub = c.patch.select_groups(groups)
    masks = grow.init_masks(sub, c.patch.num_latents - (H - H0), H0)
    per_row = 4 * 8 * len(groups) * sub.num_nodes * sub.num_latents
    batch = args.batch_size or int(max(16, min(4096, gp.PASS_BYTES // per_row)))
    from lvd.pc import kernels

    print(f"{kernels.cpu_model()} ({kernels.vector_isa()}), {args.threads} thread(s); shard {args.shard}/"
          f"{args.num_shards}: {len(groups)} clusters, {sum(map(len, xs)):,} patches "
          f"(largest {max(map(len, xs)):,}); member-pass batch {batch}")
    t = time.perf_counter()
    flows, _ = grow.member_pass(sub, xs, hs, batch_size=batch)
    print(f"member pass with flows: {time.perf_counter() - t:.1f} s; flow checksum "
          f"{sum(float(v.double().sum()) for v in flows.values()):.6f}")
    t = time.perf_counter()
    grow.member_pass(sub, xs, hs, batch_size=batch, flows=False)
    print(f"member pass, likelihoods only: {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    em_groups(sub, xs, hs, epochs=1, batch_size=256, masks=masks.as_dict())
    print(f"one masked EM epoch (batch 256): {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
