"""Data-parallel EM stages (lvd.stages.emstage, docs/scaleout.md): finetune, train_baseline,
train_hclt and latent_top_em run by two CPU processes (gloo, launched by torchrun) write the circuit one process
writes, to float tolerance; process 0 alone writes the output, the snapshots and the log; a
time budget stops both processes after the same epoch; a worker killed mid-training fails the
job, and the job started again resumes from the checkpoint and ends as an unkilled run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pc_fixtures as fx
from lvd import pc
from lvd.pc import kernels
from lvd.stages import (common, finetune, inputs, latent_em, latent_top_em, materialize_pc, train_baseline,
                        train_hclt)

HERE = Path(__file__).parent
REPO = HERE.parents[1]
FCFG = {"epochs": 2, "full_batch_epochs": 1, "batch_size": 64, "curve_points": 2}
BCFG = {"epochs": 2, "full_batch_epochs": 1, "batch_size": 64, "budget": "passes", "seed": 3}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """digits (200 train) -> position-mode latents -> pc_init.h5 (finetune starts from it here)."""
    d = tmp_path_factory.mktemp("dp")
    data = fx.write_digits(d / "data.h5", n_train=200, n_valid=30, n_test=20)
    x = inputs.load_split(data, "train")
    lat = fx.write_latents(d / "latents.h5", fx.kmeans_latents(x.reshape(-1, 8, 8, 1), 2, 4), 4)
    materialize_pc.run(materialize_pc.Config(num_latents=3), data, lat, d / "pc_init.h5")
    return d


def _launch(stage, args, nproc=2, env=None, timeout_s=60):
    """``stage``'s main under torchrun with ``nproc`` CPU processes (the reference kernels)."""
    env = {**os.environ, "LVD_KERNELS": "torch", "OMP_NUM_THREADS": "1", "LVD_DIST_TIMEOUT_S": str(timeout_s),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "--", str(HERE / "dp_worker.py"), stage, *map(str, args), "--device", "cpu", "--threads", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)


def _one_process(module, cfg, *args, **kwargs):
    with kernels.forced("torch"):
        return module.run(module.Config(**cfg), *map(str, args), **kwargs)


def _same_params(a, b, rtol=2e-5, atol=1e-6):
    a, b = pc.load(a), pc.load(b)
    assert sorted(a.params) == sorted(b.params)
    for k, t in a.params.items():
        torch.testing.assert_close(b.params[k], t, rtol=rtol, atol=atol, msg=k)


def test_two_processes_finetune_like_one(run_dir, tmp_path):
    src, data = run_dir / "pc_init.h5", run_dir / "data.h5"
    ref = _one_process(finetune, FCFG, data, src, tmp_path / "one.h5", snapshot_dir=str(tmp_path / "one_snaps"))
    log = tmp_path / "two.log"
    r = _launch("finetune", ["--config", json.dumps(FCFG), "--data", data, "--pc", src, "--out", tmp_path / "two.h5",
                             "--ckpt-dir", tmp_path / "ckpt", "--snapshot-dir", tmp_path / "two_snaps", "--log", log])
    assert r.returncode == 0, r.stderr[-4000:]
    _same_params(tmp_path / "one.h5", tmp_path / "two.h5")
    attrs = pc.load_attrs(tmp_path / "two.h5")
    assert attrs["processes"] == 2 and attrs["valid_ll"] == pytest.approx(ref["valid_ll"], rel=1e-5)
    one, two = inputs.history_of(tmp_path / "one.h5")[-1], inputs.history_of(tmp_path / "two.h5")[-1]
    assert len(two["train_ll"]) == 3 and two["train_ll"] == pytest.approx(one["train_ll"], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "two_snaps").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one_snaps").iterdir())
    assert not (tmp_path / "ckpt").exists()          # removed once, by process 0, after both saved
    text = log.read_text()
    assert "data-parallel EM: process 0 of 2 (gloo)" in text and "finetune epoch 3/3" in text
    assert "[process 1]" not in text                 # process 1 stays quiet unless something goes wrong


def test_two_processes_train_the_controls_like_one(run_dir, tmp_path):
    src, data = run_dir / "pc_init.h5", run_dir / "data.h5"
    for module, stage, cfg in ((train_baseline, "train_baseline", BCFG),
                               (train_hclt, "train_hclt", {**BCFG, "num_latents": 3})):
        _one_process(module, cfg, data, src, tmp_path / f"{stage}_one.h5")
        r = _launch(stage, ["--config", json.dumps(cfg), "--data", data, "--pc", src,
                            "--out", tmp_path / f"{stage}_two.h5"])
        assert r.returncode == 0, r.stderr[-4000:]
        _same_params(tmp_path / f"{stage}_one.h5", tmp_path / f"{stage}_two.h5")


@pytest.mark.parametrize("top, memory_gb", [("tree", 2.0), ("hclt", 0.0)], ids=["tree-top", "hclt-top-spilled"])
def test_two_processes_train_the_top_like_one(run_dir, tmp_path, top, memory_gb):
    """latent_top_em: the patch pass split in chunks between the processes (L in memory), or
    repeated by each into a file of its own (spilled: ``patch_lls_memory_gb: 0``); the top's EM
    split by rows; the result one process's."""
    data, lat = run_dir / "data.h5", run_dir / "latents.h5"
    init = tmp_path / "pc_init.h5"
    materialize_pc.run(materialize_pc.Config(num_latents=3, top=top, top_num_latents=3 if top == "hclt" else 0),
                       data, lat, init)
    latent_em.run(latent_em.Config(epochs=1, batch_size=64), str(data), str(lat), str(init), 0, 1,
                  str(tmp_path / "shard0.h5"))
    cfg = {"epochs": 2, "batch_size": 64, "full_batch_epochs": 1, "patch_lls_memory_gb": memory_gb,
           "next_phases": [{"epochs": 1, "step_size": 0.05, "step_size_end": 0.01}]}
    args = ["--data", data, "--latents", lat, "--pc", init, "--shards", tmp_path / "shard0.h5"]
    with kernels.forced("torch"):
        ref = latent_top_em.run(latent_top_em.Config(**cfg), str(data), str(lat), str(init),
                                [str(tmp_path / "shard0.h5")], str(tmp_path / "one.h5"))
    log = tmp_path / "two.log"
    r = _launch("latent_top_em", ["--config", json.dumps(cfg), *args, "--out", tmp_path / "two.h5", "--log", log],
                env={"DP_CHUNK_BYTES": "200000"})      # several chunks of the 200 training images
    assert r.returncode == 0, r.stderr[-4000:]
    _same_params(tmp_path / "one.h5", tmp_path / "two.h5")
    attrs = pc.load_attrs(tmp_path / "two.h5")
    assert attrs["processes"] == 2 and attrs["patch_lls_on_disk"] == (memory_gb == 0)
    assert attrs["valid_ll"] == pytest.approx(ref["valid_ll"], rel=1e-5)
    one, two = inputs.history_of(tmp_path / "one.h5")[-1], inputs.history_of(tmp_path / "two.h5")[-1]
    assert len(two["train_ll"]) == 4 and two["train_ll"] == pytest.approx(one["train_ll"], rel=1e-5)
    assert not list(tmp_path.glob(".two.h5.*"))                       # no temporary file left behind
    text = log.read_text()
    assert "data-parallel EM: process 0 of 2 (gloo)" in text and "[process 1]" not in text


def test_the_patch_pass_is_split_between_the_processes(run_dir, monkeypatch):
    """Process 1 of 2 computes chunks 1, 3, .. of L and receives every chunk from its owner (the
    group simulated: world() and the broadcast replaced); the chunks it computed are L's."""
    from lvd.pc import distributed

    c = pc.load(run_dir / "pc_init.h5")
    x = inputs.load_split(run_dir / "data.h5", "train")
    rows = latent_top_em.chunk_rows(c, 200000)
    assert rows * 3 <= len(x)                          # several chunks: the two-process test splits
    ref = latent_top_em.patch_lls(c, x, rows)
    computed, sent = [], []
    real = c.latent_lls
    monkeypatch.setattr(c, "latent_lls", lambda xb: computed.append(len(xb)) or real(xb))
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    monkeypatch.setattr(distributed, "broadcast_rows", lambda t, src, device: sent.append((len(t), src)) or t)
    L = latent_top_em.patch_lls(c, x, rows)
    chunks = [min(rows, len(x) - i) for i in range(0, len(x), rows)]
    assert computed == chunks[1::2]
    assert sent == [(n, j % 2) for j, n in enumerate(chunks)]
    for j, i in enumerate(range(0, len(x), rows)):
        if j % 2 == 1:
            torch.testing.assert_close(L[i:i + rows], ref[i:i + rows])


def test_a_time_budget_stops_every_process_after_the_same_epoch(run_dir, tmp_path):
    """process 0's clock is every process's: the two stop together (else one would wait for the
    other's all-reduce until the timeout) and the output records the epochs run."""
    src, data = run_dir / "pc_init.h5", run_dir / "data.h5"
    bench = tmp_path / "lvd.tsv"
    fx.write_benchmark(bench, [12.0])
    cfg = {**BCFG, "budget": "time"}
    r = _launch("train_baseline", ["--config", json.dumps(cfg), "--data", data, "--pc", src,
                                   "--out", tmp_path / "b.h5", "--lvd-benchmarks", bench], timeout_s=30)
    assert r.returncode == 0, r.stderr[-4000:]
    rec = inputs.history_of(tmp_path / "b.h5")[-1]
    attrs = pc.load_attrs(tmp_path / "b.h5")
    assert attrs["budget"] == "time" and attrs["processes"] == 2
    assert rec["budget_seconds"] < 12.0 and rec["epochs_run"] == len(rec["train_ll"])


def test_a_killed_worker_fails_the_job_and_the_rerun_resumes(run_dir, tmp_path):
    src, data = run_dir / "pc_init.h5", run_dir / "data.h5"
    _one_process(finetune, FCFG, data, src, tmp_path / "one.h5")
    args = ["--config", json.dumps(FCFG), "--data", data, "--pc", src, "--out", tmp_path / "two.h5",
            "--ckpt-dir", tmp_path / "ckpt", "--log", tmp_path / "two.log"]
    r = _launch("finetune", args, env={"DP_KILL_AT": "1"}, timeout_s=20)
    assert r.returncode != 0
    assert "SIGKILL" in r.stderr or "Signals.SIGKILL" in r.stderr or "exitcode  : -9" in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "two.h5").exists()
    assert pc.load_attrs(tmp_path / "ckpt" / "finetune.h5")["epoch"] == 1
    r = _launch("finetune", args)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "resuming from" in (tmp_path / "two.log").read_text()
    _same_params(tmp_path / "one.h5", tmp_path / "two.h5")
    assert len(inputs.history_of(tmp_path / "two.h5")[-1]["train_ll"]) == 3


def test_a_checkpoint_only_some_processes_see_is_refused(run_dir, tmp_path):
    """(the processes would resume from different epochs) simulated: process 1's --ckpt-dir is
    its own empty folder while process 0's holds a checkpoint."""
    src, data = run_dir / "pc_init.h5", run_dir / "data.h5"
    c = pc.load(src)
    pc.save(c, tmp_path / "ckpt" / "finetune.h5", epoch=1, record={}, resume_key="x")
    r = subprocess.run([sys.executable, "-c", _SPLIT_CKPT, str(data), str(src), str(tmp_path)],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(HERE)]))})
    assert r.returncode != 0 and "processes see the checkpoint" in r.stderr, r.stderr[-3000:]


# two processes started by hand (torchrun would give both the same arguments)
_SPLIT_CKPT = r"""
import os, subprocess, sys, socket
data, src, tmp = sys.argv[1:]
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
procs = []
for rank, ckpt in ((0, f"{tmp}/ckpt"), (1, f"{tmp}/empty")):
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "LVD_DIST_TIMEOUT_S": "20", "OMP_NUM_THREADS": "1"}
    procs.append(subprocess.Popen([sys.executable, "-m", "lvd.stages.finetune", "--config", '{"epochs": 1}',
                                   "--data", data, "--pc", src, "--out", f"{tmp}/o.h5", "--ckpt-dir", ckpt,
                                   "--device", "cpu"], env=env, stderr=subprocess.PIPE, text=True))
errs = [p.communicate(timeout=200)[1] for p in procs]
sys.stderr.write("".join(errs))
sys.exit(max(p.returncode for p in procs))
"""


def test_launch_environment(monkeypatch):
    """What a process reads before any group exists: its rank (torchrun, srun), and srun's
    rendezvous derived from the job."""
    for k in ("WORLD_SIZE", "RANK", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "MASTER_ADDR",
              "MASTER_PORT"):
        monkeypatch.setenv(k, "")                 # (recorded, so the test's changes are undone)
        monkeypatch.delenv(k)
    assert common.launch_rank() == (0, 1)
    monkeypatch.setenv("SLURM_NTASKS", "4")       # a batch script of a 4-task job: not a launch
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert common.launch_rank() == (0, 1)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")   # one of srun's 4 tasks
    monkeypatch.setenv("SLURM_PROCID", "2")
    assert common.launch_rank() == (2, 4)
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[07-09],cpu01")
    monkeypatch.setenv("PATH", "/nonexistent")               # no scontrol: the list is read here
    common.slurm_rendezvous()
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"] == str(20000 + 1234 * 16)
    monkeypatch.setenv("WORLD_SIZE", "2")                     # torchrun's variables win
    monkeypatch.setenv("RANK", "1")
    assert common.launch_rank() == (1, 2)
    assert common.first_host("node1,node2") == "node1" and common.first_host("n[3,5]") == "n3"
