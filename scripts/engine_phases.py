"""Where an EM step's time goes, phase by phase, on the engine as it runs (CPU).

    python scripts/engine_phases.py hclt --num-latents 32
    python scripts/engine_phases.py hmm --num-latents 256
    LVD_NO_FUSED=1 python scripts/engine_phases.py hclt --num-latents 32   # the torch path

Wraps the passes' building blocks with wall-clock timers (the fused kernels, the level
matmuls up and down, the edge flows, the update), runs ``--warmup`` steps and then ``--steps``
EM steps (flows + update, a fresh batch each, as lvd.bench), and prints the mean milliseconds
per step of each phase and the count of calls. A phase nested in another is counted in both
(``upward``, ``downward`` and ``flows`` are totals; a homogeneous HMM's edge flows are one matmul
after the level loop, counted in ``downward`` only). Timers cost a few microseconds a call.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import time

from lvd.runtime import configure_process  # noqa: I001  (first: before torch loads libgomp)

configure_process()

import numpy as np
import torch

from lvd import pc
from lvd.pc import _fused, _fused_update, _gemm, tree, treell

em = importlib.import_module("lvd.pc.em")
TIMES: dict = collections.defaultdict(float)
CALLS: collections.Counter = collections.Counter()


def _wrap(mod, name: str, label: str) -> None:
    if not hasattr(mod, name):
        return
    fn = getattr(mod, name)

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            TIMES[label] += time.perf_counter() - t
            CALLS[label] += 1

    setattr(mod, name, timed)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=["hclt", "hmm"])
    ap.add_argument("--num-latents", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    n = args.batch_size * (args.steps + args.warmup)
    if args.kind == "hclt":
        data = rng.integers(0, 256, (max(n, 2000), 784))
        c = pc.hclt(data, num_latents=args.num_latents, num_cats=256, seed=0, leaf_latents=True)
    else:
        data = rng.integers(0, 33278, (n, 32))
        c = pc.hmm(32, args.num_latents, 33278, homogeneous=True, seed=0)
    for mod, name, label in [(_fused, "up_level", "kernel up_level"), (_fused, "down_level", "kernel down_level"),
                             (_fused_update, "em_update", "kernel em_update (dense)"),
                             (_fused_update, "sparse_step", "kernel sparse_step"),
                             (tree, "_mm", "matmul up (W u)"), (treell, "_mm", "matmul down (r W)"),
                             (_gemm, "mm", "C kernel row products (u W^T, r W)"),
                             (_gemm, "tmm", "C kernel edge flows (r^T u)"),
                             (treell, "_edge_flows", "matmul edge flows (r^T u)"), (em, "update", "update (total)"),
                             (treell, "upward", "upward (total)"), (treell, "_down_fused", "downward fused (total)"),
                             (em, "flows", "flows (total)")]:
        _wrap(mod, name, label)
    x = torch.from_numpy(data)
    steps = []
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            TIMES.clear()
            CALLS.clear()
        b = x[i * args.batch_size:(i + 1) * args.batch_size]
        t = time.perf_counter()
        f, _ = em.flows(c, {"x": b}, sparse=True)
        em.update(c, f, 0.1, 0.1)
        steps.append(time.perf_counter() - t)
    med = float(np.median(steps[args.warmup:]))
    print(f"{args.kind} K={args.num_latents} batch {args.batch_size}: median step {med * 1e3:.1f} ms "
          f"({args.steps} steps, fused kernels {'on' if _fused.usable(torch.zeros(1)) else 'off'}, "
          f"{torch.get_num_threads()} threads)")
    for k, v in sorted(TIMES.items(), key=lambda kv: -kv[1]):
        print(f"  {k:28s} {v / args.steps * 1e3:8.2f} ms  ({CALLS[k] // args.steps} calls per step)")


if __name__ == "__main__":
    main()
