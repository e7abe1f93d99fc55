"""lvd.progress: log lines off a terminal (every 10% after 5 s, or every 30 s), tqdm on one."""

import io as stdio
import logging

import numpy as np

from lvd import pc, progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Terminal(stdio.StringIO):
    def isatty(self):
        return True


def test_log_lines_every_tenth_after_min_seconds(caplog):
    clock, log = Clock(), logging.getLogger("test.progress")
    with caplog.at_level("INFO", logger="test.progress"):
        bar = progress.Progress(100, "epoch 1/2", log, stream=stdio.StringIO(), clock=clock)
        for i in range(100):
            clock.t += 1.0  # one second a batch: a 10% mark every 10 s
            bar.update(loss=2.0)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 9  # 10%, ..., 90% (the end is the caller's own epoch line)
    assert lines[0] == "epoch 1/2: 10/100 (10%), 10.0 s, 1/s, loss 2"


def test_quick_loops_log_nothing_and_slow_batches_every_30_s(caplog):
    clock, log = Clock(), logging.getLogger("test.progress")
    with caplog.at_level("INFO", logger="test.progress"):
        bar = progress.Progress(1000, "quick", log, stream=stdio.StringIO(), clock=clock)
        for _ in range(1000):
            clock.t += 0.001  # a one-second loop
            bar.update()
        assert caplog.records == []
        bar = progress.Progress(4, "slow", log, stream=stdio.StringIO(), clock=clock)
        clock.t += 31
        bar.update()  # 25%, 31 s
        clock.t += 31
        bar.update()  # 50%, another 31 s
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["slow: 1/4 (25%)", "slow: 2/4 (50%)"]


def test_a_terminal_gets_a_bar_and_no_log_lines(caplog):
    term, log = Terminal(), logging.getLogger("test.progress")
    with caplog.at_level("INFO", logger="test.progress"):
        with progress.Progress(50, "epoch 1/1", log, stream=term, delay=0) as bar:
            for _ in range(50):
                bar.update(loss=1.5)
    assert caplog.records == [] and "epoch 1/1:" in term.getvalue() and "/50 [" in term.getvalue()


def test_em_reports_progress_within_an_epoch(caplog, monkeypatch):
    monkeypatch.setattr(progress, "MIN_SECONDS", 0.0)
    X = np.random.default_rng(0).integers(0, 3, (200, 5))
    c = pc.hclt(X, num_latents=3, num_cats=3, seed=0)
    with caplog.at_level("INFO", logger="lvd.pc.em"):
        pc.em(c, X, epochs=1, batch_size=20)
    text = caplog.text
    assert "EM epoch 1/1: 1/10 (10%)" in text and "EM epoch 1/1: 9/10 (90%)" in text and ", ll -" in text
