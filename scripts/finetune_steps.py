"""How fine-tuning's first epochs treat the head start: mini-batch EM from a pc_latent_em.h5 at a
given step size and batch size, valid bpd after every epoch (one JSON line). The epochs follow
finetune's schedule (lvd.pc.Schedule: the step size annealed linearly over all their steps,
epoch e shuffled with the schedule's seed of e).

Per-state patch circuits see about batch_size / K patches of each state per step; with 256
grey levels a small batch gives each state's leaves a sparse, noisy estimate, and a large step
then throws away what latent_em fitted. This script measures that trade-off.

    python scripts/finetune_steps.py --pc results/fashion_mnist/k16/lvd/s0/pc_latent_em.h5 \
        --data results/fashion_mnist/data.h5 --step 0.1 0.01 --batch-size 2048
"""

from __future__ import annotations

import argparse
import json

from lvd.runtime import configure_process  # noqa: I001  (first: before torch loads libgomp)

configure_process()

import torch

from lvd import metrics, pc
from lvd.stages import inputs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pc", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--step", type=float, nargs=2, default=[0.1, 0.01], help="first and last step size")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-train", type=int, default=20000, help="first rows of the train split used")
    p.add_argument("--max-valid", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    x = inputs.load_split(a.data, "train")[:a.max_train]
    xv = inputs.load_split(a.data, "valid", a.max_valid, 0)
    c = pc.load(a.pc)
    bpd = [metrics.bpd(pc.mean_log_likelihood(c, xv), xv.shape[1])]
    sched = pc.Schedule(epochs=a.epochs, batch_size=a.batch_size, step_size=a.step[0], step_size_end=a.step[1])
    for e in range(a.epochs):
        pc.em_epoch(c, sched, e, x)
        bpd.append(metrics.bpd(pc.mean_log_likelihood(c, xv), xv.shape[1]))
    print(json.dumps({"step": a.step, "batch_size": a.batch_size, "valid_bpd": [round(v, 4) for v in bpd]}))


if __name__ == "__main__":
    main()
