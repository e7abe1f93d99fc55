# One k{K}/ directory per K in latents.num_states: k-means latents, their random control (the
# arm random_latents), then the count-initialized PC of each arm and seed. num_states reaches
# the stage as --num-states K (not through params), so adding a K to the list leaves the other
# K's results alone.


rule assign_latents:
    input:
        embeddings="results/{run}/embeddings.h5",
    output:
        "results/{run}/k{K}/latents.h5",
    log:
        "logs/{run}/k{K}/assign_latents.log",
    benchmark:
        "benchmarks/{run}/k{K}/assign_latents.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=latents_gpus(),
    params:
        cfg=stage_config("assign_latents", drop=["num_states"]),
    shell:
        "python -m lvd.stages.assign_latents --config {params.cfg:q}"
        " --embeddings {input.embeddings} --num-states {wildcards.K} --out {output}"
        " --threads {threads} --log {log}"


rule random_latents:
    input:
        "results/{run}/k{K}/latents.h5",
    output:
        "results/{run}/k{K}/random_latents/s{seed}/latents.h5",
    log:
        "logs/{run}/k{K}/random_latents/s{seed}/random_latents.log",
    benchmark:
        "benchmarks/{run}/k{K}/random_latents/s{seed}/random_latents.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m lvd.stages.random_latents --latents {input} --seed {wildcards.seed}"
        " --out {output} --device cpu --threads {threads} --log {log}"


rule materialize_pc:
    input:
        data="results/{run}/data.h5",
        latents=arm_latents,
    output:
        "results/{run}/k{K}/{arm}/s{seed}/pc_init.h5",
    log:
        "logs/{run}/k{K}/{arm}/s{seed}/materialize_pc.log",
    benchmark:
        "benchmarks/{run}/k{K}/{arm}/s{seed}/materialize_pc.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        cfg=seeded_config("materialize_pc"),
    shell:
        "python -m lvd.stages.materialize_pc --config {params.cfg:q}"
        " --data {input.data} --latents {input.latents} --out {output}"
        " --device cpu --threads {threads} --log {log}"
