"""finetune: EM of the whole circuit on x alone (the latents summed out), resumable.

Reads data.h5 (train, valid) and a circuit (images: pc_latent_em.h5; text: the count-initialized
HMM pc_init.h5); writes pc_final.h5 (format lvd.pc). ``epochs`` mini-batch EM epochs with the
step size annealed linearly from ``step_size`` to ``step_size_end`` over all their steps, then
``full_batch_epochs`` full-batch epochs (flows of the whole epoch, one update with step 1.0;
method.md section 2 step 8).

After every epoch the circuit is saved to ``<ckpt-dir>/finetune.h5`` (atomically) with the
epoch count and the history so far; a killed run started again with the same input, data and
config resumes after the last saved epoch and ends with the same parameters as an unkilled
run (epoch e shuffles with a seed derived from (seed, e)). A checkpoint of another input or
config is ignored. The checkpoint is deleted once pc_final.h5 is written.

No fine-tuning: ``epochs: 0`` and ``full_batch_epochs: 0`` (LVD-PG as its authors ran it: the
grown patch circuits frozen, the top trained on their likelihoods) write the input circuit
unchanged, with a history record of no epochs (``"note": "no epochs: ..."``).

Curve: ``--snapshot-dir`` keeps the input circuit (epoch 0) and ``curve_points`` copies taken
during training (lvd.training.Snapshots) for evaluate's bpd-against-seconds curve.

Attributes of the output: ``history`` (the input's history plus this stage's record: train and
valid mean ll per epoch, see lvd.training), ``train_ll``, ``valid_ll``, ``valid_bpd``
(images) or ``valid_perplexity`` (text), ``seconds``.

    python -m lvd.stages.finetune --config '{"epochs": 5}' --data data.h5 --pc k16/pc_latent_em.h5 \
        --out k16/pc_final.h5 --ckpt-dir k16/finetune_ckpt --snapshot-dir k16/pc_final_snapshots
"""

from __future__ import annotations

from dataclasses import dataclass

from lvd import pc, training
from lvd.stages import emstage, inputs

WRITER = "lvd.stages.finetune"


@dataclass(frozen=True)
class Config:
    epochs: int = 5                # mini-batch EM epochs
    full_batch_epochs: int = 1     # then full-batch EM epochs (step 1.0)
    batch_size: int = 256          # examples per mini-batch (and per chunk of a full-batch epoch)
    step_size: float = 0.1         # annealed linearly to step_size_end over all mini-batch steps
    step_size_end: float = 0.01
    pseudocount: float = 0.1
    max_valid: int = 0             # valid rows scored after every epoch (seeded subset); 0 = all
    seed: int = 0                  # shuffling (epoch e uses a seed from (seed, e)), valid subset
    curve_points: int = 3          # snapshots for the bpd-against-seconds curve (besides input and output)

    def __post_init__(self):
        training.check_schedule(self, "finetune")


def run(cfg: Config, data: str, pc_path: str, out: str, ckpt_dir: str | None = None, device="cpu",
        snapshot_dir: str | None = None) -> dict:
    """Fine-tune the circuit in ``pc_path``; returns a summary (also stored as attributes)."""
    c = pc.load(pc_path, device=device)
    return emstage.train_and_save(c, cfg, data, out, source=pc_path, stage="finetune", writer=WRITER,
                                  history=inputs.history_of(pc_path), ckpt_dir=ckpt_dir,
                                  snapshot_dir=snapshot_dir, snapshot_start=True)


def main(argv=None) -> None:
    emstage.stage_main(argv, __doc__, Config, run, "circuit to start from (pc_latent_em.h5; text: pc_init.h5)",
                       "pc_final.h5 to write (format lvd.pc)")


if __name__ == "__main__":
    main()
