# Test metrics of every arm and seed and the figures for each K, then the sweep summary.
# evaluate reads the snapshots beside every circuit (X.h5 -> X_snapshots/) for the curves of
# bpd against training seconds, and the benchmark files for those seconds.


rule evaluate:
    input:
        data="results/{run}/data.h5",
        pc=arm_files("pc_final.h5", "lvd"),
        random_latents=arm_files("pc_final.h5", "random_latents"),
        baseline=control_files("baseline"),
        hclt=control_files("hclt"),
        teacher_metrics="results/{run}/teacher_metrics.json",
        snapshots=arm_files("pc_final_snapshots", "lvd")
        + arm_files("pc_final_snapshots", "random_latents")
        + [name.replace(".h5", "_snapshots") for name in control_files("baseline")]
        + [name.replace(".h5", "_snapshots") for name in control_files("hclt")],
    output:
        **evaluate_figures(),
        compute=report(
            "results/{run}/k{K}/figures/compute.png",
            caption="../report/compute.rst",
            category="Figures",
            subcategory="k{K}",
        ),
        metrics="results/{run}/k{K}/metrics.json",
    log:
        "logs/{run}/k{K}/evaluate.log",
    benchmark:
        "benchmarks/{run}/k{K}/evaluate.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    params:
        cfg=stage_config("evaluate"),
        figdir=figure_dir,
        benchmarks="benchmarks/{run}",
    shell:
        "python -m lvd.stages.evaluate --config {params.cfg:q}"
        " --data {input.data} --pc {input.pc} --random-latents {input.random_latents}"
        " --baseline {input.baseline} --hclt {input.hclt}"
        " --teacher-metrics {input.teacher_metrics} --benchmarks-dir {params.benchmarks}"
        " --out {output.metrics} --figdir {params.figdir} --threads {threads} --log {log}"


rule summarize:
    input:
        metrics_files(),
    output:
        table=report(
            "results/{run}/summary.tsv",
            caption="../report/summary_table.rst",
            category="Sweep",
        ),
        plot=report(
            "results/{run}/summary.png",
            caption="../report/summary.rst",
            category="Sweep",
        ),
    log:
        "logs/{run}/summarize.log",
    benchmark:
        "benchmarks/{run}/summarize.tsv"
    conda:
        "../../envs/lvd.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m lvd.stages.summarize --metrics {input} --out {output.table}"
        " --plot {output.plot} --device cpu --threads {threads} --log {log}"
