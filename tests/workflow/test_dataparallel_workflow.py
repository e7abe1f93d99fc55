"""Data-parallel EM in the workflow (docs/scaleout.md, "One circuit on several processes"): the
rules of latent_top_em, finetune, train_baseline and train_hclt start `tasks` processes. A dry run shows the
launcher in each command line: nothing for one task, torchrun for several on one machine, the
`mpi` resource's srun under SLURM."""

import re

import pytest
from workflow_helpers import copy_workflow, snakemake

STAGES = ("latent_top_em", "finetune", "train_baseline", "train_hclt")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("wf"))


def commands(text: str) -> dict[str, list[str]]:
    """{stage: the command lines of its jobs} in a `snakemake -n -p` output."""
    out: dict[str, list[str]] = {}
    for stage in STAGES:
        out[stage] = [line.split("Shell command:", 1)[-1].strip() for line in text.splitlines()
                      if f"-m lvd.stages.{stage} " in line]
    return out


def dry_run(workdir, *resources):
    args = ["--set-resources", *resources] if resources else []
    proc, _ = snakemake(workdir, "-n", "-p", "--cores", "4", "--configfile", "workflow/presets/tiny.yaml", *args)
    return proc.stdout + proc.stderr


def test_one_task_is_one_process(workdir):
    cmds = commands(dry_run(workdir))
    for stage in STAGES:
        assert cmds[stage] and all(c.startswith(f"python -m lvd.stages.{stage} ") for c in cmds[stage]), cmds[stage]


def test_several_tasks_run_under_torchrun_or_srun(workdir):
    text = dry_run(workdir, "finetune:tasks=2", "train_baseline:tasks=3", "train_hclt:tasks=2",
                   "train_hclt:mpi=srun", "finetune:gpu=2", "latent_top_em:tasks=2")
    cmds = commands(text)
    torchrun = ("python -m torch.distributed.run --standalone --no-python --nproc-per-node={} -- "
                "python -m lvd.stages.{} ")
    assert all(c.startswith(torchrun.format(2, "finetune")) for c in cmds["finetune"]), cmds["finetune"]
    assert all(c.startswith(torchrun.format(3, "train_baseline")) for c in cmds["train_baseline"])
    assert cmds["latent_top_em"] and all(c.startswith(torchrun.format(2, "latent_top_em"))
                                         for c in cmds["latent_top_em"]), cmds["latent_top_em"]
    assert all(c.startswith("srun --ntasks=2 --kill-on-bad-exit=1 python -m lvd.stages.train_hclt ")
               for c in cmds["train_hclt"]), cmds["train_hclt"]
    jobs = re.findall(r"rule finetune:.*?resources: ([^\n]*)", text, flags=re.S)
    assert jobs and all("tasks=2" in r and "gpu=2" in r for r in jobs), jobs
