"""The whole DAG, for real, on the tiny presets (images: tiny, text: tiny_text).

Each preset runs once per module in a private copy of the workflow (about a minute on 2
cores); the tests then read what it wrote, rerun one stage and build the report. tiny_text
reads a small corpus the tests write in WikiText-2's layout (text_sample.py), not WikiText-2.
"""

import json
import math
import os

import pytest
import yaml
from text_sample import write_text_sample
from workflow_helpers import copy_workflow, expected_jobs, job_stats, merged_config, preset_args, snakemake

IMAGE_KEYS = {"test_bpd", "baseline_test_bpd", "teacher_test_bpd", "num_params", "seconds"}
TEXT_KEYS = {"test_perplexity", "baseline_test_perplexity", "teacher_test_perplexity", "num_params",
             "seconds"}
GUARD_SECONDS = 480  # the tiny presets take about a minute; this catches a preset grown ~8x


class Run:
    def __init__(self, tmp_path_factory, preset, data_path=None):
        self.preset = preset
        self.config = merged_config(preset)
        self.text = self.config["data"]["dataset"] == "wikitext2"
        self.workdir = copy_workflow(tmp_path_factory.mktemp(preset))
        self.args = ["--cores", "2", *preset_args(self.workdir, preset)]
        if data_path is not None:  # after the preset: its data.path replaced
            (self.workdir / "data_path.yaml").write_text(yaml.safe_dump({"data": {"path": str(data_path)}}))
            self.args.append("data_path.yaml")
        self.proc, self.seconds = snakemake(self.workdir, *self.args)
        self.results = self.workdir / "results" / self.config["run"]
        print(f"{preset}: whole DAG in {self.seconds:.1f} s")

    def metrics(self, k):
        return json.loads((self.results / f"k{k}" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Run(tmp_path_factory, "tiny")


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    sample = write_text_sample(tmp_path_factory.mktemp("text_sample"))
    return Run(tmp_path_factory, "tiny_text", data_path=sample)


def check_finished_run(run: Run, keys: set[str]):
    assert job_stats(run.proc.stdout + run.proc.stderr) == expected_jobs(run.config, run.text)
    assert run.seconds < GUARD_SECONDS, f"{run.preset} took {run.seconds:.0f} s"
    ks = run.config["latents"]["num_states"]
    for k in ks:
        metrics = run.metrics(k)
        assert keys <= set(metrics), f"k{k}/metrics.json lacks {sorted(keys - set(metrics))}"
        for key in keys - {"seconds"}:
            assert isinstance(metrics[key], (int, float)) and math.isfinite(metrics[key]), (key, metrics[key])
        assert metrics["num_params"] > 0
        # seconds: {stage: seconds} from the benchmark files of this K's jobs and the shared ones
        stages = {"prepare_data", "train_teacher", "extract_embeddings", "assign_latents",
                  "lvd/s0/materialize_pc", "lvd/s0/finetune", "random_latents/s0/random_latents",
                  "random_latents/s0/finetune", "baseline/s0/train_baseline"}
        if not run.text:
            stages |= {"lvd/s0/latent_top_em", "hclt/s0/train_hclt"}
        assert stages <= set(metrics["seconds"]) and all(v > 0 for v in metrics["seconds"].values())
        assert metrics["num_seeds"] == run.config["evaluate"]["num_seeds"] and "verdict" in metrics
        check_compute(run, k, metrics)
    header, *rows = (run.results / "summary.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in rows] == sorted(ks)
    main = "test_perplexity" if run.text else "test_bpd"
    assert header.split("\t")[:2] == ["num_states", main]
    assert (run.results / "summary.png").read_bytes()[:4] == b"\x89PNG"
    logs = list((run.workdir / "logs").rglob("*.log"))
    benchmarks = list((run.workdir / "benchmarks").rglob("*.tsv"))
    jobs = sum(expected_jobs(run.config, run.text).values()) - 1  # rule all has neither
    assert len(logs) == jobs and len(benchmarks) == jobs
    assert all(p.stat().st_size > 0 for p in logs), [str(p) for p in logs if not p.stat().st_size]


def check_compute(run: Run, k: int, metrics: dict) -> None:
    """The compute-fair keys (docs/pc_stages.md, "Budgets"): every arm's training seconds are the
    sums of its benchmark files, the curves end at them, the controls' budget is images' time
    (text: passes), the verdict states both comparisons, and images report what fine-tuning bought."""
    seeds = run.config["evaluate"]["num_seeds"]
    arms = ["lvd", "random_latents", "baseline"] + ([] if run.text else ["hclt"])   # each its folder's name
    bench = run.workdir / "benchmarks" / run.config["run"] / f"k{k}"
    for arm in arms:
        pre = "" if arm == "lvd" else f"{arm}_"
        per = [sum(float(p.read_text().splitlines()[1].split("\t")[0]) for p in (bench / arm / f"s{s}").rglob("*.tsv"))
               for s in range(seeds)]
        assert metrics[f"{pre}train_seconds"] == pytest.approx(sum(per) / seeds), arm
        sampled = [[dict(zip(*(ln.split("\t") for ln in p.read_text().splitlines()[:2])))["cpu_time"]
                    for p in (bench / arm / f"s{s}").rglob("*.tsv")] for s in range(seeds)]
        cpu = [None if "NA" in row else sum(map(float, row)) for row in sampled]   # NA: a job too short to sample
        assert metrics[f"{pre}cpu_seconds_seeds"] == pytest.approx(cpu), arm
        curves = metrics["curves"][arm]
        assert len(curves) == seeds and all(c[-1]["seconds"] == pytest.approx(t) for c, t in zip(curves, per))
        assert all(math.isfinite(p["test_" + ("perplexity" if run.text else "bpd")]) for c in curves for p in c)
    assert metrics["shared_seconds"] > 0
    assert metrics["budget"] == ("passes" if run.text else "time")
    controls = set(arms) - {"lvd"}
    assert set(metrics["equal_time"]) == set(metrics["equal_passes"]) == controls
    assert all({"seconds_seeds", "over_budget"} <= set(c) for c in metrics["equal_time"].values())
    if run.text:      # no pc_latent_em: nothing to compare fine-tuning against
        assert "finetune" not in metrics
    else:             # the presets fine-tune: pc_latent_em (the epoch-0 snapshot) against pc_final
        assert set(metrics["finetune"]) == {"lvd", "random_latents"}
        for arm, f in metrics["finetune"].items():
            assert f["reason"] is None and f["note"] is None and f["seconds"] > 0, arm
            assert f["test_gain_bpd"] == pytest.approx(f["test_bpd_before"] - f["test_bpd_after"]), arm
            assert f["chosen"] in ("finetuned", "frozen") and len(f["chosen_seeds"]) == seeds, arm
        assert "Fine-tuning: test bpd" in metrics["verdict"]
    assert "At equal passes" in metrics["verdict"] and "At equal time" in metrics["verdict"]
    assert (run.results / f"k{k}" / "figures" / "compute.png").stat().st_size > 0
    if not run.text:   # a time-budget control stops after the epoch that reaches its budget
        for arm in ("baseline", "hclt"):
            rec = metrics["history"][arm][-1]
            assert rec["stage"] == f"train_{arm}" and rec["seconds"] >= rec["budget_seconds"] >= 0


def test_tiny_images_whole_dag(tiny):
    check_finished_run(tiny, IMAGE_KEYS)
    for k in tiny.config["latents"]["num_states"]:
        for name in ("samples", "inpainting", "curves"):
            assert (tiny.results / f"k{k}" / "figures" / f"{name}.png").stat().st_size > 0
        for arm in ("lvd", "random_latents"):
            shards = sorted(p.name for p in (tiny.results / f"k{k}" / arm / "s0" / "latent_em").iterdir())
            assert shards == [f"shard{i}.h5" for i in range(tiny.config["latent_em"]["num_shards"])]


def test_tiny_forcerun_finetune_reruns_exactly_finetune_and_downstream(tiny):
    proc, _ = snakemake(tiny.workdir, *tiny.args, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, "a finished run must be up to date"
    ks = tiny.config["latents"]["num_states"]
    k_dir = tiny.results / f"k{ks[0]}"
    names = ("lvd/s0/pc_init.h5", "lvd/s0/pc_latent_em.h5", "baseline/s0.h5", "hclt/s0.h5", "lvd/s0/pc_final.h5",
             "random_latents/s0/pc_final.h5")
    before = {name: os.stat(k_dir / name).st_mtime_ns for name in names}
    proc, _ = snakemake(tiny.workdir, *tiny.args, "--forcerun", "finetune")
    seeds = tiny.config["evaluate"]["num_seeds"]
    arms = 2 * seeds          # lvd and random_latents, every seed
    # budget time (images): the controls train for LVD's seconds, so they follow LVD's finetune
    assert job_stats(proc.stdout + proc.stderr) == {"finetune": arms * len(ks), "train_baseline": seeds * len(ks),
                                                    "train_hclt": seeds * len(ks), "evaluate": len(ks),
                                                    "summarize": 1, "all": 1}
    after = {name: os.stat(k_dir / name).st_mtime_ns for name in before}
    assert {n for n in before if before[n] != after[n]} == {"lvd/s0/pc_final.h5", "random_latents/s0/pc_final.h5",
                                                           "baseline/s0.h5", "hclt/s0.h5"}


def test_tiny_report(tiny):
    snakemake(tiny.workdir, *tiny.args, "--report", "report.html")
    html = (tiny.workdir / "report.html").read_text(errors="replace")
    assert len(html) > 10_000 and "summary.png" in html and "samples.png" in html


def test_tiny_text_whole_dag(tiny_text):
    check_finished_run(tiny_text, TEXT_KEYS)
    for k in tiny_text.config["latents"]["num_states"]:
        assert not (tiny_text.results / f"k{k}" / "lvd" / "s0" / "latent_em").exists()
        assert not (tiny_text.results / f"k{k}" / "lvd" / "s0" / "pc_latent_em.h5").exists()
        assert not (tiny_text.results / f"k{k}" / "hclt").exists()
