# Training the circuits of each arm (lvd: the teacher's latents, random_latents: the
# random-latent control) and seed: the patch heads with the latents observed (images only; one
# job per shard of the patch groups, then one job gathering the shards and training the top circuit;
# LVD-PG runs grow the shards with grow_patch_pcs instead, workflow/rules/pg.smk),
# fine-tuning on x alone; and the controls trained from scratch with LVD's budget: the
# baseline (LVD's structure, random init) and a plain HCLT of the same size (images).
# Checkpoints under *_ckpt/ are not outputs (see teacher.smk). Every trained circuit X.h5 has
# its curve's snapshots in X_snapshots/ beside it (evaluate scores them).
# Budget (docs/pc_stages.md, "Budgets"): under `budget: time` (images' default) a control
# trains for LVD's training seconds of its seed, so it waits for LVD's jobs and reads their
# benchmark files; under `passes` it does not depend on them.
# Processes: latent_top_em, finetune, train_baseline and train_hclt train one circuit on `tasks` processes
# (data-parallel EM; `--set-resources finetune:tasks=4 finetune:gpu=4`; on SLURM also
# `finetune:mpi=srun finetune:tasks_per_gpu=1`); docs/scaleout.md.


rule latent_em:
    input:
        data="results/{run}/data.h5",
        latents=arm_latents,
        pc="results/{run}/k{K}/{arm}/s{seed}/pc_init.h5",
    output:
        "results/{run}/k{K}/{arm}/s{seed}/latent_em/shard{shard}.h5",
    log:
        "logs/{run}/k{K}/{arm}/s{seed}/latent_em/shard{shard}.log",
    benchmark:
        "benchmarks/{run}/k{K}/{arm}/s{seed}/latent_em/shard{shard}.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    params:
        cfg=seeded_config("latent_em"),
        num_shards=len(SHARDS),
    shell:
        "python -m lvd.stages.latent_em --config {params.cfg:q}"
        " --data {input.data} --latents {input.latents} --pc {input.pc}"
        " --shard {wildcards.shard} --num-shards {params.num_shards} --out {output}"
        " --threads {threads} --log {log}"


rule latent_top_em:
    input:
        data="results/{run}/data.h5",
        latents=arm_latents,
        pc="results/{run}/k{K}/{arm}/s{seed}/pc_init.h5",
        shards=patch_shards,
    output:
        "results/{run}/k{K}/{arm}/s{seed}/pc_latent_em.h5",
    log:
        "logs/{run}/k{K}/{arm}/s{seed}/latent_top_em.log",
    benchmark:
        "benchmarks/{run}/k{K}/{arm}/s{seed}/latent_top_em.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    params:
        cfg=seeded_config("latent_top_em"),
        launch=launcher,
    shell:
        "{params.launch} python -m lvd.stages.latent_top_em --config {params.cfg:q}"
        " --data {input.data} --latents {input.latents} --pc {input.pc}"
        " --shards {input.shards} --out {output} --threads {threads} --log {log}"


rule finetune:
    input:
        data="results/{run}/data.h5",
        pc=finetune_start,
    output:
        pc="results/{run}/k{K}/{arm}/s{seed}/pc_final.h5",
        snapshots=directory("results/{run}/k{K}/{arm}/s{seed}/pc_final_snapshots"),
    log:
        "logs/{run}/k{K}/{arm}/s{seed}/finetune.log",
    benchmark:
        "benchmarks/{run}/k{K}/{arm}/s{seed}/finetune.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    params:
        cfg=seeded_config("finetune"),
        ckpt_dir="results/{run}/k{K}/{arm}/s{seed}/finetune_ckpt",
        launch=launcher,
    shell:
        "{params.launch} python -m lvd.stages.finetune --config {params.cfg:q}"
        " --data {input.data} --pc {input.pc} --out {output.pc}"
        " --snapshot-dir {output.snapshots} --ckpt-dir {params.ckpt_dir}"
        " --threads {threads} --log {log}"


rule train_baseline:
    input:
        data="results/{run}/data.h5",
        pc="results/{run}/k{K}/lvd/s{seed}/pc_init.h5",
        lvd_seconds=lvd_benchmarks("baseline"),
    output:
        circuit="results/{run}/k{K}/baseline/s{seed}.h5",
        snapshots=directory("results/{run}/k{K}/baseline/s{seed}_snapshots"),
    log:
        "logs/{run}/k{K}/baseline/s{seed}/train_baseline.log",
    benchmark:
        "benchmarks/{run}/k{K}/baseline/s{seed}/train_baseline.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    params:
        cfg=seeded_config("train_baseline"),
        ckpt_dir="results/{run}/k{K}/baseline/s{seed}_ckpt",
        launch=launcher,
    shell:
        "{params.launch} python -m lvd.stages.train_baseline --config {params.cfg:q}"
        " --data {input.data} --pc {input.pc} --out {output.circuit}"
        " --lvd-benchmarks {input.lvd_seconds} --snapshot-dir {output.snapshots}"
        " --ckpt-dir {params.ckpt_dir} --threads {threads} --log {log}"


rule train_hclt:
    input:
        data="results/{run}/data.h5",
        pc="results/{run}/k{K}/lvd/s{seed}/pc_init.h5",
        lvd_seconds=lvd_benchmarks("hclt"),
    output:
        circuit="results/{run}/k{K}/hclt/s{seed}.h5",
        snapshots=directory("results/{run}/k{K}/hclt/s{seed}_snapshots"),
    log:
        "logs/{run}/k{K}/hclt/s{seed}/train_hclt.log",
    benchmark:
        "benchmarks/{run}/k{K}/hclt/s{seed}/train_hclt.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    params:
        cfg=seeded_config("train_hclt"),
        ckpt_dir="results/{run}/k{K}/hclt/s{seed}_ckpt",
        launch=launcher,
    shell:
        "{params.launch} python -m lvd.stages.train_hclt --config {params.cfg:q}"
        " --data {input.data} --pc {input.pc} --out {output.circuit}"
        " --lvd-benchmarks {input.lvd_seconds} --snapshot-dir {output.snapshots}"
        " --ckpt-dir {params.ckpt_dir} --threads {threads} --log {log}"
