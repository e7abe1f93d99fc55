# The deep generative teacher (image VQ-VAE or language model) and its embeddings.
# Checkpoints under teacher_ckpt/ are not outputs: Snakemake would delete them before a
# rerun, and the stage resumes from them after a preempted job.


rule train_teacher:
    input:
        data="results/{run}/data.h5",
    output:
        teacher="results/{run}/teacher.pt",
        metrics="results/{run}/teacher_metrics.json",
    log:
        "logs/{run}/train_teacher.log",
    benchmark:
        "benchmarks/{run}/train_teacher.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    params:
        cfg=stage_config("train_teacher"),
        ckpt_dir="results/{run}/teacher_ckpt",
    shell:
        "python -m lvd.stages.train_teacher --config {params.cfg:q}"
        " --data {input.data} --out {output.teacher} --metrics {output.metrics}"
        " --ckpt-dir {params.ckpt_dir} --threads {threads} --log {log}"


rule extract_embeddings:
    input:
        data="results/{run}/data.h5",
        teacher="results/{run}/teacher.pt",
    output:
        "results/{run}/embeddings.h5",
    log:
        "logs/{run}/extract_embeddings.log",
    benchmark:
        "benchmarks/{run}/extract_embeddings.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=1,
    params:
        cfg=stage_config("extract_embeddings"),
    shell:
        "python -m lvd.stages.extract_embeddings --config {params.cfg:q}"
        " --data {input.data} --teacher {input.teacher} --out {output}"
        " --threads {threads} --log {log}"
