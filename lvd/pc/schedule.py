"""The EM schedule: mini-batch epochs with a linearly annealed step size, then full-batch epochs.

One schedule serves every EM loop of the engine (``pc.em``, ``pc.em_epoch``, ``pc.em_groups``)
and the training loop of the stages (lvd.training)::

    sched = Schedule(epochs=5, full_batch_epochs=1, batch_size=256, step_size=0.1,
                     step_size_end=0.01, pseudocount=0.1, seed=0)
    nb = sched.num_batches(N)                 # mini-batch steps per epoch: ceil(N / batch_size)
    s = sched.step_size_at(t, nb)             # step size of mini-batch step t (0-based)

Mini-batch step t counts over all ``epochs`` mini-batch epochs (t = epoch * nb + j for batch j
of an epoch), and its step size is the one formula of the project:

    step_size + (step_size_end - step_size) * t / max(epochs * nb - 1, 1)

so the first step uses ``step_size``, the last ``step_size_end`` (constant when
``step_size_end`` is None). The ``full_batch_epochs`` that follow accumulate the flows of a
whole epoch and update once with step 1 (exact EM; method.md section 5). Epoch e shuffles with
``epoch_seed(e)``, a seed derived from (seed, e) alone, so a run resumed after epoch e draws
the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FULL_BATCH_STEP = 1.0  # step size of a full-batch epoch: exact EM


@dataclass(frozen=True)
class Schedule:
    epochs: int = 1                     # mini-batch epochs
    full_batch_epochs: int = 0          # then full-batch epochs (one update each, step 1)
    batch_size: int = 512               # examples per mini-batch (and per chunk of a full-batch epoch)
    step_size: float = 0.1              # step size of the first mini-batch step
    step_size_end: float | None = None  # ... of the last one (linear in between); None = constant
    pseudocount: float = 0.1            # EM pseudocount
    seed: int = 0                       # shuffling: epoch e with epoch_seed(e)

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.full_batch_epochs

    def is_full_batch(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) is a full-batch epoch."""
        return epoch >= self.epochs

    def num_batches(self, num_examples: int) -> int:
        """Mini-batch steps per epoch over ``num_examples`` examples."""
        return math.ceil(num_examples / self.batch_size)

    def step_size_at(self, t: int, num_batches: int) -> float:
        """Step size of mini-batch step ``t`` (0 .. epochs * num_batches - 1, counted over all
        mini-batch epochs) when every epoch has ``num_batches`` steps."""
        end = self.step_size if self.step_size_end is None else self.step_size_end
        return self.step_size + (end - self.step_size) * t / max(self.epochs * num_batches - 1, 1)

    def epoch_step_sizes(self, epoch: int, num_batches: int) -> list[float]:
        """The step sizes of every step of epoch ``epoch``: [FULL_BATCH_STEP] for a full-batch epoch."""
        if self.is_full_batch(epoch):
            return [FULL_BATCH_STEP]
        return [self.step_size_at(epoch * num_batches + j, num_batches) for j in range(num_batches)]

    def epoch_seed(self, epoch: int) -> int:
        """The shuffling seed of epoch ``epoch``, derived from (seed, epoch) alone."""
        return derived_seed(self.seed, epoch)


def derived_seed(seed: int, index: int) -> int:
    """A seed derived from (seed, index) alone (numpy's SeedSequence): epoch seeds, group seeds."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
