"""finetune: EM of the whole circuit on x alone (the latents summed out), resumable.

Reads data.h5 (train, valid) and a circuit (images: pc_latent.h5; text: the count-initialized
HMM pc_init.h5); writes pc_final.h5 (format lvd.pc). ``epochs`` mini-batch EM epochs with the
step size annealed linearly from ``step_size`` to ``step_size_end`` over all their steps, then
``full_batch_epochs`` full-batch epochs (flows of the whole epoch, one update with step 1.0;
method.md section 2 step 8).

After every epoch the circuit is saved to ``<ckpt-dir>/finetune.h5`` (atomically) with the
epoch count and the history so far; a killed run started again with the same input, data and
config resumes after the last saved epoch and ends with the same parameters as an unkilled
run (epoch e shuffles with a seed derived from (seed, e)). A checkpoint of another input or
config is ignored. The checkpoint is deleted once pc_final.h5 is written.

Attributes of the output: ``history`` (the input's history plus this stage's record: train and
valid mean ll per epoch, see lvd.stages.pcutil), ``train_ll``, ``valid_ll``, ``valid_bpd``
(images) or ``valid_perplexity`` (text), ``seconds``.

    python -m lvd.stages.finetune --config '{"epochs": 5}' --data data.h5 --pc k16/pc_latent.h5 \
        --out k16/pc_final.h5 --ckpt-dir k16/finetune_ckpt
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from lvd import io, pc
from lvd.stages import common, pcutil

log = logging.getLogger("lvd.finetune")
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

    def __post_init__(self):
        pcutil.check_schedule(self, "finetune")


def split_metrics(c, info: pcutil.DataInfo, mean_ll: float, prefix: str) -> dict:
    """{prefix_ll, prefix_bpd} (images) or {prefix_ll, prefix_perplexity} (text)."""
    if info.kind == "image":
        return {f"{prefix}_ll": mean_ll, f"{prefix}_bpd": pcutil.bpd(mean_ll, info.num_vars)}
    return {f"{prefix}_ll": mean_ll, f"{prefix}_perplexity": pcutil.perplexity(mean_ll, info.seq_len)}


def train_and_save(c, cfg, data: str, out: str, *, source: str, stage: str, writer: str, history: list,
                   ckpt_dir: str | None = None, extra: dict | None = None) -> dict:
    """EM of ``c`` (read from ``source``) on data's train split by cfg's schedule, valid ll per
    epoch; save to ``out``. With ``ckpt_dir``: a per-epoch checkpoint ``<stage>.h5`` there,
    resumed when its key (stage, source, data layout, config) matches, deleted at the end."""
    ckpt = None if ckpt_dir is None else Path(ckpt_dir) / f"{stage}.h5"
    # the same job interrupted: the same input circuit, data (contents), config and code version
    key = pcutil.resume_key(stage, pcutil.fingerprint(source), pcutil.fingerprint(data), cfg, io.code_digest())
    info = pcutil.data_info(data)
    pcutil.check_circuit(c, info, source)
    with common.Timer() as timer:
        x = pcutil.load_split(data, "train")
        xv = pcutil.load_split(data, "valid", cfg.max_valid, cfg.seed)
        log.info("%s: %d train, %d valid rows of %d variables; %d params", stage, len(x), len(xv),
                 info.num_vars, c.num_params)
        valid = lambda t: pc.mean_log_likelihood(t, xv, batch_size=max(cfg.batch_size, 1024))  # noqa: E731
        sched = pcutil.schedule_from(cfg, full_batch_epochs=cfg.full_batch_epochs)
        c, record = pcutil.train(c, x, sched, stage=stage, valid=valid, ckpt=ckpt, resume_key=key,
                                 writer=writer, config=asdict(cfg))
    summary = {"seconds": timer.seconds, "num_params": c.num_params, **(extra or {})}
    if record["train_ll"]:
        summary["train_ll"] = record["train_ll"][-1]
    summary.update(split_metrics(c, info, record["valid_ll"][-1] if record["valid_ll"] else valid(c), "valid"))
    pc.save(c, out, writer=writer, config=asdict(cfg), history=history + [record], **summary)
    log.info("wrote %s in %.1f s: %s", out, timer.seconds,
             ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("valid_")))
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
        if not any(ckpt.parent.iterdir()):      # a finished job leaves no empty checkpoint folder
            ckpt.parent.rmdir()
    return summary


def run(cfg: Config, data: str, pc_path: str, out: str, ckpt_dir: str | None = None, device="cpu") -> dict:
    """Fine-tune the circuit in ``pc_path``; returns a summary (also stored as attributes)."""
    c = pc.load(pc_path, device=device)
    return train_and_save(c, cfg, data, out, source=pc_path, stage="finetune", writer=WRITER,
                          history=pcutil.history_of(pc_path), ckpt_dir=ckpt_dir)


def em_stage_main(argv, doc, config_cls, run_fn, pc_help: str, out_help: str) -> None:
    """The command line of the EM stages (finetune, train_baseline): data, pc, out, ckpt-dir."""
    p = common.parser(doc)
    p.add_argument("--data", required=True, help="data.h5 (format lvd.data)")
    p.add_argument("--pc", required=True, help=pc_help)
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--ckpt-dir", default=None, help="directory for the per-epoch checkpoint (resume)")
    args = p.parse_args(argv)
    cfg = common.load_config(config_cls, args.config)
    device = common.setup(args, seed=cfg.seed)
    run_fn(cfg, args.data, args.pc, args.out, args.ckpt_dir, device=device)


def main(argv=None) -> None:
    em_stage_main(argv, __doc__, Config, run, "circuit to start from (pc_latent.h5; text: pc_init.h5)",
                  "pc_final.h5 to write (format lvd.pc)")


if __name__ == "__main__":
    main()
