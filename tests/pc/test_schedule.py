"""The one EM schedule (lvd.pc.schedule): its formula, and every EM loop of the engine using it."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from lvd import pc
from lvd.pc.schedule import FULL_BATCH_STEP, Phase, Schedule, derived_seed
from pc_bruteforce import as_t, tree_circuit

em_module = importlib.import_module("lvd.pc.em")   # the module (pc.em is its function)


def test_step_sizes_run_linearly_from_the_first_to_the_last_mini_batch_step():
    s = Schedule(epochs=3, batch_size=4, step_size=0.5, step_size_end=0.1)
    nb = s.num_batches(10)
    steps = [s.step_size_at(t, nb) for t in range(s.epochs * nb)]
    assert nb == 3 and steps[0] == 0.5 and steps[-1] == pytest.approx(0.1)
    np.testing.assert_allclose(np.diff(steps), (0.1 - 0.5) / 8)
    assert s.epoch_step_sizes(1, nb) == steps[3:6]
    assert Schedule(epochs=2, full_batch_epochs=1).epoch_step_sizes(2, nb) == [FULL_BATCH_STEP]
    assert {Schedule(epochs=2, step_size=0.3).step_size_at(t, 5) for t in range(10)} == {0.3}  # constant
    assert Schedule(epochs=1, step_size=0.3, step_size_end=0.1).step_size_at(0, 1) == 0.3      # one step


def test_epoch_seeds_depend_on_the_seed_and_the_epoch_alone():
    a, b = Schedule(seed=3, epochs=5), Schedule(seed=3, epochs=9, batch_size=7)
    assert [a.epoch_seed(e) for e in range(5)] == [b.epoch_seed(e) for e in range(5)]
    assert len({a.epoch_seed(e) for e in range(5)}) == 5 and a.epoch_seed(0) != Schedule(seed=4).epoch_seed(0)
    assert a.epoch_seed(2) == derived_seed(3, 2)


def _record_steps(monkeypatch) -> list:
    steps, real = [], em_module.update

    def update(circuit, flow, step_size, pseudocount):
        steps.append(step_size)
        return real(circuit, flow, step_size, pseudocount)

    monkeypatch.setattr(em_module, "update", update)
    return steps


def test_em_anneals_with_the_schedules_formula(monkeypatch):
    X = np.random.default_rng(0).integers(0, 3, (10, 5))
    steps = _record_steps(monkeypatch)
    c = tree_circuit([-1, 0, 0, 1, 1], 3, 3, seed=0)
    pc.em(c, as_t(X), epochs=3, batch_size=3, step_size=0.45, step_size_end=0.05, pseudocount=0.1, seed=2)
    sched = Schedule(epochs=3, batch_size=3, step_size=0.45, step_size_end=0.05)
    assert steps == [sched.step_size_at(t, 4) for t in range(12)]          # exactly, step by step
    steps.clear()
    pc.em(c, as_t(X), epochs=2, batch_size=3, step_size=0.7, full_batch=True)
    assert steps == [0.7, 0.7]                                              # one update per epoch


def test_em_epoch_runs_one_epoch_of_a_schedule(monkeypatch):
    X = np.random.default_rng(1).integers(0, 3, (10, 5))
    steps = _record_steps(monkeypatch)
    sched = Schedule(epochs=2, full_batch_epochs=1, batch_size=4, step_size=0.3, step_size_end=0.02)
    c = tree_circuit([-1, 0, 0, 1, 1], 3, 3, seed=0)
    for e in range(sched.total_epochs):
        pc.em_epoch(c, sched, e, as_t(X))
    assert steps == sched.epoch_step_sizes(0, 3) + sched.epoch_step_sizes(1, 3) + [FULL_BATCH_STEP]
    # the same run through pc.em's keywords: the same steps
    ref, calls = tree_circuit([-1, 0, 0, 1, 1], 3, 3, seed=0), list(steps)
    steps.clear()
    pc.em(ref, as_t(X), epochs=2, batch_size=4, step_size=0.3, step_size_end=0.02)
    assert steps == calls[:-1]


def test_em_groups_takes_every_groups_steps_from_the_schedule(monkeypatch):
    tc = tree_circuit([-1, 0, 0], 2, 3, G=2, seed=0)
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, 3, (7, 3)), rng.integers(0, 3, (3, 3))]
    hs = [np.zeros(7, np.int64), np.zeros(3, np.int64)]
    asked, real = [], Schedule.step_size_at

    def step_size_at(self, t, num_batches):
        asked.append((t, num_batches))
        return real(self, t, num_batches)

    monkeypatch.setattr(Schedule, "step_size_at", step_size_at)
    sched = Schedule(epochs=2, full_batch_epochs=1, batch_size=3, step_size=0.4, step_size_end=0.1)
    pc.em_groups(tc, xs, hs, sched)
    big = [(t, 3) for t in range(6)]          # 7 members: 3 steps per epoch, 6 in all
    small = [(t, 1) for t in range(2)]        # 3 members: 1 step per epoch
    assert sorted(a for a in asked if a[1] == 3) == big and sorted(a for a in asked if a[1] == 1) == small
    again = tree_circuit([-1, 0, 0], 2, 3, G=2, seed=0)
    pc.em_groups(again, xs, hs, epochs=2, full_batch_epochs=1, batch_size=3, step_size=0.4, step_size_end=0.1)
    for k, t in tc.params.items():
        assert bool((t == again.params[k]).all()), k                        # keywords = the Schedule
    with pytest.raises(ValueError, match="a schedule and schedule fields"):
        pc.em_groups(tc, xs, hs, sched, epochs=3)


def test_a_schedule_is_a_list_of_phases():
    """One-phase keywords = [Phase(E, a, b), Phase.full(F)]; each mini-batch phase anneals over its
    own steps; a full-batch phase has one step per epoch; past the end, full-batch with step 1."""
    assert Schedule(epochs=2, full_batch_epochs=1, batch_size=4, step_size=0.3, step_size_end=0.1, seed=2) == \
        Schedule(phases=[Phase(2, 0.3, 0.1), Phase.full(1)], batch_size=4, seed=2)
    assert Schedule(epochs=0, full_batch_epochs=2).phases == (Phase.full(2),)          # no empty phases
    s = Schedule(phases=[Phase(2, 0.5, 0.1), Phase.full(1, 0.7), Phase(1, 0.2, 0.1)], batch_size=5)
    nb = s.num_batches(10)
    assert (nb, s.epochs, s.full_batch_epochs, s.total_epochs) == (2, 3, 1, 4)
    assert [s.is_full_batch(e) for e in range(6)] == [False, False, True, False, True, True]
    assert [s.phase_at(e)[0] for e in range(4)] == [0, 0, 2, 3] and s.phase_at(4) is None
    assert s.epoch_step_sizes(0, nb) + s.epoch_step_sizes(1, nb) == [0.5 + (0.1 - 0.5) * u / 3 for u in range(4)]
    assert s.epoch_step_sizes(2, nb) == [0.7] and s.full_batch_step(2) == 0.7
    assert s.epoch_step_sizes(3, nb) == [0.2, 0.1]                 # its own start and end
    assert s.epoch_step_sizes(4, nb) == [FULL_BATCH_STEP] and s.full_batch_step(9) == FULL_BATCH_STEP
    with pytest.raises(ValueError, match="phases and"):
        Schedule(phases=[Phase(1)], epochs=2)
    with pytest.raises(ValueError, match="epochs is -1"):
        Phase(-1)
    with pytest.raises(ValueError, match="one step size"):
        Phase(1, 1.0, 0.5, full_batch=True)


def test_em_runs_a_schedule_of_phases_seeding_epoch_e_with_its_seed(monkeypatch):
    X = np.random.default_rng(3).integers(0, 3, (10, 5))
    sched = Schedule(phases=[Phase(1, 0.4, 0.2), Phase.full(1, 0.5), Phase(1, 0.1)], batch_size=4, seed=7)
    steps = _record_steps(monkeypatch)
    c = tree_circuit([-1, 0, 0, 1, 1], 3, 3, seed=0)
    hist = pc.em(c, as_t(X), schedule=sched)
    assert len(hist) == 3 and steps == pytest.approx([0.4, 0.3, 0.2, 0.5, 0.1, 0.1, 0.1], abs=1e-15)
    ref = tree_circuit([-1, 0, 0, 1, 1], 3, 3, seed=0)      # epoch by epoch, epoch e seeded by (7, e)
    for e in range(3):
        pc.em_epoch(ref, sched, e, as_t(X), gen=np.random.default_rng(derived_seed(7, e)))
    for k, t in c.params.items():
        assert bool((t == ref.params[k]).all()), k
    with pytest.raises(ValueError, match="a schedule and its settings"):
        pc.em(c, as_t(X), schedule=sched, epochs=2)


def test_em_groups_seeds_epoch_e_of_group_g_with_its_seed(monkeypatch):
    """The one rule: group g runs the schedule with its own seed, epoch e shuffling with
    derived_seed(group_seeds[g], e) (full-batch epochs draw nothing)."""
    tc = tree_circuit([-1, 0, 0], 2, 3, G=2, seed=0)
    rng = np.random.default_rng(0)
    xs, hs = [rng.integers(0, 3, (7, 3)), rng.integers(0, 3, (3, 3))], [np.zeros(7, np.int64), np.zeros(3, np.int64)]
    asked, real = [], Schedule.epoch_seed

    def epoch_seed(self, epoch):
        asked.append((self.seed, epoch))
        return real(self, epoch)

    monkeypatch.setattr(Schedule, "epoch_seed", epoch_seed)
    sched = Schedule(phases=[Phase(1, 0.4), Phase.full(1), Phase(1, 0.1)], batch_size=3, seed=99)
    pc.em_groups(tc, xs, hs, sched, group_seeds=[11, 12])
    assert sorted(asked) == [(11, 0), (11, 2), (12, 0), (12, 2)]
