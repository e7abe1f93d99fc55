"""How much bfloat16 level matmuls would change the engine's results (an experiment, not a path
the engine offers): an HCLT trained 2 EM epochs on the first 4,000 Fashion-MNIST training
images, then the mean log-likelihood of the next 1,000 and one batch's flows (512 of them),
once with float32 matmuls and once with every level matmul of the passes done in bfloat16
(inputs rounded to bfloat16, products accumulated and returned in float32: torch's CPU bfloat16
matmul).

    python scripts/bf16_matmul_precision.py 32      # K = 32; 128 for K = 128

It swaps the private lvd.pc.tree._mm for the second run (and puts it back), so it measures the
rounding alone, not the speed (the casts cost more than the bfloat16 matmul saves)."""
import argparse
import sys

from lvd.runtime import configure_process  # noqa: I001  (first: before torch loads libgomp)

configure_process()

import numpy as np
import torch

import lvd.pc.tree as tree
import lvd.pc.treell as treell
from lvd import pc
from lvd.data.images import read_idx
from lvd.metrics import bpd

FLOAT32_MM = tree._mm


def bf16_mm(a, b, out=None):
    if a.shape[-1] == 1 and b.shape[-2] == 1:
        return FLOAT32_MM(a, b, out)
    r = torch.matmul(a.bfloat16(), b.bfloat16()).float()
    return out.copy_(r) if out is not None else r


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("num_latents", type=int)
    p.add_argument("--images", default="/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--valid", type=int, default=1000)
    args = p.parse_args(argv)
    x = read_idx(args.images, max_items=args.train + args.valid).reshape(-1, 784).astype(np.int64)
    if len(x) < args.train + args.valid:
        sys.exit(f"{args.images}: {len(x)} images, expected at least --train + --valid = {args.train + args.valid}")
    c = pc.hclt(x[:args.train], num_latents=args.num_latents, num_cats=256, seed=0)
    pc.em(c, x[:args.train], epochs=2, batch_size=512, step_size=0.1, pseudocount=0.1)
    val = torch.from_numpy(x[args.train:args.train + args.valid])

    def run():
        ll = pc.mean_log_likelihood(c, val)
        f, lls = pc.flows(c, {"x": val[:512]})
        return ll, {k: v.to_dense() if v.is_sparse else v for k, v in f.items()}, lls

    ll32, f32, l32 = run()
    tree._mm = treell._mm = bf16_mm
    try:
        ll16, f16, l16 = run()
    finally:
        tree._mm = treell._mm = FLOAT32_MM
    out = {"ll_float32": ll32, "ll_bfloat16": ll16, "bpd_change": bpd(ll16, 784) - bpd(ll32, 784),
           "max_example_change": float((l16 - l32).abs().max()),
           "flows_rel_l1": {k: float((f32[k] - f16[k]).abs().sum() / f32[k].abs().sum()) for k in f32}}
    print(f"K = {args.num_latents}: mean validation log-likelihood float32 {ll32:.4f}, bfloat16 {ll16:.4f}: "
          f"{ll16 - ll32:+.4f} nats (bpd {out['bpd_change']:+.6f}); "
          f"largest per-example difference {out['max_example_change']:.4f} nats")
    for k, v in out["flows_rel_l1"].items():
        print(f"  flows {k}: relative L1 difference {v:.2e}")
    return out


if __name__ == "__main__":
    main()
