"""Progress within a long loop (the batches of an epoch), readable in a terminal and in logs.

    bar = Progress(num_batches, "EM epoch 3/10", log)
    for batch in batches:
        ...
        bar.update(ll=mean_ll)     # named numbers shown beside the count
    bar.close()

A number may be a callable (``ll=lambda: float(total) / seen``): it is called only when the
line or the bar's postfix is written (at most once a second on a terminal), so a loop over
device tensors reads them back rarely instead of at every step.

On a terminal (stderr is a TTY) a tqdm bar is drawn on stderr (after ``delay`` seconds, so
short loops draw nothing) and nothing is logged. Otherwise (Snakemake's log files, SLURM's
output) a plain log line is written every ``EVERY_SECONDS`` (30 s), and at every 10% of the
loop once ``MIN_SECONDS`` (5 s) have passed since the previous line: a loop of a few seconds
logs nothing, a long one at most ten lines plus one per 30 s.
"""

from __future__ import annotations

import logging
import sys
import time

EVERY_SECONDS = 30.0
MIN_SECONDS = 5.0
FRACTION = 0.1


class Progress:
    def __init__(self, total: int, desc: str, logger: logging.Logger, *, stream=None, clock=time.monotonic,
                 delay: float = 2.0):
        self.total, self.desc, self.log, self.clock = max(int(total), 0), desc, logger, clock
        self.done = 0
        self.start = self.last = clock()
        self.next_mark = FRACTION
        stream = sys.stderr if stream is None else stream
        self.bar = None
        if _isatty(stream):
            from tqdm import tqdm

            # a tee of stderr into a log file (lvd.stages.common) exposes the terminal as .stream
            self.bar = tqdm(total=self.total, desc=desc, file=getattr(stream, "stream", stream), leave=False,
                            delay=delay, dynamic_ncols=True)

    def update(self, n: int = 1, **numbers) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            now = self.clock()
            if numbers and now - getattr(self, "_shown", -1e9) >= 1.0:
                self._shown = now
                self.bar.set_postfix({k: f"{_value(v):.4g}" for k, v in numbers.items()}, refresh=False)
            return
        now = self.clock()
        frac = self.done / self.total if self.total else 1.0
        mark = frac >= self.next_mark and now - self.last >= MIN_SECONDS
        if frac >= self.next_mark:
            self.next_mark = (int(frac / FRACTION + 1e-9) + 1) * FRACTION
        if (mark or now - self.last >= EVERY_SECONDS) and self.done < self.total:
            self.last = now
            spent = now - self.start
            rate = self.done / spent if spent > 0 else float("inf")
            extra = "".join(f", {k} {_value(v):.4g}" for k, v in numbers.items())
            self.log.info("%s: %d/%d (%.0f%%), %.1f s, %.3g/s%s", self.desc, self.done, self.total,
                          100 * frac, spent, rate, extra)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _value(v) -> float:
    return v() if callable(v) else v


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
