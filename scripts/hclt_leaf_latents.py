"""HCLT with and without latents on the Chow-Liu tree's leaves, on idx images, outside Snakemake.

Trains pc.hclt(leaf_latents=True) (one latent per variable, the default) and
pc.hclt(leaf_latents=False) (a Chow-Liu leaf emits from its parent's latent, PyJuice's HCLT)
with the same EM schedule (mini-batch epochs, then full-batch epochs) and prints one JSON line
per (K, seed, layout): K x K blocks, parameters, seconds per epoch, train log-likelihoods, and the
bits per dimension on a seeded validation split held out of the training images (what the
default is chosen on) and on the test images (reported, never used to choose). The two layouts
of a (K, seed) are trained one epoch each in turn, so a change of machine load between them
shows in both.

    python scripts/hclt_leaf_latents.py --idx-dir /usr/share/datasets/fashion-mnist --num-latents 8 32 \
        --epochs 10 --full-batch-epochs 1 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time

from lvd.runtime import configure_process  # noqa: I001  (first: before torch loads libgomp)

configure_process()

import numpy as np
import torch

from lvd import pc
from lvd.data.images import find_idx, read_idx


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idx-dir", required=True, help="directory with train-images-idx3-ubyte.gz and t10k-...")
    p.add_argument("--num-latents", type=int, nargs="+", default=[32])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--full-batch-epochs", type=int, default=0)
    p.add_argument("--valid", type=int, default=6000, help="training images held out for validation (seeded)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--step-size", type=float, default=0.1)
    p.add_argument("--step-size-end", type=float, default=0.01)
    p.add_argument("--pseudocount", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = read_idx(find_idx(args.idx_dir, "train")).reshape(-1, 28 * 28).astype(np.int64)
    test = read_idx(find_idx(args.idx_dir, "test")).reshape(-1, 28 * 28).astype(np.int64)
    perm = np.random.default_rng(12345).permutation(len(images))
    valid, train = images[perm[:args.valid]], images[perm[args.valid:]]
    bpd = lambda ll: -ll / (train.shape[1] * np.log(2))  # noqa: E731
    for K in args.num_latents:
        for seed in args.seeds:
            sched = pc.Schedule(epochs=args.epochs, full_batch_epochs=args.full_batch_epochs,
                                batch_size=args.batch_size, step_size=args.step_size,
                                step_size_end=args.step_size_end, pseudocount=args.pseudocount, seed=seed)
            runs = {lat: {"c": pc.hclt(train, num_latents=K, num_cats=256, seed=seed, leaf_latents=lat),
                          "secs": [], "train_ll": []} for lat in (True, False)}
            for e in range(sched.total_epochs):
                for r in runs.values():
                    t0 = time.perf_counter()
                    r["train_ll"].append(pc.em_epoch(r["c"], sched, e, train))
                    r["secs"].append(round(time.perf_counter() - t0, 2))
            for lat, r in runs.items():
                c = r["c"]
                print(json.dumps({"leaf_latents": lat, "seed": seed, "num_latents": K, "num_edges": c.num_edges,
                                  "num_params": c.num_params, "seconds_per_epoch": r["secs"],
                                  "train_ll": r["train_ll"],
                                  "valid_bpd": bpd(pc.mean_log_likelihood(c, valid, batch_size=1024)),
                                  "test_bpd": bpd(pc.mean_log_likelihood(c, test, batch_size=1024)),
                                  "threads": torch.get_num_threads()}), flush=True)

if __name__ == "__main__":
    main()
