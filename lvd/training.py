"""The one training loop of the EM stages: a Schedule's epochs, validation, checkpoints, history.

    sched = schedule_from(cfg)                   # cfg: a stage Config with the Schedule's fields
    circuit, record = train(circuit, x, sched, stage="finetune", valid=valid, ckpt=path,
                            resume_key=key)

Every epoch is one ``pc.em_epoch`` of the schedule (lvd.pc.schedule: mini-batch epochs with the
step size of global step t from ``Schedule.step_size_at``, then full-batch epochs with step 1;
epoch e shuffles with ``Schedule.epoch_seed(e)``). finetune, train_baseline and train_hclt
(through lvd.stages.emstage) and latent_top_em train with it; latent_em trains its groups with
the same Schedule through ``pc.em_groups``. Log lines go to ``lvd.<stage>``.

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
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from lvd import io, pc

SCHEDULE_FIELDS = tuple(f.name for f in dataclasses.fields(pc.Schedule))


def check_schedule(cfg, section: str) -> None:
    """Raise ValueError naming ``section.<field>`` when an EM setting of a stage Config is out of range."""
    for name in ("epochs", "full_batch_epochs", "batch_size", "second_epochs"):
        if hasattr(cfg, name):
            v = getattr(cfg, name)
            lo = 1 if name == "batch_size" else 0
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{section}.{name} is {v!r}, expected an integer >= {lo}")
    for name in ("step_size", "step_size_end", "second_step_size", "second_step_size_end"):
        if name.startswith("second") and not hasattr(cfg, name):   # (latent_top_em's second phase)
            continue
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
            raise ValueError(f"{section}.{name} is {v!r}, expected a number in (0, 1]")
    if getattr(cfg, "pseudocount", 0) < 0:
        raise ValueError(f"{section}.pseudocount is {cfg.pseudocount!r}, expected >= 0")


def schedule_from(cfg) -> pc.Schedule:
    """The Schedule of a stage Config (every EM section has the Schedule's fields, same names)."""
    return pc.Schedule(**{name: getattr(cfg, name) for name in SCHEDULE_FIELDS})


def train(circuit, x, sched: pc.Schedule, *, stage: str, valid=None, ckpt=None, resume_key: str = "",
          writer: str = "lvd.training", config: dict | None = None, shuffle: bool = True, **arrays):
    """Run ``sched`` on ``circuit`` (EM on x [N, V] and/or ``arrays``); returns (circuit, record).

    valid(circuit) -> mean valid ll, called after every epoch. ckpt: a path for the per-epoch
    checkpoint (see the module docstring); a resumed run returns the loaded circuit. shuffle:
    False keeps the rows in order (their order is already random, e.g. a file of shuffled rows).
    """
    log = logging.getLogger(f"lvd.{stage}")
    record = {"stage": stage, "epochs": sched.epochs, "full_batch_epochs": sched.full_batch_epochs,
              "train_ll": [], "valid_ll": [], "seconds": 0.0}
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
            log.info("%s: resuming from %s after epoch %d/%d", stage, ckpt, start, sched.total_epochs)
        elif attrs:
            log.warning("%s: ignoring checkpoint %s from another input or config", stage, ckpt)
    N = len(x) if x is not None else len(next(a for a in arrays.values() if a is not None))
    nb = sched.num_batches(N)
    for epoch in range(start, sched.total_epochs):
        t0 = time.perf_counter()
        gen = np.random.default_rng(sched.epoch_seed(epoch))
        mean_ll = pc.em_epoch(circuit, sched, epoch, x, gen=gen, shuffle=shuffle, logger=log, **arrays)
        record["train_ll"].append(float(mean_ll))
        if valid is not None:
            record["valid_ll"].append(float(valid(circuit)))
        record["seconds"] += time.perf_counter() - t0
        steps = sched.epoch_step_sizes(epoch, nb)
        log.info("%s epoch %d/%d (%s, step %.4g -> %.4g): train ll %.4f, valid ll %s (%.1f s)",
                 stage, epoch + 1, sched.total_epochs,
                 "full-batch" if sched.is_full_batch(epoch) else "mini-batch", steps[0], steps[-1],
                 record["train_ll"][-1], f"{record['valid_ll'][-1]:.4f}" if record["valid_ll"] else "-",
                 time.perf_counter() - t0)
        if ckpt is not None:
            pc.save(circuit, ckpt, writer=writer, config=config, epoch=epoch + 1, record=record,
                    resume_key=resume_key)
    return circuit, record
