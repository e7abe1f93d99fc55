"""Data-parallel EM (lvd.pc.distributed): two CPU processes over gloo, launched by torchrun,
against one process, on an HCLT, an HMM (and a batch smaller than the group) and an LVD
circuit: a mini-batch epoch then a full-batch epoch give the same tables and lls to float
tolerance; a worker that dies makes the other fail with a clear error instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lvd.pc import distributed

from dist_cases import CASES, train

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def engine_path():
    """(Overrides conftest's: the workers run the default path; so does the reference here.)"""
    yield


def _torchrun(case, out, timeout_s=300):
    """torchrun with two workers. The collectives' timeout is generous: a worker compiling the
    numba kernels from a cold cache, or measuring them (lvd.pc.kernels), under a loaded machine
    keeps the other waiting at its first all-reduce for tens of seconds (seen: a 30 s timeout
    tripped in a full test run, and gloo aborted the waiting worker)."""
    env = {**os.environ, "LVD_DIST_TIMEOUT_S": str(timeout_s), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--standalone", str(HERE / "dist_worker.py"), case, str(out)],
                          capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Every case trained by two processes (one torchrun launch): {case: npz}."""
    out = tmp_path_factory.mktemp("dist")
    r = _torchrun("all", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return {case: np.load(out / f"{case}.npz") for case in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_train_like_one(two_processes, case):
    got = two_processes[case]
    assert int(got["world"]) == 2
    want, lls = train(case)                      # one process, no group
    np.testing.assert_allclose(got["lls"], lls, rtol=1e-5)
    for k, v in want.items():
        np.testing.assert_allclose(got[k.replace(".", "/")], v, rtol=2e-5, atol=1e-6, err_msg=k)


def test_a_dead_worker_fails_the_job_with_a_clear_error(tmp_path):
    r = _torchrun("die", tmp_path, timeout_s=10)
    assert r.returncode != 0
    assert "data-parallel EM" in r.stderr and "process 0 of 2" in r.stderr


def test_one_process_is_untouched():
    assert distributed.world() == (0, 1) and distributed.is_main()
    f = {"a": torch.ones(2)}
    assert distributed.sum_flows(f) is f and distributed.agree(True)


def test_a_group_without_a_rendezvous_address_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="2 processes asked for .* MASTER_ADDR is not set"):
        distributed.init_from_env()


def test_local_rows_split_a_batch_without_overlap():
    rows = np.arange(10, 17)
    parts = [distributed.local_rows(rows, r, 3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == rows.tolist()
    assert [len(p) for p in parts] == [3, 2, 2]
