"""The workflow as a catalog workflow is checked: rule shape, snakefmt, --lint, dry runs."""

import re
import subprocess
import sys

import pytest
import yaml
from workflow_helpers import (PRESETS, REPO, STAGE_SECTIONS, copy_workflow, expected_jobs, fake_run, job_stats, merged_config,
                              preset_args, snakemake)

RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
CATALOG_RULES = set(STAGE_SECTIONS)  # every rule but `all` is a stage of the same name


def rule_blocks():
    """{rule name: its text} over all rule files."""
    blocks = {}
    for path in RULE_FILES:
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2]):
            blocks[name] = re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]
    return blocks


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("wf"))


def test_snakefile_is_a_table_of_contents():
    text = (REPO / "Snakefile").read_text()
    assert len(text.splitlines()) <= 60
    for needle in ("min_version(", 'configfile: workflow.source_path("config.yaml")', "validate(config,", "report:",
                   "rule all:"):
        assert needle in text, needle
    included = re.findall(r'^include: "workflow/rules/(\w+\.smk)"', text, flags=re.M)
    assert sorted(included) == sorted(p.name for p in RULE_FILES)


def test_every_rule_calls_its_own_stage_with_its_own_section():
    blocks = rule_blocks()
    assert set(blocks) == CATALOG_RULES
    for name, body in blocks.items():
        for directive in ("log:", "benchmark:", "threads:", "resources:", "mem_mb=", "runtime=",
                          "conda:", "shell:"):
            assert directive in body, f"rule {name}: no {directive}"
        assert "run:" not in body and not re.search(r"\blambda\b", body), f"rule {name}: run or lambda"
        stages = re.findall(r"python -m lvd\.stages\.(\w+)", body)
        assert stages == [name], f"rule {name} calls {stages}"
        for flag in ("--threads {threads}", "--log {log}"):
            assert flag in body, f"rule {name}: no {flag}"
        if STAGE_SECTIONS[name] is not None:  # the rule names its stage; lvd.sections its section
            assert re.search(rf'cfg=(stage|seeded)_config\("{name}"', body), f"rule {name}: not its own settings"
            assert "--config {params.cfg:q}" in body, f"rule {name}: settings not passed"
    for name in ("train_teacher", "extract_embeddings", "latent_em", "latent_top_em", "finetune",
                 "train_baseline", "train_hclt", "evaluate"):
        assert "gpu=1" in blocks[name], f"rule {name} trains or runs torch models: gpu=1"
    for name in ("prepare_data", "materialize_pc", "random_latents", "summarize"):
        assert "gpu=" not in blocks[name], f"rule {name} should not claim a GPU"
    assert not re.search(r"\blambda\b", (REPO / "workflow" / "rules" / "common.smk").read_text())


def test_snakefmt_check_is_clean():
    files = [str(REPO / "Snakefile"), *map(str, RULE_FILES)]
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"snakefmt would reformat:\n{proc.stderr}{proc.stdout}"


def test_lint_is_clean(workdir):
    proc, _ = snakemake(workdir, "--lint", check=False)
    text = proc.stdout + proc.stderr
    lints = re.findall(r"^Lints for (.*):$|^\s+\* (.*):$", text, flags=re.M)
    assert proc.returncode == 0 and not lints, f"snakemake --lint:\n{text[-6000:]}"
    assert "Congratulations, your workflow is in a good condition!" in text


@pytest.mark.parametrize("preset", [None, *PRESETS])
def test_dry_run_lists_the_expected_jobs(workdir, preset):
    config = merged_config(preset)
    text = config["data"]["dataset"] == "wikitext2"
    proc, _ = snakemake(workdir, "-n", "--cores", "2", *preset_args(workdir, preset))
    assert job_stats(proc.stdout + proc.stderr) == expected_jobs(config, text)
    run = config["run"]
    for k in config["latents"]["num_states"]:
        assert f"results/{run}/k{k}/metrics.json" in proc.stdout
    start = "pc_init.h5" if text else "pc_latent_em.h5"
    assert re.search(rf"rule finetune:\n\s+input: results/{run}/data.h5, results/{run}/k\d+/(lvd|random)/s\d+/{start}",
                     proc.stdout), "finetune starts from the wrong circuit"


def test_unknown_config_key_stops_the_workflow_naming_it(workdir):
    bad = workdir / "bad.yaml"
    bad.write_text(yaml.safe_dump({"finetune": {"step_sise": 0.1}}))
    proc, _ = snakemake(workdir, "-n", "--configfile", bad.name, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "'step_sise' was unexpected" in out and "schema['properties']['finetune']" in out


def test_a_key_of_the_old_latent_em_layout_stops_the_workflow_naming_its_new_place(workdir):
    old = workdir / "old.yaml"
    old.write_text(yaml.safe_dump({"latent_em": {"top_epochs": 3}}))
    proc, _ = snakemake(workdir, "-n", "--configfile", old.name, check=False)
    assert proc.returncode != 0
    assert "config key 'latent_em.top_epochs' is now 'latent_top_em.epochs'" in proc.stdout + proc.stderr


def test_results_under_the_old_random_arm_folder_stop_the_workflow_naming_the_new_one(tmp_path):
    """A run made when the random-latent arm's folder was random/ is not trained again beside it:
    the dry run stops, naming the folder, the new name and the command that renames it."""
    work = copy_workflow(tmp_path / "old")
    run = yaml.safe_load((REPO / "config.yaml").read_text())["run"]
    (work / "results" / run / "k8" / "random" / "s0").mkdir(parents=True)
    proc, _ = snakemake(work, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"results/{run}/k8/random: made under an arm's old name ('random' is now 'random_latents')" in out
    assert f"mv results/{run}/k8/random results/{run}/k8/random_latents" in out
    (work / "results" / run / "k8" / "random").rename(work / "results" / run / "k8" / "random_latents")
    proc, _ = snakemake(work, "-n")
    assert "random_latents/s0/latents.h5" in proc.stdout


def test_editing_one_section_reruns_only_that_stage_and_what_follows(workdir):
    """Settings reach the stages as params: Snakemake's params trigger does the rest.

    Needs a finished run, so it fakes one (see fake_run): only the DAG logic is under test.
    """
    run_dir = workdir.parent / "touched"
    copy_workflow(run_dir)
    args = ["--cores", "2", *preset_args(run_dir, "tiny")]
    fake_run(run_dir, *args)
    proc, _ = snakemake(run_dir, *args, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    config = merged_config("tiny")
    ks = config["latents"]["num_states"]
    changed = run_dir / "changed.yaml"
    changed.write_text(yaml.safe_dump({"finetune": {"step_size_end": 0.02}}))
    proc, _ = snakemake(run_dir, *args, changed.name, "-n")
    arms = 2 * config["evaluate"]["num_seeds"]          # lvd and random latents, every seed
    seeds = config["evaluate"]["num_seeds"]
    # images' budget time: the controls train for LVD's seconds (its jobs' benchmark files), so they follow
    controls = {"train_baseline": seeds * len(ks), "train_hclt": seeds * len(ks)}
    assert job_stats(proc.stdout + proc.stderr) == {"finetune": arms * len(ks), **controls, "evaluate": len(ks),
                                                    "summarize": 1, "all": 1}
    # finetune.epochs is part of LVD's passes too (epochs: auto)
    changed.write_text(yaml.safe_dump({"finetune": {"epochs": config["finetune"]["epochs"] + 1}}))
    proc, _ = snakemake(run_dir, *args, changed.name, "-n")
    assert job_stats(proc.stdout + proc.stderr) == {"finetune": arms * len(ks), **controls, "evaluate": len(ks),
                                                    "summarize": 1, "all": 1}
    # the top tree's settings have their own section: latent_em's shards stay, its jobs do not rerun
    changed.write_text(yaml.safe_dump({"latent_top_em": {"step_size_end": 0.02}}))
    proc, _ = snakemake(run_dir, *args, changed.name, "-n")
    assert job_stats(proc.stdout + proc.stderr) == {"latent_top_em": arms * len(ks), "finetune": arms * len(ks),
                                                    **controls, "evaluate": len(ks), "summarize": 1, "all": 1}
    # ... and its epochs count in LVD's budget, so the controls follow (latent_em still does not)
    changed.write_text(yaml.safe_dump({"latent_top_em": {"epochs": config["latent_top_em"]["epochs"] + 1}}))
    proc, _ = snakemake(run_dir, *args, changed.name, "-n")
    assert job_stats(proc.stdout + proc.stderr) == {"latent_top_em": arms * len(ks), "finetune": arms * len(ks),
                                                    "train_baseline": seeds * len(ks),
                                                    "train_hclt": seeds * len(ks), "evaluate": len(ks),
                                                    "summarize": 1, "all": 1}
    # a new K runs only that K's jobs (num_states is not part of the latents stage's params)
    more = run_dir / "more.yaml"
    more.write_text(yaml.safe_dump({"latents": {"num_states": [*ks, 2]}}))
    proc, _ = snakemake(run_dir, *args, more.name, "-n")
    one_k = {**expected_jobs({**config, "latents": {"num_states": [2]}}, text=False),
             "prepare_data": 0, "train_teacher": 0, "extract_embeddings": 0}
    assert job_stats(proc.stdout + proc.stderr) == {k: v for k, v in one_k.items() if v}
    # under budget passes the controls do not wait for LVD: a finetune setting leaves them alone
    passes = {section: {"budget": "passes"} for section in ("baseline", "hclt")}
    changed.write_text(yaml.safe_dump(passes))
    fake_run(run_dir, *args, changed.name)
    changed.write_text(yaml.safe_dump({**passes, "finetune": {"step_size_end": 0.02}}))
    proc, _ = snakemake(run_dir, *args, changed.name, "-n")
    assert job_stats(proc.stdout + proc.stderr) == {"finetune": arms * len(ks), "evaluate": len(ks),
                                                    "summarize": 1, "all": 1}
