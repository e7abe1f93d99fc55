"""What the EM stages on x alone share (finetune, train_baseline, train_hclt): one run, one
command line, and the controls' settings (``ControlConfig``) and budget (``control_budget``).

    summary = train_and_save(c, cfg, data, out, source=pc_path, stage="finetune", writer=WRITER,
                             history=inputs.history_of(pc_path), ckpt_dir=ckpt_dir)
    stage_main(argv, __doc__, Config, run, pc_help, out_help)     # a stage's main()

``train_and_save`` trains ``c`` on data's train split with the stage Config's schedule
(lvd.training: valid ll after every epoch, a per-epoch checkpoint ``<ckpt_dir>/<stage>.h5``
resumed only by the same job interrupted) and saves it to ``out`` with the history and the
summary as attributes. Every log line goes to the stage's own logger ``lvd.<stage>``.

With ``snapshot_dir``, the copies a ``training.Snapshots`` took (``cfg.curve_points`` of them;
``snapshot_start``: also the input circuit, epoch 0) are saved there as ``epoch<e>.h5`` (format
lvd.pc, attributes ``epoch`` and ``seconds``, the training seconds when taken); evaluate scores
them for the bpd-against-seconds curve. With ``budget_seconds`` (a control under ``budget:
time``: LVD's training seconds for its seed), the clock starts at ``started`` (on the command
line: the process's start, as the job seconds count; so start-up, loading and building count)
and the loop stops within one epoch of the budget; the control keeps its best valid epoch
(lvd.training.train's ``keep_best``: past its schedule it runs epochs nobody tuned, and
overfits on small data).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from lvd import budget, fingerprints, metrics, pc, training
from lvd.stages import common, inputs


@dataclass(frozen=True)
class ControlConfig:
    """The settings of a control trained from scratch (train_baseline, train_hclt: each its own
    section, ``SECTION``, with these keys)."""
    SECTION: ClassVar[str] = "baseline"   # the config section named in errors
    epochs: int = 25               # mini-batch EM epochs (= LVD's passes: train_baseline's docstring)
    full_batch_epochs: int = 1     # then full-batch EM epochs (step 1.0)
    batch_size: int = 256
    step_size: float = 0.1         # annealed linearly to step_size_end over all mini-batch steps
    step_size_end: float = 0.01
    pseudocount: float = 0.1
    max_valid: int = 0             # valid rows scored after every epoch (seeded subset); 0 = all
    seed: int = 1                  # the random parameters (patch tree: seed, top tree: seed + 1), shuffling
    budget: str = "auto"           # passes | time (LVD's training seconds) | auto (images time, text passes)
    curve_points: int = 3          # snapshots for the bpd-against-seconds curve (besides the final circuit)

    def __post_init__(self):
        training.check_schedule(self, self.SECTION)
        if self.budget not in budget.BUDGETS:
            raise ValueError(f"{self.SECTION}.budget is {self.budget!r}, expected one of {list(budget.BUDGETS)}")


def split_metrics(info: inputs.DataInfo, mean_ll: float, prefix: str) -> dict:
    """{prefix_ll, prefix_bpd} (images) or {prefix_ll, prefix_perplexity} (text)."""
    if info.kind == "image":
        return {f"{prefix}_ll": mean_ll, f"{prefix}_bpd": metrics.bpd(mean_ll, info.num_vars)}
    return {f"{prefix}_ll": mean_ll, f"{prefix}_perplexity": metrics.perplexity(mean_ll, info.seq_len)}


def train_and_save(c, cfg, data: str, out: str, *, source: str, stage: str, writer: str, history: list,
                   ckpt_dir: str | None = None, extra: dict | None = None, snapshot_dir: str | None = None,
                   snapshot_start: bool = False, budget_seconds: float | None = None, started: float | None = None,
                   clock=time.perf_counter) -> dict:
    """EM of ``c`` (read from ``source``) on data's train split by cfg's schedule, valid ll per
    epoch; save to ``out``. With ``ckpt_dir``: a per-epoch checkpoint ``<stage>.h5`` there,
    resumed when its key (stage, source, data contents, config, code version) matches, deleted
    at the end. Snapshots and the time budget: the module docstring."""
    log = logging.getLogger(f"lvd.{stage}")
    started = clock() if started is None else started
    ckpt = None if ckpt_dir is None else Path(ckpt_dir) / f"{stage}.h5"
    # the same job interrupted: the same input circuit, data (contents), config and code version
    parts = [stage, fingerprints.fingerprint(source), fingerprints.fingerprint(data), cfg, fingerprints.code_digest()]
    key = fingerprints.resume_key(*parts, *([] if budget_seconds is None else [float(budget_seconds)]))
    info = inputs.data_info(data)
    inputs.check_circuit(c, info, source)
    sched = training.schedule_from(cfg)
    with common.Timer() as timer:
        x = inputs.load_split(data, "train")
        xv = inputs.load_split(data, "valid", cfg.max_valid, cfg.seed)
        log.info("%s: %d train, %d valid rows of %d variables; %d params", stage, len(x), len(xv),
                 info.num_vars, c.num_params)
        valid = lambda t: pc.mean_log_likelihood(t, xv, batch_size=max(cfg.batch_size, 1024))  # noqa: E731
        loop_budget = None
        if budget_seconds is not None:    # the stage's own start-up (loading, building) counts
            loop_budget = max(float(budget_seconds) - (clock() - started), 0.0)
            log.info("%s: time budget %.1f s (LVD's training seconds), %.1f s left for the epochs", stage,
                     budget_seconds, loop_budget)
            if loop_budget == 0:
                log.warning("%s: LVD's %.1f s were used up before the first epoch: the circuit stays untrained",
                            stage, budget_seconds)
        snaps = None
        if snapshot_dir is not None:
            snaps = training.Snapshots(cfg.curve_points, sched.total_epochs, loop_budget, start=snapshot_start)
        c, record = training.train(c, x, sched, stage=stage, valid=valid, ckpt=ckpt, resume_key=key, writer=writer,
                                   config=asdict(cfg), budget_seconds=loop_budget, clock=clock, snapshots=snaps,
                                   keep_best=budget_seconds is not None)
        if snaps is not None:
            saved = snaps.save(snapshot_dir, c, writer=writer, stage=stage)
            log.info("%s: %d snapshot(s) in %s (epochs %s)", stage, len(saved), snapshot_dir,
                     [e for e, _, _ in snaps.taken])
    if not record["train_ll"]:
        record["note"] = "no epochs: the input circuit unchanged"
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


def control_budget(cfg, data: str, lvd_seconds: float | None, stage: str) -> dict:
    """{mode, seconds}: a control's resolved ``budget`` (lvd.budget.resolve) and, under ``time``,
    LVD's training seconds to spend. ``auto`` without LVD's seconds (a stage run by hand) is
    ``passes``; the workflow always hands them over under time."""
    mode = budget.resolve(cfg.budget, inputs.data_info(data).kind)
    if cfg.budget == "auto" and lvd_seconds is None:
        mode = "passes"
    if mode == "time" and lvd_seconds is None:
        raise ValueError(f"{stage}: budget 'time' needs LVD's training seconds of this seed (--lvd-benchmarks: "
                         f"the benchmark files of LVD's training jobs); or set {cfg.SECTION}.budget: passes")
    if mode == "passes" and lvd_seconds is not None:
        logging.getLogger(f"lvd.{stage}").info("%s: budget passes: LVD's %.1f s are not used", stage, lvd_seconds)
    return {"mode": mode, "seconds": lvd_seconds if mode == "time" else None}


def stage_main(argv, doc, config_cls, run_fn, pc_help: str, out_help: str, control: bool = False) -> None:
    """The command line of the EM stages: --data, --pc, --out, --ckpt-dir, --snapshot-dir (and for
    the controls --lvd-benchmarks), then run_fn."""
    started = budget.process_start()     # a control's time budget counts from the process's start
    p = common.parser(doc)
    p.add_argument("--data", required=True, help="data.h5 (format lvd.data)")
    p.add_argument("--pc", required=True, help=pc_help)
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--ckpt-dir", default=None, help="directory for the per-epoch checkpoint (resume)")
    p.add_argument("--snapshot-dir", default=None, help="directory for the curve's snapshots (epoch<e>.h5)")
    if control:
        p.add_argument("--lvd-benchmarks", nargs="*", default=[],
                       help="budget time: the benchmark files of LVD's training jobs of this seed (summed)")
    args = p.parse_args(argv)
    cfg = common.load_config(config_cls, args.config)
    device = common.setup(args, seed=cfg.seed)
    kw = {}
    if control:
        kw = {"lvd_seconds": (float(sum(budget.benchmark_seconds(f) for f in args.lvd_benchmarks))
                              if args.lvd_benchmarks else None), "started": started}
    run_fn(cfg, args.data, args.pc, args.out, args.ckpt_dir, device=device, snapshot_dir=args.snapshot_dir, **kw)
