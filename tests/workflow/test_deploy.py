"""The workflow deployed, as a user's project uses it: run from elsewhere, and as a module.

- ``snakemake -s <checkout>/Snakefile -d <project> --configfile ...``: the tiny preset (one K,
  to keep it short) runs to completion in a temporary project directory that holds no copy of
  the workflow, then ``--report`` builds the report there.
- A user's own Snakefile that declares ``module lvd: snakefile: <checkout>/Snakefile;
  config: config`` and ``use rule * from lvd`` (with and without a name prefix): its dry run
  lists this workflow's jobs.

Every file the workflow opens (config.yaml, the schema, the rule files, the report captions)
must therefore be found from the Snakefile's directory, and every output, log and benchmark
must land in the project directory. docs/workflow.md, "Deploying".
"""

import json
import math

import pytest
import yaml
from workflow_helpers import REPO, expected_jobs, job_stats, merged_config, snakemake

SNAKEFILE = REPO / "Snakefile"
TINY = REPO / "workflow" / "presets" / "tiny.yaml"
ONE_K = {"latents": {"num_states": [4]}}  # the tiny preset with one K: half its jobs


class Deployed:
    """The tiny preset run with -s/-d in an empty project directory."""

    def __init__(self, project):
        self.project = project
        (project / "one_k.yaml").write_text(yaml.safe_dump(ONE_K))
        self.args = ["-s", str(SNAKEFILE), "-d", str(project), "--cores", "2",
                     "--configfile", str(TINY), str(project / "one_k.yaml")]
        self.config = merged_config("tiny")
        self.config["latents"].update(ONE_K["latents"])
        self.proc, self.seconds = snakemake(project, *self.args)
        self.results = project / "results" / self.config["run"]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    return Deployed(tmp_path_factory.mktemp("project"))


def test_tiny_preset_runs_from_another_directory(deployed):
    assert job_stats(deployed.proc.stdout + deployed.proc.stderr) == expected_jobs(deployed.config, False)
    metrics = json.loads((deployed.results / "k4" / "metrics.json").read_text())
    assert math.isfinite(metrics["test_bpd"]) and metrics["num_params"] > 0
    assert (deployed.results / "summary.tsv").is_file()
    # outputs, logs and benchmarks in the project; nothing of the workflow copied there
    assert (deployed.project / "logs" / "tiny").is_dir() and (deployed.project / "benchmarks" / "tiny").is_dir()
    assert set(metrics["seconds"]) >= {"prepare_data", "lvd/s0/finetune"}, "evaluate found no benchmarks"
    assert not (deployed.project / "workflow").exists() and not (deployed.project / "config.yaml").exists()
    proc, _ = snakemake(deployed.project, *deployed.args, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_report_from_the_project_directory(deployed):
    snakemake(deployed.project, *deployed.args, "--report", "report.html")
    html = (deployed.project / "report.html").read_text(errors="replace")
    assert len(html) > 10_000 and "summary.png" in html and "samples.png" in html


def test_without_configfile_the_workflows_own_config_yaml_is_the_default(tmp_path):
    proc, _ = snakemake(tmp_path, "-s", str(SNAKEFILE), "-d", str(tmp_path), "-n", "--cores", "2")
    config = merged_config(None)
    assert job_stats(proc.stdout + proc.stderr) == expected_jobs(config, False)
    assert f"results/{config['run']}/summary.tsv" in proc.stdout


@pytest.mark.parametrize("prefix", ["lvd_", ""])
def test_module_dry_run(tmp_path, prefix):
    """A snakedeploy-style project: config/config.yaml (config.yaml with a preset merged over
    it) and a Snakefile declaring the module; the module sees only the config it is given."""
    (tmp_path / "config").mkdir()
    config = merged_config("tiny")
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    rename = f" as {prefix}*" if prefix else ""
    (tmp_path / "Snakefile").write_text(
        'configfile: "config/config.yaml"\n\n\n'
        f'module lvd:\n    snakefile:\n        "{SNAKEFILE}"\n    config:\n        config\n\n\n'
        f"use rule * from lvd{rename}\n")
    proc, _ = snakemake(tmp_path, "-n", "--cores", "2")
    expected = {f"{prefix}{rule}": n for rule, n in expected_jobs(config, False).items()}
    assert job_stats(proc.stdout + proc.stderr) == expected
    assert f"results/{config['run']}/summary.tsv" in proc.stdout
