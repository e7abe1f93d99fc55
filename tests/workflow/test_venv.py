"""The workflow tests' `python` on PATH keeps a virtualenv's packages.

A venv whose packages are visible only to its own interpreter (a .pth file in its
site-packages points at this interpreter's packages; a marker module lives only there) runs a
stage through the same PATH mechanism the workflow tests give Snakemake's rules.
"""

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from workflow_helpers import python_bin, stage_env


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    (Path(site) / "outer_packages.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    (Path(site) / "lvd_venv_marker.py").write_text("IN_VENV = True\n")
    return python


def _run(bin_dir: Path, command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], cwd=cwd, env=stage_env(bin_dir), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_python_on_path_is_the_venv(venv_python, tmp_path):
    bin_dir = python_bin(tmp_path / ".test-bin", venv_python)
    proc = _run(bin_dir, "python -c 'import sys, lvd_venv_marker; print(sys.prefix)'", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == venv_python.parent.parent


def test_a_stage_runs_from_the_venv(venv_python, tmp_path):
    bin_dir = python_bin(tmp_path / ".test-bin", venv_python)
    cfg = json.dumps({"dataset": "digits", "max_train": 60, "max_test": 20})
    proc = _run(bin_dir, f"python -m lvd.stages.prepare_data --config '{cfg}' --out r/data.h5"
                         " --device cpu --log r/prepare_data.log", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "r" / "data.h5").is_file()


def test_the_wrapper_is_rewritten_for_another_interpreter(tmp_path):
    bin_dir = python_bin(tmp_path / "b", "/nonexistent/python")
    bin_dir = python_bin(tmp_path / "b", sys.executable)
    assert sys.executable in (bin_dir / "python").read_text()
