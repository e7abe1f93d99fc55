"""The training loop of the EM stages (lvd.training): the Schedule's steps, its log, its checks."""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lvd import pc, training

sys.path.insert(0, str(Path(__file__).parent / "pc"))
from pc_bruteforce import as_t, tree_circuit  # noqa: E402

em_module = importlib.import_module("lvd.pc.em")


def test_the_loops_step_sizes_are_the_schedules_formula(monkeypatch, caplog):
    steps, real = [], em_module.update

    def update(circuit, flow, step_size, pseudocount):
        steps.append(step_size)
        return real(circuit, flow, step_size, pseudocount)

    monkeypatch.setattr(em_module, "update", update)
    X = np.random.default_rng(0).integers(0, 3, (11, 5))
    sched = pc.Schedule(epochs=3, full_batch_epochs=2, batch_size=4, step_size=0.35, step_size_end=0.02, seed=4)
    c = tree_circuit([-1, 0, 0, 1, 1], 3, 3, seed=0)
    with caplog.at_level(logging.INFO):
        c, record = training.train(c, as_t(X), sched, stage="some_stage", valid=lambda t: -1.0)
    nb = 3
    assert steps == [sched.step_size_at(t, nb) for t in range(sched.epochs * nb)] + [1.0, 1.0]
    assert len(record["train_ll"]) == len(record["valid_ll"]) == 5 and record["stage"] == "some_stage"
    assert {r.name for r in caplog.records if not r.name.startswith("lvd.pc.")} == {"lvd.some_stage"}
    assert "some_stage epoch 1/5 (mini-batch, step 0.35 -> " in caplog.text
    assert "some_stage epoch 5/5 (full-batch, step 1 -> 1)" in caplog.text


def test_epoch_e_shuffles_with_the_schedules_seed_of_e():
    """An epoch run alone from the parameters before it equals that epoch of the whole run: what
    makes a resumed run equal an uninterrupted one."""
    X = as_t(np.random.default_rng(1).integers(0, 3, (13, 5)))
    sched = pc.Schedule(epochs=3, batch_size=4, step_size=0.3, step_size_end=0.05, seed=9)
    whole, _ = training.train(tree_circuit([-1, 0, 0, 1, 1], 3, 3, seed=0), X, sched, stage="t")
    part = tree_circuit([-1, 0, 0, 1, 1], 3, 3, seed=0)
    for e in range(sched.epochs):
        pc.em_epoch(part, sched, e, X, gen=np.random.default_rng(sched.epoch_seed(e)))
    for k, t in whole.params.items():
        assert bool((t == part.params[k]).all()), k


@dataclass(frozen=True)
class EMSettings:
    epochs: int = 2
    full_batch_epochs: int = 1
    batch_size: int = 8
    step_size: float = 0.2
    step_size_end: float = 0.01
    pseudocount: float = 0.1
    max_valid: int = 0
    seed: int = 3


def test_schedule_from_a_stage_config_and_its_checks():
    assert training.schedule_from(EMSettings()) == pc.Schedule(epochs=2, full_batch_epochs=1, batch_size=8,
                                                               step_size=0.2, step_size_end=0.01,
                                                               pseudocount=0.1, seed=3)
    training.check_schedule(EMSettings(), "finetune")
    for bad, match in ((dict(epochs=-1), r"finetune\.epochs is -1"), (dict(batch_size=0), r"finetune\.batch_size"),
                       (dict(step_size=1.5), r"finetune\.step_size is 1\.5"), (dict(pseudocount=-1.0), "pseudocount")):
        with pytest.raises(ValueError, match=match):
            training.check_schedule(EMSettings(**bad), "finetune")


@dataclass(frozen=True)
class PhasedSettings(EMSettings):
    next_phases: tuple = ({"epochs": 2, "step_size": 0.05, "step_size_end": 0.02},)


def test_a_config_with_next_phases_gives_one_schedule_of_its_phases(monkeypatch):
    """The phases of a section (latent_top_em's next_phases) make one Schedule: every step size
    from its phase's formula, epoch e of the whole run seeded by (seed, e), the loop's record
    counting the epochs of every phase."""
    sched = training.schedule_from(PhasedSettings())
    assert sched.phases == (pc.Phase(2, 0.2, 0.01), pc.Phase(2, 0.05, 0.02), pc.Phase.full(1))
    assert (sched.epochs, sched.full_batch_epochs, sched.total_epochs) == (4, 1, 5)
    steps, real = [], em_module.update

    def update(circuit, flow, step_size, pseudocount):
        steps.append(step_size)
        return real(circuit, flow, step_size, pseudocount)

    monkeypatch.setattr(em_module, "update", update)
    X = as_t(np.random.default_rng(2).integers(0, 3, (20, 5)))     # batch 8: 3 steps per epoch
    c, record = training.train(tree_circuit([-1, 0, 0, 1, 1], 3, 3, seed=0), X, sched, stage="t")
    first = [0.2 + (0.01 - 0.2) * u / 5 for u in range(6)]
    second = [0.05 + (0.02 - 0.05) * u / 5 for u in range(6)]
    np.testing.assert_allclose(steps, first + second + [1.0], rtol=0, atol=1e-15)
    assert (record["epochs"], record["full_batch_epochs"], len(record["train_ll"])) == (4, 1, 5)
    part = tree_circuit([-1, 0, 0, 1, 1], 3, 3, seed=0)          # epoch by epoch, each seeded by (seed, e)
    for e in range(sched.total_epochs):
        pc.em_epoch(part, sched, e, X, gen=np.random.default_rng(pc.schedule.derived_seed(3, e)))
    for k, t in c.params.items():
        assert bool((t == part.params[k]).all()), k


def test_check_schedule_names_the_phase():
    ok = {"epochs": 1, "step_size": 0.1, "step_size_end": 0.1}
    training.check_schedule(PhasedSettings(), "latent_top_em")
    training.check_schedule(PhasedSettings(next_phases=()), "latent_top_em")
    for bad, match in ((({**ok, "epochs": 1.0},), r"latent_top_em\.next_phases\[0\]\.epochs is 1\.0"),
                       (({**ok, "x": 1},), r"latent_top_em\.next_phases\[0\] is .*keys epochs"),
                       ((ok, ok, {**ok, "step_size": 2}), r"latent_top_em\.next_phases\[2\]\.step_size is 2,"),
                       (({**ok, "step_size_end": 0},), r"next_phases\[0\]\.step_size_end is 0,")):
        with pytest.raises(ValueError, match=match):
            training.check_schedule(PhasedSettings(next_phases=bad), "latent_top_em")
