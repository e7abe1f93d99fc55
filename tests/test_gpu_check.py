"""scripts/gpu_check.sh (the GPU check of ../shared/device/README.md as one command), its CPU
side: the --cpu-smoke path copies the prepared folder, installs the PyJuice wheel without the
network, selects the CUDA tests (all skip here) and runs pc_side_by_side.py on the CPU at toy
sizes. PyJuice's own parameter check needs Triton (its interpreter on the CPU): skipped without."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
DEVICE_DIR = Path(os.environ.get("LVD_DEVICE_DIR", ROOT.parent / "shared" / "device"))

needs_folder = pytest.mark.skipif(not (DEVICE_DIR / "pc_side_by_side.py").exists(),
                                  reason=f"no prepared GPU-check folder at {DEVICE_DIR}")


def _run(tmp_path, *args):
    env = {**os.environ, "GPUBENCH": str(tmp_path / "bench"), "OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable, "LVD_DEVICE_DIR": str(DEVICE_DIR)}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=600)


def _lines(tmp_path):
    return [json.loads(s) for s in (tmp_path / "out" / "side_by_side.jsonl").read_text().splitlines() if s.strip()]


@needs_folder
def test_cpu_smoke_runs_the_documented_path(tmp_path):
    r = _run(tmp_path, "--cpu-smoke")
    assert r.returncode == 0, r.stderr[-2000:]
    bench = tmp_path / "bench"
    assert (bench / "pc_side_by_side.py").exists()
    if list(bench.glob("pyjuice-*.whl")):                    # installed offline, next to the copy
        assert (bench / ".site" / "pyjuice").is_dir()
    tests = (tmp_path / "out" / "gpu_tests.txt").read_text()
    assert "skipped" in tests and "failed" not in tests and "error" not in tests.lower()
    lines = _lines(tmp_path)
    assert lines[0]["header"] is True and lines[0]["device"] == "cpu"
    (lvd,) = [d for d in lines if d.get("engine") == "lvd"]
    assert lvd["finite"] and lvd["improved"] and lvd["seconds_per_step"] > 0
    assert lines[-1].get("summary") is True


@needs_folder
def test_pyjuice_parameter_check_on_the_cpu(tmp_path):
    if importlib.util.find_spec("triton") is None:
        pytest.skip("PyJuice needs Triton (its interpreter on the CPU); not installed here")
    r = _run(tmp_path, "--cpu-smoke")
    assert r.returncode == 0, r.stderr[-2000:]
    checks = [d for d in _lines(tmp_path) if "check" in d]
    assert {d["check"] for d in checks} == {"pyjuice-hclt", "pyjuice-lvdtree"}
    assert all(d["ll_max_abs_diff"] < 1e-3 for d in checks), checks


def test_unknown_option_is_refused(tmp_path):
    r = _run(tmp_path, "--bogus")
    assert r.returncode == 2 and "unknown option" in r.stderr


@needs_folder
def test_prepare_then_run_from_the_copy_alone(tmp_path):
    """A machine without ../shared: --prepare here, then the run finds the copy in GPUBENCH."""
    r = _run(tmp_path, "--prepare")
    assert r.returncode == 0 and "prepared" in r.stdout, r.stderr[-2000:]
    assert not (tmp_path / "out" / "side_by_side.jsonl").exists()
    env = {**os.environ, "GPUBENCH": str(tmp_path / "bench"), "OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable, "LVD_DEVICE_DIR": str(tmp_path / "absent")}
    r = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "using the copy" in r.stderr, r.stderr[-2000:]
    assert any(d.get("engine") == "lvd" for d in _lines(tmp_path))
