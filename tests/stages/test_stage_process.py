"""What a stage's own process does (lvd.stages.common): failures and config errors in its
--log, SIGTERM as an exception that removes temporaries, stale temporaries removed on start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lvd.stages import assign_latents, common, prepare_data

REPO = Path(__file__).resolve().parents[2]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), e.get("PYTHONPATH", "")) if p)
    return e


def stage(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"lvd.stages.{name}", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if common.TEMPORARY.match(p.name))


# ------------------------------------------------------------------- errors in the log
def test_a_failure_and_its_traceback_go_to_the_log(tmp_path):
    log = tmp_path / "logs" / "materialize_pc.log"
    proc = stage("materialize_pc", "--data", "missing.h5", "--latents", "missing_latents.h5",
                 "--out", "pc_init.h5", "--device", "cpu", "--log", str(log), cwd=tmp_path)
    assert proc.returncode == 1
    text = log.read_text()
    assert "materialize_pc failed: ArtifactError: missing.h5: file not found" in text
    assert "Traceback (most recent call last)" in text
    assert text.count("Traceback") == 1 and proc.stderr.count("Traceback") == 1  # once each


def test_a_config_error_is_one_line_naming_the_section(tmp_path):
    log = tmp_path / "a.log"
    proc = stage("assign_latents", "--config", '{"mode": "both"}', "--embeddings", "e.h5", "--out", "l.h5",
                 "--log", str(log), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "--config: config section 'latents' (stage assign_latents): latents.mode is 'both', "
        "expected one of ('position', 'shared', 'clusters')"]
    assert "config section 'latents'" in log.read_text() and "__main__" not in proc.stderr
    proc = stage("finetune", "--config", '{"epoch": 3}', "--data", "d.h5", "--pc", "p.h5", "--out", "o.h5",
                 "--log", str(log), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "__main__" not in proc.stderr
    assert "unknown key(s) ['epoch'] in config section 'finetune' (stage finetune)" in proc.stderr
    assert "unknown key(s) ['epoch']" in log.read_text()


def test_a_usage_error_goes_to_the_log(tmp_path):
    log = tmp_path / "u.log"
    proc = stage("prepare_data", "--log", str(log), cwd=tmp_path)  # --out missing
    assert proc.returncode == 2
    assert "the following arguments are required: --out" in log.read_text()


def test_floats_for_integer_fields_are_refused():
    with pytest.raises(SystemExit, match=r"key 'niter' of config section 'latents' \(stage assign_latents\) "
                                         r"is 2\.0, expected an integer \(write 2\)"):
        common.load_config(assign_latents.Config, '{"niter": 2.0}')
    with pytest.raises(SystemExit, match=r"'max_points_per_centroid'.* is 2\.5, expected an integer"):
        common.load_config(assign_latents.Config, {"max_points_per_centroid": 2.5})
    assert common.load_config(assign_latents.Config, {"niter": 2, "max_points_per_centroid": None}).niter == 2


QUIET_FAISS = """
from lvd.stages import common
p = common.parser(None)
args = p.parse_args()
common.setup(args)
import faiss
common.log.info("faiss %s loaded", faiss.__version__)
"""


def test_a_stage_log_has_no_faiss_loader_lines(tmp_path):
    """faiss's loader reports the SIMD builds it could not load as INFO lines with an exception
    text; a rule's log keeps the stage's own lines only."""
    pytest.importorskip("faiss")
    log = tmp_path / "f.log"
    proc = subprocess.run([sys.executable, "-c", QUIET_FAISS, "--device", "cpu", "--log", str(log)], env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = log.read_text()
    assert "faiss" in text and "loaded" in text
    assert "faiss.loader" not in text and "ModuleNotFoundError" not in text


# ------------------------------------------------------------------- SIGTERM and temporaries
HOLD_A_TEMPORARY = """
import sys, time
from lvd import io
from lvd.stages import common
p = common.parser(None)
p.add_argument("--out")
args = p.parse_args()
common.setup(args)
with io.atomic_path(args.out) as tmp:
    tmp.write_text("half written")
    print("ready", flush=True)
    time.sleep(120)
"""


def test_sigterm_removes_the_temporary_being_written(tmp_path):
    log = tmp_path / "s.log"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_A_TEMPORARY, "--out", str(tmp_path / "x.h5"),
                             "--device", "cpu", "--log", str(log)], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert temporaries(tmp_path) == [f".x.h5.tmp-{proc.pid}"]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert temporaries(tmp_path) == [] and not (tmp_path / "x.h5").exists()
    assert "received SIGTERM" in log.read_text()


def test_sigterm_of_a_training_stage_leaves_no_temporaries(tmp_path):
    data = tmp_path / "r" / "data.h5"
    prepare_data.main(["--config", json.dumps({"dataset": "digits", "max_train": 200, "max_test": 40}),
                       "--out", str(data), "--device", "cpu"])
    log = tmp_path / "logs" / "train_teacher.log"
    cfg = json.dumps({"epochs": 100000, "batch_size": 16, "dim": 8, "latent_dim": 4, "codebook_size": 8})
    proc = subprocess.Popen([sys.executable, "-m", "lvd.stages.train_teacher", "--config", cfg, "--data", str(data),
                             "--out", str(tmp_path / "r" / "teacher.pt"), "--metrics",
                             str(tmp_path / "r" / "teacher_metrics.json"), "--ckpt-dir", str(tmp_path / "r" / "ckpt"),
                             "--device", "cpu", "--threads", "1", "--log", str(log)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (log.exists() and "epoch 2/" in log.read_text()):  # a couple of checkpoints written
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text() if log.exists() else ""
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert temporaries(tmp_path) == []
    assert "received SIGTERM" in log.read_text()
    assert not (tmp_path / "r" / "teacher.pt").exists()


def test_stale_temporaries_of_dead_processes_are_removed_on_start(tmp_path):
    out = tmp_path / "r" / "data.h5"
    out.parent.mkdir()
    gone, alive = dead_pid(), os.getppid()
    stale = [out.parent / f".data.h5.tmp-{gone}", out.parent / f".data.h5.lls-{gone}.h5"]
    kept = [out.parent / f".data.h5.tmp-{alive}",      # its writer still runs
            out.parent / f".other.h5.tmp-{gone}"]      # not this stage's output
    for p in stale + kept:
        p.write_bytes(b"x" * 100)
    log = tmp_path / "p.log"
    prepare_data.main(["--config", json.dumps({"dataset": "digits", "max_train": 60, "max_test": 20}),
                       "--out", str(out), "--device", "cpu", "--log", str(log)])
    assert [p.exists() for p in stale] == [False, False]
    assert [p.exists() for p in kept] == [True, True]
    assert f"removed stale temporary {stale[0]}" in log.read_text()


def test_stale_temporaries_in_output_folders(tmp_path):
    ckpt = tmp_path / "teacher_ckpt"
    ckpt.mkdir()
    gone = dead_pid()
    (ckpt / f".last.pt.tmp-{gone}").write_bytes(b"x")
    (ckpt / "last.pt").write_bytes(b"x")
    removed = common.remove_stale_temporaries([], [ckpt])
    assert removed == [ckpt / f".last.pt.tmp-{gone}"] and (ckpt / "last.pt").exists()
