"""The EM schedule: a list of phases, each mini-batch epochs with a linearly annealed step size,
or full-batch epochs.

One schedule serves every EM loop of the engine (``pc.em``, ``pc.em_epoch``, ``pc.em_groups``)
and the training loop of the stages (lvd.training)::

    sched = Schedule(epochs=5, full_batch_epochs=1, batch_size=256, step_size=0.1,
                     step_size_end=0.01, pseudocount=0.1, seed=0)       # one phase of each kind
    sched = Schedule(phases=[Phase(10, 0.1, 0.01), Phase(10, 0.01, 0.001), Phase.full(1)],
                     batch_size=256, pseudocount=0.1, seed=0)          # LVD-PG's top
    nb = sched.num_batches(N)                 # mini-batch steps per epoch: ceil(N / batch_size)
    s = sched.step_size_at(t, nb)             # step size of step t = epoch * nb + j (0-based)

Epochs are counted over the whole schedule, phase after phase. A mini-batch phase of E epochs
starting at epoch e0 has E * nb steps; its step u = t - e0 * nb (t = epoch * nb + j for batch j
of an epoch) has the step size of the one formula of the project:

    step_size + (step_size_end - step_size) * u / max(E * nb - 1, 1)

so its first step uses ``step_size``, its last ``step_size_end`` (constant when
``step_size_end`` is None). A full-batch epoch accumulates the flows of the whole epoch and
updates once with its phase's ``step_size`` (1 = exact EM; method.md section 5). Epochs past
the schedule's end (a run under a time budget, lvd.training) are full-batch epochs with step 1.

Seeding, one rule for every loop: epoch e of the schedule (whatever its phase) shuffles with
``epoch_seed(e)``, a seed derived from (seed, e) alone, so a run resumed after epoch e draws the
same batches as an uninterrupted one, and a group trained with its own seed (pc.em_groups) draws
the same batches whichever groups share its batch.

``Schedule(epochs=E, full_batch_epochs=F, step_size=a, step_size_end=b)`` is the schedule of
phases ``[Phase(E, a, b), Phase.full(F)]`` (phases of no epochs are dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FULL_BATCH_STEP = 1.0  # step size of a full-batch epoch: exact EM
_UNSET = object()


@dataclass(frozen=True)
class Phase:
    """``epochs`` mini-batch epochs at ``step_size`` -> ``step_size_end`` (linear over the phase's
    steps; constant when None), or (``full_batch``) ``epochs`` full-batch epochs, one update of
    step ``step_size`` each."""
    epochs: int
    step_size: float = 0.1
    step_size_end: float | None = None
    full_batch: bool = False

    def __post_init__(self):
        if not isinstance(self.epochs, (int, np.integer)) or isinstance(self.epochs, bool) or self.epochs < 0:
            raise ValueError(f"Phase: epochs is {self.epochs!r}, expected an integer >= 0")
        if self.full_batch and self.step_size_end is not None:
            raise ValueError("Phase: a full-batch phase has one step size (step_size_end must be None)")

    @classmethod
    def full(cls, epochs: int, step_size: float = FULL_BATCH_STEP) -> "Phase":
        """``epochs`` full-batch epochs with step ``step_size`` (1 = exact EM)."""
        return cls(epochs, step_size, None, True)

    def step_size_at(self, u: int, num_batches: int) -> float:
        """Step size of step ``u`` of this phase (0 .. epochs * num_batches - 1; a full-batch
        phase: its one step size)."""
        if self.full_batch:
            return self.step_size
        end = self.step_size if self.step_size_end is None else self.step_size_end
        return self.step_size + (end - self.step_size) * u / max(self.epochs * num_batches - 1, 1)


@dataclass(frozen=True, init=False)
class Schedule:
    phases: tuple[Phase, ...]           # in order; none of them of 0 epochs
    batch_size: int                     # examples per mini-batch (and per chunk of a full-batch epoch)
    pseudocount: float                  # EM pseudocount
    seed: int                           # shuffling: epoch e of the schedule with epoch_seed(e)

    def __init__(self, epochs=_UNSET, full_batch_epochs=_UNSET, batch_size: int = 512, step_size=_UNSET,
                 step_size_end=_UNSET, pseudocount: float = 0.1, seed: int = 0, *, phases=None):
        """Either ``phases`` (a list of Phase) or the one-phase keywords: ``epochs`` mini-batch
        epochs (default 1) at ``step_size`` (0.1) -> ``step_size_end`` (None: constant), then
        ``full_batch_epochs`` (0) full-batch epochs of step 1."""
        legacy = {k: v for k, v in dict(epochs=epochs, full_batch_epochs=full_batch_epochs, step_size=step_size,
                                         step_size_end=step_size_end).items() if v is not _UNSET}
        if phases is None:
            get = lambda k, default: legacy.get(k, default)  # noqa: E731
            phases = [Phase(get("epochs", 1), get("step_size", 0.1), get("step_size_end", None)),
                      Phase.full(get("full_batch_epochs", 0))]
        elif legacy:
            raise ValueError(f"Schedule: phases and {sorted(legacy)} given; give one or the other")
        phases = tuple(phases)
        for p in phases:
            if not isinstance(p, Phase):
                raise TypeError(f"Schedule: a phase is {p!r}, expected a Phase")
        object.__setattr__(self, "phases", tuple(p for p in phases if p.epochs > 0))
        object.__setattr__(self, "batch_size", batch_size)
        object.__setattr__(self, "pseudocount", pseudocount)
        object.__setattr__(self, "seed", seed)

    @property
    def epochs(self) -> int:
        """Mini-batch epochs, over all phases."""
        return sum(p.epochs for p in self.phases if not p.full_batch)

    @property
    def full_batch_epochs(self) -> int:
        """Full-batch epochs, over all phases."""
        return sum(p.epochs for p in self.phases if p.full_batch)

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def phase_at(self, epoch: int) -> tuple[int, Phase] | None:
        """(the first epoch of its phase, the phase) of epoch ``epoch`` (0-based); None past the end."""
        start = 0
        for p in self.phases:
            if epoch < start + p.epochs:
                return start, p
            start += p.epochs
        return None

    def is_full_batch(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) is a full-batch epoch (every epoch past the end is)."""
        at = self.phase_at(epoch)
        return at is None or at[1].full_batch

    def num_batches(self, num_examples: int) -> int:
        """Mini-batch steps per epoch over ``num_examples`` examples."""
        return math.ceil(num_examples / self.batch_size)

    def step_size_at(self, t: int, num_batches: int) -> float:
        """Step size of step ``t`` = epoch * num_batches + j of the schedule when every epoch has
        ``num_batches`` steps (a full-batch epoch: its one update's; past the end: 1)."""
        at = self.phase_at(t // num_batches)
        if at is None or at[1].full_batch:
            return self.full_batch_step(t // num_batches)
        start, phase = at
        return phase.step_size_at(t - start * num_batches, num_batches)

    def full_batch_step(self, epoch: int) -> float:
        """The step size of the one update of full-batch epoch ``epoch`` (past the end: 1)."""
        at = self.phase_at(epoch)
        return FULL_BATCH_STEP if at is None else at[1].step_size

    def epoch_step_sizes(self, epoch: int, num_batches: int) -> list[float]:
        """The step sizes of every step of epoch ``epoch``: one for a full-batch epoch."""
        first = epoch * num_batches
        if self.is_full_batch(epoch):
            return [self.step_size_at(first, num_batches)]
        return [self.step_size_at(first + j, num_batches) for j in range(num_batches)]

    def epoch_seed(self, epoch: int) -> int:
        """The shuffling seed of epoch ``epoch``, derived from (seed, epoch) alone."""
        return derived_seed(self.seed, epoch)


def derived_seed(seed: int, index: int) -> int:
    """A seed derived from (seed, index) alone (numpy's SeedSequence): epoch seeds, group seeds."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
