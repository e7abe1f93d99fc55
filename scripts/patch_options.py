"""Compare patch-circuit designs on a finished run's data and teacher latents, outside Snakemake.

Runs the PC stages in process (materialize_pc, latent_em, latent_top_em, finetune; the random-latent
arm; the baseline and the size-matched HCLT with LVD's budget) for one (K, num_latents,
heads_per_group) and prints one JSON line of test bpd per arm (mean and std over seeds) and the
parameter count. Needs results/<run>/data.h5 and results/<run>/k<K>/latents.h5 (e.g. from
`snakemake --cores all results/digits/k16/latents.h5`). Writes its circuits under --out.

    python scripts/patch_options.py --run results/digits --num-states 16 --num-latents 2 --heads-per-group 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from lvd.runtime import configure_process  # noqa: I001  (first: before torch loads libgomp)

configure_process()

import numpy as np
import torch

from lvd import metrics, pc
from lvd.stages import (finetune, inputs, latent_em, latent_top_em, materialize_pc, random_latents,
                        train_baseline, train_hclt)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="results/<run> holding data.h5 and k<K>/latents.h5")
    p.add_argument("--num-states", type=int, required=True)
    p.add_argument("--num-latents", type=int, default=2)
    p.add_argument("--heads-per-group", type=int, default=1)
    p.add_argument("--root-states", action="store_true", help="pc.root_states (head h = root state h)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--latent-epochs", type=int, nargs=2, default=[5, 5], help="mini-batch, full-batch")
    p.add_argument("--top-epochs", type=int, default=5)
    p.add_argument("--finetune-epochs", type=int, nargs=2, default=[5, 1], help="mini-batch, full-batch")
    p.add_argument("--out", default="/tmp/lvd-patch-options")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    run, K = Path(a.run), a.num_states
    out = Path(a.out) / f"k{K}_nl{a.num_latents}_h{a.heads_per_group}{'_root' if a.root_states else ''}"
    data, lat = str(run / "data.h5"), str(run / f"k{K}" / "latents.h5")
    xt = inputs.load_split(data, "test")

    def bpd(path):
        return metrics.bpd(pc.mean_log_likelihood(pc.load(path), xt), xt.shape[1])

    le = latent_em.Config(epochs=a.latent_epochs[0], full_batch_epochs=a.latent_epochs[1])
    top = latent_top_em.Config(epochs=a.top_epochs)
    ft = finetune.Config(epochs=a.finetune_epochs[0], full_batch_epochs=a.finetune_epochs[1])
    budget = dict(epochs=sum(a.latent_epochs) + a.top_epochs + a.finetune_epochs[0],
                  full_batch_epochs=a.finetune_epochs[1])
    res: dict[str, list] = {}
    for s in range(a.seeds):
        for arm in ("lvd", "random_latents"):
            d = out / arm / f"s{s}"
            d.mkdir(parents=True, exist_ok=True)
            z = lat
            if arm == "random_latents":
                z = str(d / "latents.h5")
                random_latents.run(lat, z, s)
            materialize_pc.run(materialize_pc.Config(num_latents=a.num_latents, heads_per_group=a.heads_per_group,
                                                     root_states=a.root_states, seed=s), data, z, str(d / "pc_init.h5"))
            latent_em.run(dataclasses.replace(le, seed=s), data, z, str(d / "pc_init.h5"), 0, 1, str(d / "shard0.h5"))
            latent_top_em.run(dataclasses.replace(top, seed=s), data, z, str(d / "pc_init.h5"), [str(d / "shard0.h5")],
                              str(d / "pc_latent_em.h5"))
            finetune.run(dataclasses.replace(ft, seed=s), data, str(d / "pc_latent_em.h5"), str(d / "pc_final.h5"))
            res.setdefault(f"{arm}_before_finetune", []).append(bpd(d / "pc_latent_em.h5"))
            res.setdefault(arm, []).append(bpd(d / "pc_final.h5"))
        init = str(out / "lvd" / f"s{s}" / "pc_init.h5")
        train_baseline.run(train_baseline.Config(**budget, seed=s + 1), data, init, str(out / f"baseline{s}.h5"))
        train_hclt.run(train_hclt.Config(**budget, seed=s + 1), data, init, str(out / f"hclt{s}.h5"))
        res.setdefault("baseline", []).append(bpd(out / f"baseline{s}.h5"))
        res.setdefault("hclt", []).append(bpd(out / f"hclt{s}.h5"))
    summary = {k: [round(float(np.mean(v)), 4), round(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 4)]
               for k, v in res.items()}
    print(json.dumps({"num_states": K, "num_latents": a.num_latents, "heads_per_group": a.heads_per_group,
                      "root_states": a.root_states,
                      "seeds": a.seeds, "num_params": pc.load(out / "lvd" / "s0" / "pc_init.h5").num_params,
                      "hclt_num_latents": pc.load(out / "hclt0.h5").num_latents, "test_bpd": summary}))


if __name__ == "__main__":
    main()
