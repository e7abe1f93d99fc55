# Helpers shared by the rules. Named functions only (no lambdas), no rules here.
#
# Paths: results/{run}/ for artifacts, logs/{run}/ and benchmarks/{run}/ beside them, one
# k{K}/ directory below each for every K in latents.num_states. The wildcard `run` is
# pinned to config["run"], so a path of another run can never be built with this config.
# Below k{K}/, the arms of the comparison, each once per seed s in 0 .. evaluate.num_seeds-1:
#   lvd/s{seed}/      the teacher's latents -> pc_init, latent_em shards (LVD-PG: grow/ shards),
#                     pc_latent_em, pc_final
#   random_latents/s{seed}/   the same pipeline on random latents (z permuted per position)
#   baseline/s{seed}.h5   the LVD structure, random init, EM on x alone
#   hclt/s{seed}.h5       a plain HCLT of about the LVD circuit's size (images only)
# An arm's folder is its name in metrics.json and in evaluate's tables too (lvd.arms); a run
# with folders under an old name (random/) stops here, naming the new one.

import json
import os
import re

from lvd import arms, sections

RUN = config["run"]
NUM_STATES = config["latents"]["num_states"]
SHARDS = list(range(config["latent_em"]["num_shards"]))
# grow_patch_pcs's shards (latents.mode: clusters)
GROW_SHARDS = list(range(config["grow"]["num_shards"]))
SEEDS = list(range(config["evaluate"]["num_seeds"]))
# the arms trained through materialize_pc .. finetune (the controls baseline, hclt: pc.smk)
ARMS = ("lvd", "random_latents")
TEXT_DATASETS = ("wikitext2",)
# results/{run}/k*/random/ of an older version: rename or delete
arms.reject_old_dirs(RUN)


wildcard_constraints:
    run=re.escape(RUN),
    K=r"[1-9][0-9]*",
    shard=r"[0-9]+",
    seed=r"[0-9]+",
    arm="|".join(ARMS),


def stage_config(stage, drop=()):
    """The JSON of stage `stage`'s config section (minus `drop`): the stage's only settings.

    The section is the one lvd.sections.SECTIONS names for the stage. Passed as params, so
    editing the section reruns that stage and what follows it. `epochs: auto` and
    `full_batch_epochs: auto` (baseline, hclt) are resolved to LVD's budget (lvd_budget).
    """
    section = sections.section_of(stage)
    settings = {key: value for key, value in config[section].items() if key not in drop}
    for key, value in lvd_budget().items():
        if key in settings and settings[key] == "auto":
            settings[key] = value
    return json.dumps(settings, sort_keys=True)


def lvd_budget():
    """LVD's passes over the training set, the budget of the controls trained from scratch.

    Every pass of EM counts as an epoch, whichever part of the circuit it trains. Images:
    latent_em epochs + latent_top_em epochs (every phase, mini-batch and full-batch) + finetune
    epochs; text: finetune epochs. Then the same full-batch epochs as finetune.
    """
    epochs = config["finetune"]["epochs"]
    if not is_text():
        top = config["latent_top_em"]
        phases = [top["epochs"]] + [p["epochs"] for p in top.get("next_phases", [])]
        epochs += sum(phases) + top["full_batch_epochs"]
        if is_pg():
            # every growing round trains every cluster: grow.epochs + its full-batch epochs
            lat, grow = config["latents"], config["grow"]
            rounds = lat["heads_per_cluster"] - lat["initial_heads"] + 1
            epochs += rounds * (grow["epochs"] + grow["full_batch_epochs"])
        else:
            em = config["latent_em"]
            epochs += em["epochs"] + em["full_batch_epochs"]
    return {
        "epochs": epochs,
        "full_batch_epochs": config["finetune"]["full_batch_epochs"],
    }


def seeded_config(stage):
    """params function: the stage's section as JSON with `seed` raised by the {seed} wildcard."""

    def seeded(wildcards):
        settings = json.loads(stage_config(stage))
        settings["seed"] = settings["seed"] + int(wildcards.seed)
        return json.dumps(settings, sort_keys=True)

    return seeded


def is_text():
    """True when the dataset is text (an HMM over token windows), else images."""
    return config["data"]["dataset"] in TEXT_DATASETS


def is_pg():
    """True for LVD-PG runs (latents.mode: clusters): grow_patch_pcs replaces latent_em."""
    return config["latents"]["mode"] == "clusters" and not is_text()


def control_budget(section):
    """A control's budget (baseline, hclt): passes | time; auto = time for images, passes for text."""
    value = config[section]["budget"]
    if value == "auto":
        return "passes" if is_text() else "time"
    return value


def lvd_benchmarks(section):
    """A control's input under budget time: the benchmark files of LVD's training jobs of its
    seed (their seconds are its budget; docs/pc_stages.md, "Budgets"); none under passes.
    """
    if control_budget(section) != "time":
        return []
    names = ["materialize_pc", "finetune"]
    if is_pg():
        names += ["latent_top_em", *[f"grow/shard{i}" for i in GROW_SHARDS]]
    elif not is_text():
        names += ["latent_top_em", *[f"latent_em/shard{i}" for i in SHARDS]]
    return [f"benchmarks/{{run}}/k{{K}}/lvd/s{{seed}}/{name}.tsv" for name in names]


def patch_shards(wildcards):
    """latent_top_em's shards: grow_patch_pcs's (LVD-PG) or latent_em's, of one arm and seed."""
    if is_pg():
        return expand(
            "{dir}/grow/shard{shard}.h5", dir=arm_dir(wildcards), shard=GROW_SHARDS
        )
    return expand(
        "{dir}/latent_em/shard{shard}.h5", dir=arm_dir(wildcards), shard=SHARDS
    )


def latents_gpus():
    """GPUs an assign_latents job claims: 1 unless FAISS is told to stay on the CPU."""
    return 0 if config["latents"]["use_gpu"] == "never" else 1


def arm_dir(wildcards):
    """results/{run}/k{K}/{arm}/s{seed}: one arm's circuits for one seed."""
    return f"results/{wildcards.run}/k{wildcards.K}/{wildcards.arm}/s{wildcards.seed}"


def arm_latents(wildcards):
    """The latents an arm materializes: the teacher's, or their per-seed permutation."""
    if wildcards.arm == "random_latents":
        return f"{arm_dir(wildcards)}/latents.h5"
    return f"results/{wildcards.run}/k{wildcards.K}/latents.h5"


def finetune_start(wildcards):
    """The circuit fine-tuning starts from.

    Images: after the latent-distribution EM step (pc_latent_em.h5). Text: the HMM is fully
    count-initialized by materialize_pc, so pc_init.h5 (latent_em is skipped).
    """
    name = "pc_init.h5" if is_text() else "pc_latent_em.h5"
    return f"{arm_dir(wildcards)}/{name}"


def arm_files(name, arm):
    """evaluate's inputs: file `name` of arm `arm` for every seed (K and run left open)."""
    return expand(
        "results/{{run}}/k{{K}}/{arm}/s{seed}/{name}", arm=arm, seed=SEEDS, name=name
    )


def control_files(control):
    """evaluate's inputs: baseline/s{seed}.h5 or hclt/s{seed}.h5 for every seed."""
    if control == "hclt" and is_text():
        return []
    return expand(
        "results/{{run}}/k{{K}}/{control}/s{seed}.h5", control=control, seed=SEEDS
    )


def figure_names():
    """The figures evaluate writes into k{K}/figures/ for this data kind."""
    if is_text():
        return ["perplexity"]
    return ["samples", "inpainting", "curves"] + (["growing"] if is_pg() else [])


def evaluate_figures():
    """evaluate's figure outputs, each a report item with its caption (report/<name>.rst)."""
    return {
        name: report(
            f"results/{{run}}/k{{K}}/figures/{name}.png",
            caption=f"../report/{name}.rst",
            category="Figures",
            subcategory="k{K}",
        )
        for name in figure_names()
    }


def figure_dir(wildcards, output):
    """--figdir of evaluate: the folder holding its figure outputs."""
    return os.path.join(os.path.dirname(output.metrics), "figures")


def metrics_files():
    """Every k{K}/metrics.json of this run: the sweep summarize gathers."""
    return expand("results/{run}/k{K}/metrics.json", run=RUN, K=NUM_STATES)


def final_outputs():
    """Targets of rule all."""
    summary = expand("results/{run}/summary.{ext}", run=RUN, ext=["tsv", "png"])
    return summary + metrics_files()


# more files below data.path than this: its folders are the input instead
MAX_DATASET_FILES = 1000


def dataset_files(wildcards):
    """Input of prepare_data: the file data.path names, or every file below the directory it
    names (hidden ones skipped), so a replaced dataset reruns prepare_data and what follows.
    A directory of more than MAX_DATASET_FILES files (ImageNet as PNG folders: 1.3 million)
    gives its folders instead: adding or removing an image reruns prepare_data (a folder's
    time stamp changes), an image rewritten in place does not.

    Empty (the source's default: bundled digits, the apt Fashion-MNIST) or missing: no input;
    the stage itself then reports the missing data naming data.path.
    """
    path = config["data"]["path"]
    if not path or not os.path.exists(path):
        return []
    if os.path.isfile(path):
        return [path]
    found, folders = [], []
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        folders.append(folder)
        if len(found) <= MAX_DATASET_FILES:
            names = [name for name in sorted(files) if not name.startswith(".")]
            found += [os.path.join(folder, name) for name in names]
    return found if len(found) <= MAX_DATASET_FILES else folders


def launcher(wildcards, resources):
    """params function: what a rule's `python -m lvd.stages...` runs under, for its `tasks`
    processes (data-parallel EM; docs/scaleout.md, "One circuit on several processes").

    tasks 1 (or no `tasks` resource): nothing, one process. tasks N > 1: torchrun's N processes
    on this machine; with an `mpi` resource (the SLURM executor's MPI jobs, which it does not
    wrap in an srun of its own), that launcher, e.g. `srun`, with N tasks that may span nodes.
    """
    tasks = int(getattr(resources, "tasks", 1) or 1)
    if tasks <= 1:
        return ""
    mpi = getattr(resources, "mpi", None)
    if mpi:
        return f"{mpi} --ntasks={tasks} --kill-on-bad-exit=1"
    # `--`: torchrun's parser would take the stage's --log for an ambiguous option of its own
    return (
        "python -m torch.distributed.run --standalone --no-python"
        f" --nproc-per-node={tasks} --"
    )
