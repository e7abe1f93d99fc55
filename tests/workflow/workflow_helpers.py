"""Helpers for the workflow tests: a private copy of the workflow and a Snakemake runner.

Every Snakemake call runs in a copy of the workflow under a temporary directory (never in
the repository, whose results/ may hold real runs), with the test's own interpreter first on
PATH as `python` (the rules call `python -m lvd.stages.<name>`) and the repository on
PYTHONPATH, so the stages under test are the ones in this checkout.

`python` on that PATH is a two-line shell script that execs the interpreter by its own path,
not a symlink to it: Python finds a virtualenv by the ``pyvenv.cfg`` beside the path it was
started as, so a symlink elsewhere would run the base interpreter without the venv's packages.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lvd.sections import SECTIONS

REPO = Path(__file__).resolve().parents[2]
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "envs")
PRESETS = ("tiny", "digits_sizes", "fashion_mnist", "fashion_mnist_sizes", "tiny_text", "wikitext2", "tiny_pg",
           "fashion_mnist_pg")
# stage module -> its config section (None: a stage without settings): the stages' own table
STAGE_SECTIONS = dict(SECTIONS)


def load_yaml(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text()) or {}


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow files (not results, logs or .snakemake) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def preset_args(workdir: Path, preset: str | None) -> list[str]:
    """--configfile arguments for a preset, with a relative data.path made absolute.

    Presets name data relative to the working directory (e.g. data/wikitext-2); the
    copy lives elsewhere, so an extra config file points at the same place.
    """
    if preset is None:
        return []
    rel = f"workflow/presets/{preset}.yaml"
    args = ["--configfile", rel]
    path = load_yaml(REPO / rel).get("data", {}).get("path", "")
    if path and not Path(path).is_absolute():
        fix = workdir / f"abs_path_{preset}.yaml"
        fix.write_text(yaml.safe_dump({"data": {"path": str((REPO / path).resolve())}}))
        args.append(fix.name)
    return args


def stage_env(tmp_bin: Path) -> dict:
    """The environment the rules' shell commands see: ``tmp_bin`` first on PATH, this checkout
    first on PYTHONPATH."""
    env = dict(os.environ)
    env["PATH"] = f"{tmp_bin}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    return env


def python_bin(folder: Path, python: str | Path = sys.executable) -> Path:
    """``folder`` holding an executable ``python`` that runs ``python`` (default: this
    interpreter) by its own path, so a virtualenv's interpreter keeps its packages."""
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "python"
    text = f"#!/bin/sh\nexec {shlex.quote(str(python))} \"$@\"\n"
    if not wrapper.is_file() or wrapper.is_symlink() or wrapper.read_text() != text:
        tmp = folder / f".python.tmp-{os.getpid()}"
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, wrapper)
    return folder


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 600):
    """Run ``python -m snakemake ARGS`` in ``workdir``; returns (CompletedProcess, seconds).

    With check=True a non-zero exit fails the test showing the tail of the output.
    """
    tmp_bin = python_bin(workdir / ".test-bin")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=stage_env(tmp_bin),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if check and proc.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} exited {proc.returncode} in {workdir}\n"
                    f"--- stdout (tail)\n{proc.stdout[-4000:]}\n--- stderr (tail)\n{proc.stderr[-8000:]}")
    return proc, seconds


def fake_run(workdir: Path, *args: str) -> None:
    """Stand in for a finished run without running anything: every output of the dry run
    is created empty (a benchmark file with 1 s), then ``--touch`` orders their times and
    records Snakemake's metadata (params, input sets) exactly as a real run of this config would."""
    proc, _ = snakemake(workdir, *args, "-n")
    for line in proc.stdout.splitlines():
        if line.startswith("    benchmark: "):    # a control under budget time reads LVD's
            name = line[len("    benchmark: "):]
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            (workdir / name).write_text("s\th:m:s\n1.0\t0:00:01\n")
        if line.startswith("    output: "):
            for name in line[len("    output: "):].split(", "):
                if "." not in Path(name).name:      # a directory() output (snapshot folders)
                    (workdir / name).mkdir(parents=True, exist_ok=True)
                    continue
                (workdir / name).parent.mkdir(parents=True, exist_ok=True)
                (workdir / name).touch()
    snakemake(workdir, *args, "--touch", "--forceall")


def job_stats(text: str) -> dict[str, int]:
    """The first 'Job stats:' table of Snakemake's output as {rule: count} (without 'total')."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except StopIteration:
        return {}
    stats = {}
    for line in lines[start + 3:]:  # skip the header and the dashes
        m = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if not m:
            break
        if m.group(1) != "total":
            stats[m.group(1)] = int(m.group(2))
    return stats


def expected_jobs(config: dict, text: bool) -> dict[str, int]:
    """Job counts of a full run computed by hand from the config: per K, the teacher's latents,
    and for every seed: the random-latent control, both arms' circuits (lvd, random_latents), the
    baseline and (images) the HCLT."""
    k = len(config["latents"]["num_states"])
    s = config["evaluate"]["num_seeds"]
    jobs = {"prepare_data": 1, "train_teacher": 1, "extract_embeddings": 1, "assign_latents": k,
            "random_latents": k * s, "materialize_pc": 2 * k * s, "finetune": 2 * k * s,
            "train_baseline": k * s, "evaluate": k, "summarize": 1, "all": 1}
    if not text and config["latents"].get("mode") == "clusters":   # LVD-PG: growing replaces latent_em
        jobs["grow_patch_pcs"] = 2 * k * s * config["grow"]["num_shards"]
        jobs["latent_top_em"] = 2 * k * s
        jobs["train_hclt"] = k * s
    elif not text:
        jobs["latent_em"] = 2 * k * s * config["latent_em"]["num_shards"]
        jobs["latent_top_em"] = 2 * k * s
        jobs["train_hclt"] = k * s
    return jobs


def merged_config(preset: str | None) -> dict:
    """config.yaml with a preset merged over it, as Snakemake merges --configfile (recursively)."""
    base = load_yaml(REPO / "config.yaml")
    if preset is not None:
        _update(base, load_yaml(REPO / "workflow" / "presets" / f"{preset}.yaml"))
    return base


def _update(base: dict, over: dict) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _update(base[key], value)
        else:
            base[key] = value
