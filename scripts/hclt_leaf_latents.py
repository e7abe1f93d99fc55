"""HCLT with and without latents on the Chow-Liu tree's leaves, on idx images, outside Snakemake.

Trains pc.hclt(leaf_latents=True) (one latent per variable, the default) and
pc.hclt(leaf_latents=False) (a Chow-Liu leaf emits from its parent's latent, PyJuice's HCLT)
with the same mini-batch EM schedule and prints one JSON line per (layout, seed): K x K blocks,
parameters, seconds per epoch, train log-likelihoods and test bits per dimension.

    python scripts/hclt_leaf_latents.py --idx-dir /usr/share/datasets/fashion-mnist --num-latents 32 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lvd import pc
from lvd.data.images import find_idx, read_idx


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idx-dir", required=True, help="directory with train-images-idx3-ubyte.gz and t10k-...")
    p.add_argument("--num-latents", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--step-size", type=float, default=0.1)
    p.add_argument("--step-size-end", type=float, default=0.01)
    p.add_argument("--pseudocount", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train = read_idx(find_idx(args.idx_dir, "train")).reshape(-1, 28 * 28).astype(np.int64)
    test = read_idx(find_idx(args.idx_dir, "test")).reshape(-1, 28 * 28).astype(np.int64)
    for seed in args.seeds:
        for leaf_latents in (True, False):
            c = pc.hclt(train, num_latents=args.num_latents, num_cats=256, seed=seed, leaf_latents=leaf_latents)
            marks = [time.perf_counter()]
            hist = pc.em(c, train, epochs=args.epochs, batch_size=args.batch_size, step_size=args.step_size,
                         step_size_end=args.step_size_end, pseudocount=args.pseudocount, seed=seed,
                         callback=lambda e, ll: marks.append(time.perf_counter()))
            ll = pc.mean_log_likelihood(c, test, batch_size=1024)
            print(json.dumps({"leaf_latents": leaf_latents, "seed": seed, "num_latents": args.num_latents,
                              "num_edges": c.num_edges, "num_params": c.num_params,
                              "seconds_per_epoch": np.diff(marks).round(2).tolist(), "train_ll": hist,
                              "test_ll": ll, "test_bpd": -ll / (train.shape[1] * np.log(2)),
                              "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
