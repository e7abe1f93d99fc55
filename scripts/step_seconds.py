"""Seconds per mini-batch EM step (fine-tuning's step: every parameter, batch 256) of circuit
files on a run's train split, all in one process, each after as many warm-up steps; with the minor
page faults per step and whether denormals are flushed (lvd.runtime; ``LVD_NO_FTZ=1`` keeps
them, so run it once each way to compare).

    python scripts/step_seconds.py results/fashion_mnist_pg_full/data.h5 \\
        results/fashion_mnist_pg_full/k64/lvd/s1/pc_latent_em.h5 results/fashion_mnist_pg_full/k64/hclt/s0.h5
"""

from __future__ import annotations

import argparse
import resource
import time

from lvd import runtime


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="a run's data.h5")
    p.add_argument("pc", nargs="+", help="circuit files (pc_init.h5, pc_latent_em.h5, pc_final.h5, a control's)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    done = runtime.configure_process()
    import torch

    from lvd import pc
    from lvd.pc import kernels
    from lvd.stages import inputs

    torch.set_num_threads(args.threads)
    print(f"{kernels.cpu_model()} ({kernels.vector_isa()}), {args.threads} thread(s), "
          f"denormals flushed: {done['flush_denormal']}", flush=True)
    x = inputs.load_split(args.data, "train")[:args.batch_size * args.steps]
    sched = pc.Schedule(epochs=1, batch_size=args.batch_size, step_size=0.01, seed=0)
    for path in args.pc:
        c = pc.load(path)
        pc.em_epoch(c, sched, 0, x, shuffle=False)          # warm-up: kernel choices, the heap grown
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        pc.em_epoch(c, sched, 0, x, shuffle=False)
        secs = (time.perf_counter() - t0) / args.steps
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / args.steps
        print(f"{path}: {secs:.3f} s/step, {faults:,.0f} page faults/step, {c.num_params:,} params", flush=True)


if __name__ == "__main__":
    main()
