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

Several processes (data-parallel EM, docs/scaleout.md "One circuit on several processes"): a
stage started by ``torchrun --nproc-per-node N -m lvd.stages.<stage>`` or by ``srun`` with N
tasks joins their group (``join_group``; gloo on CPUs, NCCL on GPUs). Every process loads the
data and the circuit; ``train_and_save`` broadcasts process 0's parameters, and lvd.pc.em_epoch
splits every mini-batch between the processes and sums their flows, so every process applies
the same update. One clock decides for all: the time budget's clock is process 0's, broadcast
at every reading, so all stop after the same epoch. Process 0 alone writes the output, the
snapshots and the log; the per-epoch checkpoint (lvd.training) must be on a filesystem every
process sees (the run refuses to start when the processes disagree on whether it exists), and
a job started again after a failure resumes from it, with any number of processes. A process
that dies makes the launcher stop the others (torchrun, ``srun --kill-on-bad-exit``), or the
others fail at their next collective after lvd.pc.distributed's timeout, with an error naming
the step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch

from lvd import budget, fingerprints, metrics, pc, training
from lvd.pc import distributed
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
    size = distributed.world()[1]
    if size > 1:                  # one clock for all: process 0's readings (module docstring)
        clock = shared_clock(clock, c.device)
        started = clock() if started is None else distributed.broadcast_float(started, c.device)
        distributed.sync_params(c)
    started = clock() if started is None else started
    ckpt = None if ckpt_dir is None else Path(ckpt_dir) / f"{stage}.h5"
    if size > 1 and ckpt is not None:
        check_shared_checkpoint(ckpt, c.device)
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
        # every process has written its last checkpoint before process 0 removes it
        distributed.barrier("the wait for the last epoch's checkpoint", c.device)
        if snaps is not None and distributed.is_main():
            saved = snaps.save(snapshot_dir, c, writer=writer, stage=stage)
            log.info("%s: %d snapshot(s) in %s (epochs %s)", stage, len(saved), snapshot_dir,
                     [e for e, _, _ in snaps.taken])
    if not record["train_ll"]:
        record["note"] = "no epochs: the input circuit unchanged"
    summary = {"seconds": timer.seconds, "num_params": c.num_params, **(extra or {})}
    kept = training.kept_epoch_values(record)    # the saved parameters' epoch (the best valid one under a budget)
    if "train_ll" in kept:
        summary["train_ll"] = kept["train_ll"]
    summary.update(split_metrics(info, kept["valid_ll"] if "valid_ll" in kept else valid(c), "valid"))
    if size > 1:
        summary["processes"] = size
    if not distributed.is_main():     # process 0 writes the output and removes the checkpoint
        return summary
    pc.save(c, out, writer=writer, config=asdict(cfg), history=history + [record], **summary)
    log.info("wrote %s in %.1f s: %s", out, timer.seconds,
             ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("valid_")))
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
        if not any(ckpt.parent.iterdir()):      # a finished job leaves no empty checkpoint folder
            ckpt.parent.rmdir()
    return summary


def shared_clock(clock, device):
    """``clock`` read on process 0 and broadcast: every process sees the same seconds, so a time
    budget stops all of them after the same epoch (each reading is a collective: every process
    reads it at the same points, as lvd.training.train does)."""
    def read() -> float:
        return distributed.broadcast_float(clock() if distributed.is_main() else 0.0, device)
    return read


def check_shared_checkpoint(ckpt: Path, device) -> None:
    """Refuse to start when some processes see the checkpoint and others do not (it is not on a
    filesystem they share): they would resume from different epochs."""
    rank, size = distributed.world()
    seen = int(distributed.sum_scalar(torch.tensor([float(ckpt.exists())], device=device)).item())
    if 0 < seen < size:
        raise RuntimeError(f"data-parallel EM: {seen} of {size} processes see the checkpoint {ckpt} (process "
                           f"{rank} {'does' if ckpt.exists() else 'does not'}); --ckpt-dir must be on a filesystem "
                           "every process sees")


def join_group(device) -> int:
    """Join the group of a launch of several processes (common.launch_rank: torchrun's
    WORLD_SIZE, the tasks of an srun step, for which MASTER_ADDR and MASTER_PORT are derived from
    the job when unset); NCCL on a CUDA ``device``, gloo otherwise. Returns the number of
    processes (1: no group)."""
    if common.launch_rank()[1] <= 1:      # (a batch script's SLURM_NTASKS alone is no launch)
        return 1
    common.slurm_rendezvous()
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(device)     # NCCL's own buffers on this process's GPU, not on cuda:0
    distributed.init_from_env(device)
    rank, size = distributed.world()
    if size > 1:
        logging.getLogger("lvd").info("data-parallel EM: process %d of %d (%s), device %s", rank, size,
                                      torch.distributed.get_backend(), device)
    return size


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


def lvd_seconds_of(benchmark_files, lvd_pc) -> float:
    """LVD's training seconds of one seed for a control's time budget: the summed benchmark files,
    plus the loop seconds that LVD's finetune carried over a resume from its checkpoint
    (``carried_seconds`` of its record; a benchmark file holds a job's last run only), read from
    LVD's pc_final.h5 beside its pc_init.h5 ``lvd_pc`` (the control's --pc) when it is there."""
    total = float(sum(budget.benchmark_seconds(f) for f in benchmark_files))
    final = Path(lvd_pc).with_name("pc_final.h5")
    hist = inputs.history_of(final) if final.exists() else []
    carried = float(hist[-1].get("carried_seconds", 0.0)) if hist else 0.0
    if carried:
        logging.getLogger("lvd").info("LVD's finetune was resumed: %.1f s of its earlier runs (%s) added "
                                      "to the %.1f s of its benchmark files", carried, final, total)
    return total + carried


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
        kw = {"lvd_seconds": lvd_seconds_of(args.lvd_benchmarks, args.pc) if args.lvd_benchmarks else None,
              "started": started}
    join_group(device)
    run_fn(cfg, args.data, args.pc, args.out, args.ckpt_dir, device=device, snapshot_dir=args.snapshot_dir, **kw)
    distributed.leave()     # (after a failure the process just exits: a group with a dead peer may not close)
