rule prepare_data:
    input:
        dataset_files,
    output:
        "results/{run}/data.h5",
    log:
        "logs/{run}/prepare_data.log",
    benchmark:
        "benchmarks/{run}/prepare_data.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=stage_config("prepare_data"),
    shell:
        "python -m lvd.stages.prepare_data --config {params.cfg:q}"
        " --out {output} --device cpu --threads {threads} --log {log}"
