# LVD-PG's progressive growing (latents.mode: clusters): every arm's and seed's patch circuits
# grown cluster by cluster, one job per shard of the clusters (grow.num_shards); latent_top_em
# gathers the shards (patch_shards in common.smk) as it gathers latent_em's, then the top
# distribution and finetune follow as in LVD.


rule grow_patch_pcs:
    input:
        data="results/{run}/data.h5",
        latents=arm_latents,
        embeddings="results/{run}/embeddings.h5",
        pc="results/{run}/k{K}/{arm}/s{seed}/pc_init.h5",
    output:
        "results/{run}/k{K}/{arm}/s{seed}/grow/shard{shard}.h5",
    log:
        "logs/{run}/k{K}/{arm}/s{seed}/grow/shard{shard}.log",
    benchmark:
        "benchmarks/{run}/k{K}/{arm}/s{seed}/grow/shard{shard}.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    params:
        cfg=seeded_config("grow_patch_pcs"),
        num_shards=len(GROW_SHARDS),
    shell:
        "python -m lvd.stages.grow_patch_pcs --config {params.cfg:q}"
        " --data {input.data} --latents {input.latents} --embeddings {input.embeddings}"
        " --pc {input.pc} --shard {wildcards.shard} --num-shards {params.num_shards}"
        " --out {output} --threads {threads} --log {log}"
