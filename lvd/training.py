"""The one training loop of the EM stages: a Schedule's epochs, validation, checkpoints, history.

    sched = schedule_from(cfg)                   # cfg: a stage Config with the Schedule's fields
    circuit, record = train(circuit, x, sched, stage="finetune", valid=valid, ckpt=path,
                            resume_key=key)

Every epoch is one ``pc.em_epoch`` of the schedule (lvd.pc.schedule: a list of phases, each
mini-batch epochs with the step size of step t from ``Schedule.step_size_at`` or full-batch
epochs; epoch e of the whole schedule shuffles with ``Schedule.epoch_seed(e)``). finetune,
train_baseline and train_hclt (through lvd.stages.emstage) and latent_top_em (all its phases in
one schedule) train with it; latent_em and grow_patch_pcs train their groups with the same
Schedule through ``pc.em_groups``. Log lines go to ``lvd.<stage>``.

A stage Config gives its schedule by the keys of its section (``schedule_from``): ``epochs``
mini-batch epochs at ``step_size`` -> ``step_size_end``, then the mini-batch phases listed in
``next_phases`` (latent_top_em: ``[{epochs, step_size, step_size_end}, ...]``), then
``full_batch_epochs`` full-batch epochs (step 1), with its ``batch_size``, ``pseudocount`` and
``seed``. ``check_schedule`` checks every phase of that list.

History: every circuit artifact carries the attribute ``history``, a JSON list with one record
per training stage it went through, in order; ``train`` returns its stage's record::

    {"stage": "finetune", "epochs": 5, "full_batch_epochs": 1, "train_ll": [...],
     "valid_ll": [...], "seconds": 12.3}

``train_ll[e]`` is the engine's mean train log-likelihood during epoch e (mini-batch: averaged
while the parameters move; full-batch: at the start of the epoch), ``valid_ll[e]`` the mean
valid log-likelihood after epoch e. Stages append their record to the input's list.

Checkpoints: with ``ckpt``, the circuit is saved there (atomically, format lvd.pc) after every
epoch with the epoch count, the record so far and ``resume_key`` (lvd.fingerprints); a run
finding a checkpoint with its own key resumes after that epoch and ends with exactly the
parameters of an uninterrupted run; a checkpoint with another key is ignored (logged).

Time budget (the controls' ``budget: time``, docs/pc_stages.md "Budgets"): with
``budget_seconds``, the loop reads ``clock`` (injectable; ``time.perf_counter``) around every
epoch and stops after the first epoch that brings ``record["seconds"]`` to the budget or past
it, so a run ends within one epoch of its budget. A schedule that ends earlier goes on with
full-batch epochs (step 1, exact EM: it never lowers the training likelihood) until the budget
is used. Without ``budget_seconds`` the loop runs exactly the schedule's epochs (bit for bit
what it ran before budgets existed). The record then also holds ``budget_seconds`` and
``epochs_run``. A control under a time budget runs epochs its schedule never planned and can
overfit: its stage asks for ``keep_best``, the parameters of its best valid epoch.

Snapshots (the bpd-against-seconds curve): with ``snapshots`` (a ``Snapshots``), the loop hands
it the circuit after every epoch; it keeps a CPU copy of the parameters at the epochs its plan
names (a handful: geometrically spaced epochs, or times under a budget) with the epoch and the
seconds so far, for the stage to save (``Snapshots.save``) and evaluate to score.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from lvd import io, pc
from lvd.pc import distributed

PHASE_KEYS = ("epochs", "step_size", "step_size_end")   # a mini-batch phase in a config section


def config_phases(cfg, section: str) -> list[tuple[str, dict]]:
    """(where, {epochs, step_size, step_size_end}) of every mini-batch phase of a stage Config, in
    order: its own keys (where = ``section``), then each of ``next_phases`` (where =
    ``section.next_phases[i]``). Raises ValueError naming a malformed entry."""
    out = [(section, {k: getattr(cfg, k) for k in PHASE_KEYS})]
    later = getattr(cfg, "next_phases", ())
    if not isinstance(later, (list, tuple)):
        raise ValueError(f"{section}.next_phases is {later!r}, expected a list of {{epochs, step_size, step_size_end}}")
    for i, p in enumerate(later):
        where = f"{section}.next_phases[{i}]"
        if not isinstance(p, dict) or set(p) != set(PHASE_KEYS):
            raise ValueError(f"{where} is {p!r}, expected an object with the keys epochs, step_size, step_size_end")
        out.append((where, p))
    return out


def check_schedule(cfg, section: str) -> None:
    """Raise ValueError naming ``section.<field>`` (or ``section.next_phases[i].<field>``) when an
    EM setting of a stage Config is out of range: every phase of ``config_phases``, the
    full-batch epochs, batch size, pseudocount (and curve_points where the stage has them)."""
    ints = [(f"{section}.{name}", getattr(cfg, name), 1 if name == "batch_size" else 0)
            for name in ("full_batch_epochs", "batch_size", "curve_points") if hasattr(cfg, name)]
    steps = []
    for where, p in config_phases(cfg, section):
        ints.append((f"{where}.epochs", p["epochs"], 0))
        steps += [(f"{where}.{k}", p[k]) for k in ("step_size", "step_size_end")]
    for where, v, lo in ints:
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{where} is {v!r}, expected an integer >= {lo}")
    for where, v in steps:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
            raise ValueError(f"{where} is {v!r}, expected a number in (0, 1]")
    if getattr(cfg, "pseudocount", 0) < 0:
        raise ValueError(f"{section}.pseudocount is {cfg.pseudocount!r}, expected >= 0")


def schedule_from(cfg) -> pc.Schedule:
    """The Schedule of a stage Config (module docstring): its mini-batch phases (``epochs`` at
    ``step_size`` -> ``step_size_end``, then ``next_phases``), then ``full_batch_epochs``."""
    phases = [pc.Phase(p["epochs"], p["step_size"], p["step_size_end"]) for _, p in config_phases(cfg, "")]
    return pc.Schedule(phases=[*phases, pc.Phase.full(cfg.full_batch_epochs)], batch_size=cfg.batch_size,
                       pseudocount=cfg.pseudocount, seed=cfg.seed)


def train(circuit, x, sched: pc.Schedule, *, stage: str, valid=None, ckpt=None, resume_key: str = "",
          writer: str = "lvd.training", config: dict | None = None, shuffle: bool = True,
          budget_seconds: float | None = None, clock=time.perf_counter, snapshots: "Snapshots | None" = None,
          keep_best: bool = False, **arrays):
    """Run ``sched`` on ``circuit`` (EM on x [N, V] and/or ``arrays``); returns (circuit, record).

    valid(circuit) -> mean valid ll, called after every epoch. ckpt: a path for the per-epoch
    checkpoint (see the module docstring); a resumed run returns the loaded circuit. shuffle:
    False keeps the rows in order (their order is already random, e.g. a file of shuffled rows).
    budget_seconds: train until the epochs' seconds (by ``clock``) reach it (module docstring);
    None: the schedule's epochs. snapshots: a Snapshots that keeps copies at its planned epochs.
    keep_best (with ``valid``): the circuit returned has the parameters of the epoch with the
    highest valid ll (``record["best_epoch"]``), as a user with this budget would keep; a run
    resumed from a checkpoint chooses among the epochs after the resume.
    """
    log = logging.getLogger(f"lvd.{stage}")
    record = {"stage": stage, "epochs": sched.epochs, "full_batch_epochs": sched.full_batch_epochs,
              "train_ll": [], "valid_ll": [], "seconds": 0.0}
    if budget_seconds is not None:
        record["budget_seconds"] = float(budget_seconds)
    start = 0
    if ckpt is not None and Path(ckpt).exists():
        try:
            attrs = pc.load_attrs(ckpt)
        except io.ArtifactError as e:
            log.warning("ignoring unreadable checkpoint %s (%s)", ckpt, e)
            attrs = {}
        if attrs and attrs.get("resume_key") == resume_key:
            circuit = pc.load(ckpt, device=circuit.device)
            record, start = attrs["record"], int(attrs["epoch"])
            # the loop seconds of the earlier runs, which this job's benchmark file will not hold
            record["carried_seconds"] = float(record["seconds"])
            log.info("%s: resuming from %s after epoch %d/%d (%.1f s of training carried over)",
                     stage, ckpt, start, sched.total_epochs, record["carried_seconds"])
        elif attrs:
            log.warning("%s: ignoring checkpoint %s from another input or config", stage, ckpt)
    N = len(x) if x is not None else len(next(a for a in arrays.values() if a is not None))
    nb = sched.num_batches(N)
    if snapshots is not None and start == 0:
        snapshots.offer(circuit, 0, 0.0)
    epoch = start
    best = None                                   # keep_best: (valid ll, epoch, parameters on the CPU)
    while _more(epoch, sched, record, budget_seconds):
        t0 = clock()
        mean_ll = pc.em_epoch(circuit, sched, epoch, x, shuffle=shuffle, logger=log, **arrays)  # seeded by epoch
        record["train_ll"].append(float(mean_ll))
        if valid is not None:
            record["valid_ll"].append(float(valid(circuit)))
        took = clock() - t0
        record["seconds"] += took
        epoch += 1
        steps = sched.epoch_step_sizes(epoch - 1, nb)
        log.info("%s epoch %d/%s (%s, step %.4g -> %.4g): train ll %.4f, valid ll %s (%.1f s%s)",
                 stage, epoch, sched.total_epochs if budget_seconds is None else "time",
                 "full-batch" if sched.is_full_batch(epoch - 1) else "mini-batch", steps[0], steps[-1],
                 record["train_ll"][-1], f"{record['valid_ll'][-1]:.4f}" if record["valid_ll"] else "-", took,
                 "" if budget_seconds is None else f"; {record['seconds']:.1f} of {budget_seconds:.1f} s")
        if snapshots is not None:
            snapshots.offer(circuit, epoch, record["seconds"])
        if keep_best and record["valid_ll"] and (best is None or record["valid_ll"][-1] > best[0]):
            best = (record["valid_ll"][-1], epoch, {k: v.detach().to("cpu", copy=True) for k, v in circuit.params.items()})
        if ckpt is not None and distributed.is_main():   # (data-parallel: process 0 writes it)
            pc.save(circuit, ckpt, writer=writer, config=config, epoch=epoch, record=record,
                    resume_key=resume_key)
    if budget_seconds is not None:
        record["epochs_run"] = len(record["train_ll"])
    if best is not None:
        record["best_epoch"] = best[1]
        if best[1] != len(record["train_ll"]):
            set_params(circuit, best[2])
            log.info("%s: keeping epoch %d's parameters (the best valid ll, %.4f; the last epoch's: %.4f)",
                     stage, best[1], best[0], record["valid_ll"][-1])
    if snapshots is not None:
        snapshots.drop_after(len(record["train_ll"]))   # the last epoch's circuit is the stage's output
    return circuit, record


def kept_epoch_values(record: dict) -> dict:
    """The train and valid ll of the epoch whose parameters ``train`` returned: the best valid
    epoch's (``best_epoch``, keep_best), else the last epoch's; keys absent where not recorded."""
    e = record.get("best_epoch", len(record["train_ll"])) - 1
    return {k: record[k][e] for k in ("train_ll", "valid_ll") if 0 <= e < len(record[k])}


def _more(epoch: int, sched: pc.Schedule, record: dict, budget_seconds: float | None) -> bool:
    """Whether the loop runs epoch ``epoch``: the schedule's epochs, or (budget) until its seconds
    are used; past the schedule's end a budget runs full-batch epochs (``is_full_batch``)."""
    if budget_seconds is None:
        return epoch < sched.total_epochs
    return record["seconds"] < budget_seconds


class Snapshots:
    """Copies of a circuit's parameters at a few epochs of one training run (the curve's points).

    plan "epochs": after epochs ceil(E / 2^j), j = 1 .. points (E = the schedule's total epochs);
    plan "time" (a budget of B seconds): after the first epoch whose seconds reach B / 2^j, and
    after epoch E if the run gets that far (the equal-passes point). ``start``: also epoch 0 (the
    circuit handed in, worth scoring when it was trained before, as finetune's input). The last
    epoch's copy is dropped (``drop_after``): the stage's output is that circuit.
    """

    def __init__(self, points: int, total_epochs: int, budget_seconds: float | None = None, start: bool = False):
        self.taken: list[tuple[int, float, dict]] = []     # (epoch, seconds, {param: tensor on the CPU})
        self.start = start
        if budget_seconds is None:
            self.epochs = {math.ceil(total_epochs / 2 ** j) for j in range(1, points + 1)} - {0}
            self.times = []
        else:
            self.epochs = {total_epochs} if points and total_epochs else set()
            self.times = sorted(budget_seconds / 2 ** j for j in range(1, points + 1))

    def offer(self, circuit, epoch: int, seconds: float) -> None:
        """Keep a copy when ``epoch`` (epochs done, ``seconds`` used) is a planned point."""
        due = (epoch == 0 and self.start) or epoch in self.epochs
        while epoch and self.times and seconds >= self.times[0]:
            self.times.pop(0)
            due = True
        if due and (not self.taken or self.taken[-1][0] != epoch):
            self.taken.append((epoch, float(seconds),
                               {k: v.detach().to("cpu", copy=True) for k, v in circuit.params.items()}))

    def drop_after(self, last_epoch: int) -> None:
        self.taken = [t for t in self.taken if t[0] < last_epoch]

    def save(self, folder, circuit, writer: str, **attrs) -> list[Path]:
        """One lvd.pc file per copy, ``<folder>/epoch<e>.h5`` (attributes ``epoch``, ``seconds``:
        the training seconds so far, and ``attrs``); the folder is created, and emptied first."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("epoch*.h5"):
            old.unlink()
        saved, current = [], {k: v.detach().clone() for k, v in circuit.params.items()}
        try:
            for epoch, seconds, params in self.taken:
                set_params(circuit, params)
                path = folder / f"epoch{epoch:05d}.h5"
                pc.save(circuit, path, writer=writer, epoch=epoch, seconds=seconds, **attrs)
                saved.append(path)
        finally:
            set_params(circuit, current)
        return saved


def set_params(circuit, params: dict) -> None:
    """Copy ``params`` ({name: tensor}, names of ``circuit.params``) into the circuit's tables."""
    for k, v in circuit.params.items():
        v.copy_(params[k].to(v.device))


def read_snapshots(folder) -> list[Path]:
    """The snapshot files of a folder written by ``Snapshots.save``, in epoch order ([] if none)."""
    folder = Path(folder)
    return sorted(folder.glob("epoch*.h5")) if folder.is_dir() else []
