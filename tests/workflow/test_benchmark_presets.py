"""The papers' benchmark presets (cifar10_pg, imagenet32_pg, imagenet64_pg), sized for a GPU cluster.

Each preset is dry-run on a tiny stand-in of its dataset in the distributed format, with the
resource flags its header prescribes: the job counts are the hand-computed ones, every job gets the
header's resources, and the header's memory arithmetic agrees with the preset's own settings.
Then a tiny variant (the preset with sizes overridden to a few images and states) runs the whole
DAG for real, protocol included (crops, colour space): imagenet32_pg's by default, the other two
marked slow.
"""

import json
import re
import shlex

import h5py
import numpy as np
import pytest
import yaml
from test_schema import validated
from workflow_helpers import REPO, _update, copy_workflow, expected_jobs, job_stats, load_yaml, merged_config, snakemake

from lvd.data import photos

PRESETS = ("cifar10_pg", "imagenet32_pg", "imagenet64_pg")
TRAIN_IMAGES = {"cifar10": 50_000, "imagenet32": 1_281_167, "imagenet64": 1_281_167}
SIDE = {"cifar10": 32, "imagenet32": 32, "imagenet64": 64}
GUARD_SECONDS = 480   # a tiny variant takes 1.5-3 minutes on 2 cores shared with other work


def header(preset: str) -> str:
    text = (REPO / "workflow" / "presets" / f"{preset}.yaml").read_text()
    return "\n".join(line for line in text.splitlines() if line.startswith("#"))


def resource_flags(preset: str) -> list[str]:
    """The --set-threads / --set-resources arguments of the header's command line."""
    flags = []
    for line in header(preset).splitlines():
        line = line.lstrip("#").strip().rstrip("\\")
        if line.startswith(("--set-threads", "--set-resources")):
            flags += shlex.split(line)
    return flags


def sized(flags: list[str]) -> dict[str, dict[str, int]]:
    """{rule: {resource or "threads": value}} from the flags."""
    out, key = {}, None
    for word in flags:
        if word.startswith("--"):
            key = "threads" if word == "--set-threads" else None
            continue
        rule, setting = word.split(":", 1) if key is None else word.split("=", 1)
        if key is None:
            name, value = setting.split("=")
            out.setdefault(rule, {})[name] = int(value)
        else:
            out.setdefault(rule, {})["threads"] = int(setting)
    return out


def write_stand_in(dataset: str, directory, n_train: int, n_test: int, seed: int = 0):
    """Random images of the dataset's size in its distributed format."""
    rng = np.random.default_rng(seed)
    side = SIDE[dataset]
    # smooth images (a low-resolution pattern upsampled), so that the teacher and the patches see structure
    def images(n):
        low = rng.integers(0, 256, (n, side // 8, side // 8, 3), dtype=np.uint8)
        return np.repeat(np.repeat(low, 8, 1), 8, 2)
    if dataset == "cifar10":
        return photos.write_cifar10(directory, images(n_train), images(n_test))
    return photos.write_imagenet_npz(directory, images(n_train), images(n_test), batches=10)


def dry_run_jobs(text: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, {field: value}) of every job block of a dry run's output."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            fields = dict(re.findall(r"^\s{4}(\w+): (.*)$", block, re.M))
            jobs.append((m.group(1), fields))
    return jobs


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_are_valid_and_name_their_own_run(preset):
    raw = load_yaml(REPO / "workflow" / "presets" / f"{preset}.yaml")
    assert raw["run"] == preset
    validated(raw)
    validated(merged_config(preset))
    for section in ("baseline", "hclt"):   # the controls keep LVD's budget
        assert merged_config(preset)[section]["epochs"] == "auto"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_dry_run_sized(tmp_path, preset):
    cfg = merged_config(preset)
    work = copy_workflow(tmp_path / "wf")
    data = write_stand_in(cfg["data"]["dataset"], tmp_path / "data", 20, 4)
    (work / "paths.yaml").write_text(yaml.safe_dump({"data": {"path": str(data)}}))
    flags = resource_flags(preset)
    assert flags, f"{preset}: the header gives no --set-resources"
    proc, _ = snakemake(work, "-n", "--cores", "64", "--configfile", f"workflow/presets/{preset}.yaml", "paths.yaml", *flags)
    out = proc.stdout + proc.stderr
    jobs = expected_jobs(cfg, text=False)
    assert job_stats(out) == jobs
    assert f"all 1: {sum(jobs.values())}." in header(preset).replace("\n#", "")
    want = sized(flags)
    seen = set()
    for rule, fields in dry_run_jobs(out):
        for name, value in want.get(rule, {}).items():
            got = fields.get("threads") if name == "threads" else \
                dict(kv.split("=", 1) for kv in fields.get("resources", "").split(", ") if "=" in kv).get(name)
            assert got == str(value), f"{preset}: {rule} {name} = {got}, the header says {value}"
            seen.add(rule)
    assert seen == set(want), f"{preset}: sized rules without a job: {set(want) - seen}"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_header_arithmetic(preset):
    """The header's L and memory figures follow from the preset's own settings."""
    cfg = merged_config(preset)
    d, top = cfg["data"], cfg["latent_top_em"]
    n = min(d["max_train"] or TRAIN_IMAGES[d["dataset"]], TRAIN_IMAGES[d["dataset"]])
    valid = int(round(d["valid_fraction"] * n))
    train = n - valid
    side = d["crop"] or SIDE[d["dataset"]]
    m = (side // d["patch_size"]) ** 2
    k = cfg["latents"]["num_states"][0]
    assert k == 1600 and cfg["latents"]["heads_per_cluster"] == 4 and cfg["latents"]["initial_heads"] == 2
    assert cfg["grow"]["epochs"] == 50 and cfg["grow"]["num_shards"] >= 4
    assert top["epochs"] == 10 and [p["epochs"] for p in top["next_phases"]] == [10]
    L = train * m * k * 4                        # bytes, float32
    L_valid = valid * m * k * 4
    x = train * side * side * 3 * 8              # the training split as int64 rows
    text = header(preset).replace("\n#", " ")
    assert f"{train:,} x {m} x {k:,} x 4 B = {L / 1e9:.2f} GB = {L / 2**30:.1f} GiB" in re.sub(r"\s+", " ", text)
    assert L / 2**30 < top["patch_lls_memory_gb"], "the header keeps L in memory"
    mem = sized(resource_flags(preset))["latent_top_em"]["mem_mb"]
    assert mem * 1e6 >= 1.25 * (L + L_valid + x), f"latent_top_em mem_mb {mem} below L + valid L + x (+25%)"
    # prepare_data holds the kept training images twice (valid split off) and one batch twice
    # (as read, transposed); the rule asks for 4000 MB unless the header says otherwise
    image = SIDE[d["dataset"]] ** 2 * 3
    batch = -(-TRAIN_IMAGES[d["dataset"]] // (5 if d["dataset"] == "cifar10" else 10)) * image
    need = 2 * n * image + 2 * batch
    assert sized(resource_flags(preset)).get("prepare_data", {}).get("mem_mb", 4000) * 1e6 >= 1.2 * need


TINY = {   # a few images and states; every protocol setting of the preset is kept
    "teacher": {"epochs": 1, "batch_size": 16, "dim": 8, "layers": 1, "latent_dim": 4, "codebook_size": 16,
                "num_mix": 1, "max_minutes": 0, "valid_max": 20},
    "embeddings": {"batch_size": 64},
    "latents": {"num_states": [8], "niter": 5, "nredo": 1},
    "pc": {"num_latents": 2, "top_init_epochs": 1},
    "grow": {"epochs": 1, "num_shards": 2, "prune_threshold": 0.001},
    "latent_top_em": {"epochs": 1, "next_phases": [{"epochs": 1, "step_size": 0.01, "step_size_end": 0.001}],
                      "batch_size": 32},
    "finetune": {"epochs": 1, "full_batch_epochs": 0, "batch_size": 32},
    "baseline": {"batch_size": 32},
    "hclt": {"batch_size": 32},
    "evaluate": {"num_seeds": 1, "num_samples": 2, "num_inpaint": 2},
}


# imagenet32_pg's variant runs by default (npz batches, top-left crops, YCbCr); the other two
# (binary CIFAR-10 whole images; 8x8 patches on 32x32 crops of 64x64) are `slow`: together about
# 5 minutes on 2 busy cores, most of it the controls training for LVD's seconds.
@pytest.mark.parametrize("preset", [pytest.param("cifar10_pg", marks=pytest.mark.slow), "imagenet32_pg",
                                    pytest.param("imagenet64_pg", marks=pytest.mark.slow)])
def test_tiny_variant_whole_dag(tmp_path, preset):
    cfg = merged_config(preset)
    tiny = json.loads(json.dumps(TINY))
    tiny["data"] = {"path": str(write_stand_in(cfg["data"]["dataset"], tmp_path / "data", 60, 12, seed=1)),
                    "max_train": 0, "max_test": 0, "valid_fraction": 0.2}
    _update(cfg, tiny)
    work = copy_workflow(tmp_path / "wf")
    (work / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    proc, seconds = snakemake(work, "--cores", "2", "--configfile", f"workflow/presets/{preset}.yaml", "tiny.yaml")
    print(f"{preset} tiny variant: whole DAG in {seconds:.1f} s")
    assert job_stats(proc.stdout + proc.stderr) == expected_jobs(cfg, text=False)
    assert seconds < GUARD_SECONDS
    results = work / "results" / cfg["run"]
    d = cfg["data"]
    side = d["crop"] or SIDE[d["dataset"]]
    with h5py.File(results / "data.h5", "r") as f:
        a = f.attrs
        assert a["dataset"] == d["dataset"] and a["color"] == d["color"] and a["crop"] == d["crop"]
        assert f["test"].shape == (12, side, side, 3) and f["train"].shape == (48, side, side, 3)
        assert a["protocol"].startswith(d["dataset"]) and ("crop_origins" in f) == bool(d["crop"])
    m = json.loads((results / "k8" / "metrics.json").read_text())
    assert np.isfinite(m["test_bpd"]) and m["color"] == d["color"]
