"""What the EM stages on x alone share (finetune, train_baseline, train_hclt): one run and one
command line.

    summary = train_and_save(c, cfg, data, out, source=pc_path, stage="finetune", writer=WRITER,
                             history=inputs.history_of(pc_path), ckpt_dir=ckpt_dir)
    stage_main(argv, __doc__, Config, run, pc_help, out_help)     # a stage's main()

``train_and_save`` trains ``c`` on data's train split with the stage Config's schedule
(lvd.training: valid ll after every epoch, a per-epoch checkpoint ``<ckpt_dir>/<stage>.h5``
resumed only by the same job interrupted) and saves it to ``out`` with the history and the
summary as attributes. Every log line goes to the stage's own logger ``lvd.<stage>``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from lvd import fingerprints, metrics, pc, training
from lvd.stages import common, inputs


def split_metrics(info: inputs.DataInfo, mean_ll: float, prefix: str) -> dict:
    """{prefix_ll, prefix_bpd} (images) or {prefix_ll, prefix_perplexity} (text)."""
    if info.kind == "image":
        return {f"{prefix}_ll": mean_ll, f"{prefix}_bpd": metrics.bpd(mean_ll, info.num_vars)}
    return {f"{prefix}_ll": mean_ll, f"{prefix}_perplexity": metrics.perplexity(mean_ll, info.seq_len)}


def train_and_save(c, cfg, data: str, out: str, *, source: str, stage: str, writer: str, history: list,
                   ckpt_dir: str | None = None, extra: dict | None = None) -> dict:
    """EM of ``c`` (read from ``source``) on data's train split by cfg's schedule, valid ll per
    epoch; save to ``out``. With ``ckpt_dir``: a per-epoch checkpoint ``<stage>.h5`` there,
    resumed when its key (stage, source, data contents, config, code version) matches, deleted
    at the end."""
    log = logging.getLogger(f"lvd.{stage}")
    ckpt = None if ckpt_dir is None else Path(ckpt_dir) / f"{stage}.h5"
    # the same job interrupted: the same input circuit, data (contents), config and code version
    key = fingerprints.resume_key(stage, fingerprints.fingerprint(source), fingerprints.fingerprint(data), cfg,
                                  fingerprints.code_digest())
    info = inputs.data_info(data)
    inputs.check_circuit(c, info, source)
    with common.Timer() as timer:
        x = inputs.load_split(data, "train")
        xv = inputs.load_split(data, "valid", cfg.max_valid, cfg.seed)
        log.info("%s: %d train, %d valid rows of %d variables; %d params", stage, len(x), len(xv),
                 info.num_vars, c.num_params)
        valid = lambda t: pc.mean_log_likelihood(t, xv, batch_size=max(cfg.batch_size, 1024))  # noqa: E731
        c, record = training.train(c, x, training.schedule_from(cfg), stage=stage, valid=valid, ckpt=ckpt,
                                   resume_key=key, writer=writer, config=asdict(cfg))
    summary = {"seconds": timer.seconds, "num_params": c.num_params, **(extra or {})}
    if record["train_ll"]:
        summary["train_ll"] = record["train_ll"][-1]
    summary.update(split_metrics(info, record["valid_ll"][-1] if record["valid_ll"] else valid(c), "valid"))
    pc.save(c, out, writer=writer, config=asdict(cfg), history=history + [record], **summary)
    log.info("wrote %s in %.1f s: %s", out, timer.seconds,
             ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("valid_")))
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
        if not any(ckpt.parent.iterdir()):      # a finished job leaves no empty checkpoint folder
            ckpt.parent.rmdir()
    return summary


def stage_main(argv, doc, config_cls, run_fn, pc_help: str, out_help: str) -> None:
    """The command line of the EM stages: --data, --pc, --out, --ckpt-dir, then run_fn."""
    p = common.parser(doc)
    p.add_argument("--data", required=True, help="data.h5 (format lvd.data)")
    p.add_argument("--pc", required=True, help=pc_help)
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--ckpt-dir", default=None, help="directory for the per-epoch checkpoint (resume)")
    args = p.parse_args(argv)
    cfg = common.load_config(config_cls, args.config)
    device = common.setup(args, seed=cfg.seed)
    run_fn(cfg, args.data, args.pc, args.out, args.ckpt_dir, device=device)
