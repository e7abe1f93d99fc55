"""The tiny preset end to end on the test cluster, through snakemake-executor-plugin-slurm.

The workflow is copied to a temporary directory (results of the repository stay untouched)
and run twice: locally (the reference) and with ``--executor slurm`` and the repository's
SLURM workflow profile, plus a user profile naming account and partition, as a cluster user
would. Checks: every artifact records the SLURM job that wrote it and sacct knows that job;
a rule with ``gpu=1`` got ``--gpus=1`` and saw CUDA_VISIBLE_DEVICES (a CPU rule saw none);
metrics.json has the same keys as in the local run. Snakemake runs under
``timeout -s INT`` (it ignores SIGTERM while jobs run; on SIGINT it cancels them).
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import pytest

import cluster as _cluster

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
PRESET = "workflow/presets/tiny.yaml"
PG_PRESET = "workflow/presets/tiny_pg.yaml"   # LVD-PG: grow_patch_pcs shards as GPU jobs
NEEDED = ["Snakefile", "config.yaml", PRESET, PG_PRESET, "workflow/profiles/slurm/config.yaml"]
RUN_SECONDS = 1200  # per snakemake invocation; it is sent SIGINT after this


def _missing_parts() -> list[str]:
    """Files of the workflow, and stage modules its rules call, that do not exist (yet)."""
    missing = [p for p in NEEDED if not (REPO / p).exists()]
    for rules in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for module in sorted(set(re.findall(r"python -m (lvd(?:\.\w+)*)", rules.read_text()))):
            if importlib.util.find_spec(module) is None:
                missing.append(f"{module} (called in {rules.relative_to(REPO)})")
    return missing


def _copy_workflow(dst: Path) -> Path:
    missing = _missing_parts()
    if missing:
        pytest.skip(f"the workflow is not complete yet: missing {missing}")
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", ".snakemake")
    shutil.copytree(REPO / "workflow", dst / "workflow", ignore=ignore)
    if (REPO / "envs").is_dir():
        shutil.copytree(REPO / "envs", dst / "envs", ignore=ignore)
    return dst


def _snakemake(cwd: Path, *args: str, preset: str = PRESET) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("LVD_FAKE_GPUS", None)
    cmd = ["timeout", "-s", "INT", "-k", "60", str(RUN_SECONDS), sys.executable, "-m", "snakemake",
           "--configfile", preset, *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, stdin=subprocess.DEVNULL,
                         timeout=RUN_SECONDS + 120)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}"
                             f"{', timed out' if res.returncode == 124 else ''}) in {cwd}:\n"
                             f"{res.stderr[-6000:]}\n{_job_logs(cwd)}")
    return res


def _job_logs(wd: Path, lines=25) -> str:
    """The ends of the rules' logs and SLURM's job logs, for failure messages."""
    parts = []
    for path in sorted([*(wd / "logs").rglob("*.log"), *(wd / ".snakemake" / "slurm_logs").rglob("*.log")]):
        text = path.read_text(errors="replace").splitlines()
        if any("Error" in line or "error" in line for line in text):
            parts.append(f"--- {path.relative_to(wd)}\n" + "\n".join(text[-lines:]))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def workdirs():
    """A private parent directory (not pytest's tmp, which other pytest sessions prune)."""
    root = Path(tempfile.mkdtemp(prefix="lvd-slurm-workflow-"))
    yield root
    if not os.environ.get("LVD_SLURM_KEEP"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def local_run(workdirs):
    wd = _copy_workflow(workdirs / "local_run")
    _snakemake(wd, "--cores", "2")
    return wd


def _slurm(wd: Path, preset: str = PRESET) -> Path:
    """Run ``preset`` in ``wd`` with --executor slurm, the repository's workflow profile and a
    user profile naming account and partition."""
    user = wd / "user_profile"
    user.mkdir()
    (user / "config.yaml").write_text(
        "default-resources:\n"
        f"  slurm_account: root  # the account sacctmgr created with cluster {_cluster.CLUSTER}\n"
        "  slurm_partition: main\n")
    _snakemake(wd, "--executor", "slurm", "--workflow-profile", "workflow/profiles/slurm",
               "--profile", str(user), "--jobs", "8", "--latency-wait", "10",
               "--slurm-init-seconds-before-status-checks", "2", preset=preset)
    return wd


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, workdirs):
    return _slurm(_copy_workflow(workdirs / "slurm_run"))


@pytest.fixture(scope="module")
def slurm_pg_run(slurm_cluster, workdirs):
    return _slurm(_copy_workflow(workdirs / "slurm_pg_run"), PG_PRESET)


def _artifacts(wd: Path) -> dict[str, dict]:
    """{relative path: root attributes} of every HDF5 artifact the run wrote."""
    out = {}
    for path in sorted((wd / "results").rglob("*.h5")):
        with h5py.File(path, "r") as f:
            out[str(path.relative_to(wd))] = {k: (v.decode() if isinstance(v, bytes) else v)
                                              for k, v in f.attrs.items()}
    return out


def _key_paths(obj, prefix="") -> set[str]:
    if isinstance(obj, dict):
        return set().union(*[{prefix + k} | _key_paths(v, prefix + k + ".") for k, v in obj.items()]) \
            if obj else set()
    return set()


def test_every_artifact_names_an_accounted_slurm_job(slurm_run, slurm_cluster):
    arts = _artifacts(slurm_run)
    assert arts, "the SLURM run wrote no HDF5 artifacts"
    ids = {path: str(a.get("slurm_job_id", "")) for path, a in arts.items()}
    assert all(ids.values()), f"artifacts without slurm_job_id: {[p for p, i in ids.items() if not i]}"
    known = slurm_cluster.wait_accounted(set(ids.values()))
    run_names = {known[i] for i in ids.values()}
    assert len(run_names) == 1, f"jobs of one run carry one name (the run id), got {run_names}"
    assert len(set(ids.values())) >= 5, f"expected separate jobs per stage, got {sorted(set(ids.values()))}"


def test_gpu_rule_gets_a_gpu_and_cpu_rule_none(slurm_run):
    arts = _artifacts(slurm_run)
    latents = {p: a for p, a in arts.items()  # assign_latents' (random_latents is a CPU rule)
               if a.get("format") == "lvd.latents" and "random_latents" not in str(a.get("writer"))}
    data = [a for a in arts.values() if a.get("format") == "lvd.data"]
    assert latents and data
    for path, a in latents.items():  # assign_latents declares gpu=1 -> sbatch --gpus=1
        assert a.get("cuda_visible_devices") in {"0", "1", "2", "3"}, (path, a.get("cuda_visible_devices"))
        tres = _cluster.sh(["sacct", "-n", "-X", "-P", "-j", str(a["slurm_job_id"]), "-o", "AllocTRES"]).stdout
        assert "gres/gpu=1" in tres, (path, tres)
    assert data[0].get("cuda_visible_devices", "") == ""  # prepare_data asks for no GPU


def test_metrics_have_the_same_keys_as_a_local_run(slurm_run, local_run):
    slurm_files = sorted(p.relative_to(slurm_run) for p in (slurm_run / "results").rglob("metrics.json"))
    local_files = sorted(p.relative_to(local_run) for p in (local_run / "results").rglob("metrics.json"))
    assert slurm_files and slurm_files == local_files
    for rel in slurm_files:
        on_slurm = _key_paths(json.loads((slurm_run / rel).read_text()))
        local = _key_paths(json.loads((local_run / rel).read_text()))
        assert on_slurm == local, f"{rel}: only on SLURM {on_slurm - local}, only local {local - on_slurm}"


def test_lvd_pg_runs_on_slurm_one_gpu_job_per_shard(slurm_pg_run, slurm_cluster):
    """tiny_pg through SLURM: every grow_patch_pcs shard is its own job with one GPU, and the
    run ends with metrics.json carrying the growing curves."""
    arts = _artifacts(slurm_pg_run)
    shards = {p: a for p, a in arts.items() if "/grow/shard" in p}
    assert shards, f"no grow_patch_pcs shards among {sorted(arts)}"
    ids = {str(a.get("slurm_job_id", "")) for a in shards.values()}
    assert "" not in ids and len(ids) == len(shards), "one SLURM job per shard"
    slurm_cluster.wait_accounted(ids)
    for path, a in shards.items():
        assert a.get("cuda_visible_devices") in {"0", "1", "2", "3"}, (path, a.get("cuda_visible_devices"))
        tres = _cluster.sh(["sacct", "-n", "-X", "-P", "-j", str(a["slurm_job_id"]), "-o", "AllocTRES"]).stdout
        assert "gres/gpu=1" in tres, (path, tres)
    metrics = sorted((slurm_pg_run / "results").rglob("metrics.json"))
    assert metrics and all("growing_mean_ll" in json.loads(p.read_text()) for p in metrics)


def test_finetune_runs_as_two_tasks_through_srun(slurm_run, slurm_cluster):
    """Data-parallel EM (docs/scaleout.md): the tiny preset's finetune of the SLURM run again as
    one job of 2 tasks (resources tasks=2, mpi=srun: sbatch --ntasks=2, the rule's srun starts
    them; gpu=2, tasks_per_gpu=1: one GPU per task). Both tasks join one gloo group (the fake
    GPUs have no CUDA); the circuit equals the one-process job's to float tolerance."""
    import torch

    from lvd import pc

    finals = sorted((slurm_run / "results").rglob("lvd/s0/pc_final.h5"))
    assert finals, "the SLURM run wrote no pc_final.h5"
    target = finals[0]
    before = slurm_run / "pc_final_one_task.h5"
    shutil.copy2(target, before)
    _snakemake(slurm_run, "--executor", "slurm", "--workflow-profile", "workflow/profiles/slurm",
               "--profile", str(slurm_run / "user_profile"), "--jobs", "2", str(target.relative_to(slurm_run)),
               "--latency-wait", "10", "--slurm-init-seconds-before-status-checks", "2", "--forcerun", "finetune",
               "--set-resources", "finetune:tasks=2", "finetune:mpi=srun", "finetune:gpu=2",
               "finetune:tasks_per_gpu=1")   # (the target before the options that take several values)
    with h5py.File(target, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    assert int(attrs["processes"]) == 2
    job = str(attrs["slurm_job_id"])
    slurm_cluster.wait_accounted({job})
    steps = _cluster.sh(["sacct", "-n", "-P", "-j", job, "-o", "JobID,NTasks,AllocTRES"]).stdout
    assert any(line.split("|")[1] == "2" for line in steps.splitlines() if line.count("|") >= 2), steps
    assert "gres/gpu=2" in steps, steps
    a, b = pc.load(before), pc.load(target)
    for k, t in a.params.items():
        torch.testing.assert_close(b.params[k], t, rtol=1e-4, atol=1e-6, msg=k)
