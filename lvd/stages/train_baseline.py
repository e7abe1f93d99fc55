"""train_baseline: the same circuit, randomly initialized, trained by EM on x alone.

Reads data.h5 (train, valid) and pc_init.h5 for its structure and sizes only (the patch and
top trees of an LVD circuit, or the HMM); every parameter is re-drawn at random with ``seed``
(method.md section 2 step 9). Then the same EM as finetune: ``epochs`` mini-batch epochs
(step size annealed linearly from ``step_size`` to ``step_size_end``) and ``full_batch_epochs``
full-batch epochs. Writes baseline.h5 (format lvd.pc) with the same attributes as pc_final.h5.

Budget: set the epochs equal to the LVD pipeline's passes over the training set (the
workflow's ``epochs: auto``, lvd_budget in workflow/rules/common.smk):
    images: epochs = latent_em.epochs + latent_em.full_batch_epochs + latent_top_em.epochs
                     + the epochs of latent_top_em.next_phases + latent_top_em.full_batch_epochs + finetune.epochs
    text:   epochs = finetune.epochs
    full_batch_epochs = finetune.full_batch_epochs
(every pass of EM counts as an epoch, whichever part of the circuit it trains; a patch-head or
top-tree epoch costs the LVD pipeline less than a whole-circuit epoch, so this favours the
baseline). The baseline shares the top tree's structure, which materialize_pc built from the
teacher's latents (Chow-Liu over z), and with ``pc.patch_tree: group`` (LVD-PG) the patch
trees built from the teacher's clusters: a structural head start the baseline keeps.

Budget (``budget``; docs/pc_stages.md, "Budgets: equal passes and equal time"): ``passes``
trains exactly the schedule above; ``time`` trains until the job has used LVD's training seconds
for the same seed (the summed seconds of LVD's jobs, read from the benchmark files given as
``--lvd-benchmarks``): the clock starts when the stage starts, is read after every epoch, and the
run stops after the epoch that reaches the budget (so within one epoch of it); a schedule that
ends sooner goes on with full-batch epochs. ``auto``: time for images, passes for text (and
for a run without ``--lvd-benchmarks``). The output records ``budget`` and ``lvd_seconds``.

Curve: ``--snapshot-dir`` keeps ``curve_points`` copies of the circuit taken during training
(lvd.training.Snapshots), which evaluate scores on valid and test for the bpd-against-seconds
curve.

Optional ``--ckpt-dir``: per-epoch checkpoint and resume, as in finetune.

    python -m lvd.stages.train_baseline --config '{"epochs": 25, "budget": "passes"}' --data data.h5 \
        --pc k16/pc_init.h5 --out k16/baseline.h5 --snapshot-dir k16/baseline_snapshots
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import ClassVar

from lvd import pc
from lvd.stages import emstage

log = logging.getLogger("lvd.train_baseline")
WRITER = "lvd.stages.train_baseline"


@dataclass(frozen=True)
class Config(emstage.ControlConfig):
    """The controls' EM settings (lvd.stages.emstage.ControlConfig), section ``baseline``."""
    SECTION: ClassVar[str] = "baseline"   # the config section named in errors


def run(cfg: Config, data: str, pc_path: str, out: str, ckpt_dir: str | None = None, device="cpu",
        snapshot_dir: str | None = None, lvd_seconds: float | None = None, started: float | None = None,
        clock=time.perf_counter) -> dict:
    """Train the randomly initialized circuit; returns a summary (also stored as attributes).

    lvd_seconds: LVD's training seconds for this seed (budget time); started: the ``clock``
    reading when the stage started (default: now)."""
    started = clock() if started is None else started
    b = emstage.control_budget(cfg, data, lvd_seconds, "train_baseline")
    c = pc.random_like(pc.load(pc_path, device=device), cfg.seed)
    log.info("random parameters with seed %d for the structure of %s", cfg.seed, pc_path)
    return emstage.train_and_save(c, cfg, data, out, source=pc_path, stage="train_baseline", writer=WRITER,
                                  history=[], ckpt_dir=ckpt_dir, snapshot_dir=snapshot_dir,
                                  budget_seconds=b["seconds"], started=started, clock=clock,
                                  extra={"budget": b["mode"], "lvd_seconds": b["seconds"] or 0.0})


def main(argv=None) -> None:
    emstage.stage_main(argv, __doc__, Config, run, "pc_init.h5: the structure to copy (its parameters are not used)",
                       "baseline.h5 to write (format lvd.pc)", control=True)


if __name__ == "__main__":
    main()
