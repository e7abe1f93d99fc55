"""lvd.devices: one claimed GPU per local process, SLURM's allocation, explicit choices.

Local GPUs are simulated with LVD_FAKE_GPUS; claims run in separate processes, as jobs do.
"""

import fcntl
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest
import torch

from lvd import devices

CHILD = (
    "import logging, sys\n"
    "from lvd import devices\n"
    "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
    "print(f'fake-gpu:{devices.claim()}', flush=True)\n"
    "sys.stdin.read()\n"  # hold the claim until the test closes stdin
)
SELECT_CHILD = CHILD.replace("print(f'fake-gpu:{devices.claim()}', flush=True)",
                             "devices.select('auto'); print(devices.provenance()['device'], flush=True)")


@pytest.fixture
def env(tmp_path, monkeypatch, fresh_devices):
    """A private lock directory, 4 fake GPUs, fast polling, no SLURM."""
    values = {"LVD_DEVICE_LOCK_DIR": str(tmp_path / "locks"), "LVD_FAKE_GPUS": "4",
              "LVD_DEVICE_POLL_SECONDS": "0.05", "LVD_DEVICE_WAIT_SECONDS": "60"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    for k in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(k, raising=False)
    yield dict(os.environ)


class Child:
    def __init__(self, env, code=CHILD):
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def line(self, timeout: float) -> str | None:
        """The device line the child prints once it holds a claim; None if not within timeout."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return None
        return self.proc.stdout.readline().strip()

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stderr(self) -> str:
        return self.proc.stderr.read()


@pytest.fixture
def children():
    made = []
    yield made
    for c in made:
        if c.proc.poll() is None:
            c.proc.kill()
        c.proc.wait()
        for stream in (c.proc.stdin, c.proc.stdout, c.proc.stderr):
            if not stream.closed:
                stream.close()


def _spawn(children, env, n, code=CHILD):
    new = [Child(env, code) for _ in range(n)]
    children.extend(new)
    return new


def test_four_claims_get_four_devices_and_a_fifth_waits(env, children):
    holders = _spawn(children, env, 4, SELECT_CHILD)  # the full select("auto") path
    got = [h.line(30) for h in holders]
    assert sorted(got) == [f"fake-gpu:{i}" for i in range(4)]
    fifth = _spawn(children, env, 1)[0]
    assert fifth.line(2.0) is None, "a fifth claim must wait while four are held"
    freed = got.index("fake-gpu:2")
    holders[freed].finish()  # a normal exit releases the claim
    assert fifth.line(30) == "fake-gpu:2"
    fifth.finish()
    assert "all 4 local GPUs are claimed" in fifth.stderr()


def test_killed_process_releases_its_claim(env, children):
    holders = _spawn(children, env, 4)
    got = [h.line(30) for h in holders]
    victim = got.index("fake-gpu:1")
    os.kill(holders[victim].proc.pid, signal.SIGKILL)
    holders[victim].proc.wait()
    assert _spawn(children, env, 1)[0].line(30) == "fake-gpu:1"


def test_wait_times_out_with_a_clear_error(env, children):
    holders = _spawn(children, env, 4)
    assert all(h.line(30) for h in holders)
    late = subprocess.run([sys.executable, "-c", CHILD], env={**env, "LVD_DEVICE_WAIT_SECONDS": "0.3"},
                          input="", capture_output=True, text=True, timeout=60)
    assert late.returncode != 0
    assert "all 4 local GPUs stay claimed" in late.stderr and "LVD_DEVICE_WAIT_SECONDS" in late.stderr


def _held(path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_in_process_claim_holds_the_lock_file(env, tmp_path):
    assert devices.select("auto") == torch.device("cpu")  # fake GPUs compute on the CPU
    assert devices.provenance()["device"] == "fake-gpu:0"
    assert devices.select("auto") == torch.device("cpu")  # a second select keeps the same claim
    assert devices.provenance()["device"] == "fake-gpu:0"
    lock = tmp_path / "locks" / "gpu0.lock"
    assert _held(lock)
    assert lock.read_text().split()[0] == str(os.getpid())


def test_cpu_claims_nothing(env, tmp_path):
    assert devices.select("cpu") == torch.device("cpu")
    assert devices.provenance()["device"] == "cpu"
    assert not (tmp_path / "locks").exists() or not any(_held(p) for p in (tmp_path / "locks").iterdir())


def test_slurm_allocation_is_used_without_claiming(env, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    dev = devices.select("auto")
    prov = devices.provenance()
    assert prov["slurm_job_id"] == "4242" and prov["cuda_visible_devices"] == "3"
    if torch.cuda.is_available():
        assert dev == torch.device("cuda:0")
    else:
        assert dev == torch.device("cpu") and prov["device"] == "cpu"
    assert not (tmp_path / "locks").exists()


def test_no_gpus_means_cpu(env, monkeypatch):
    monkeypatch.delenv("LVD_FAKE_GPUS")
    if torch.cuda.is_available():
        pytest.skip("a real GPU is visible")
    assert devices.select("auto") == torch.device("cpu")
    assert devices.provenance() | {"host": "h"} == {"host": "h", "device": "cpu", "slurm_job_id": "",
                                                    "cuda_visible_devices": ""}


def test_explicit_and_bad_requests(env, monkeypatch):
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        devices.select("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
            devices.select("cuda:1")
    else:
        n = torch.cuda.device_count()
        assert devices.select(f"cuda:{n - 1}") == torch.device(f"cuda:{n - 1}")
        with pytest.raises(RuntimeError, match="CUDA device"):
            devices.select(f"cuda:{n}")
    monkeypatch.setenv("LVD_FAKE_GPUS", "two")
    with pytest.raises(ValueError, match="LVD_FAKE_GPUS='two'"):
        devices.select("auto")


def test_waiting_claim_logs_and_returns_quickly_when_freed(env, children):
    """The in-process claim API waits, then takes the device freed by another process."""
    holder = _spawn(children, {**env, "LVD_FAKE_GPUS": "1"}, 1)[0]
    assert holder.line(30) == "fake-gpu:0"
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="stay claimed"):
        devices.claim(num=1, wait_seconds=0.3)
    assert 0.25 < time.monotonic() - start < 5
    holder.finish()
    assert devices.claim(num=1, wait_seconds=10) == 0
