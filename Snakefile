# Latent variable distillation (LVD) for probabilistic circuits: the workflow.
#
#   snakemake --cores all                                         # config.yaml (digits)
#   snakemake --cores all --configfile workflow/presets/tiny.yaml # a preset on top of it
#   snakemake --report report.html                                # figures and captions
#
# Every rule runs one stage, `python -m lvd.stages.<rule>`, whose settings arrive as the
# JSON of one config section (params: cfg), so editing a section reruns that stage and
# everything downstream. Edited Python code does not trigger reruns: use --forcerun <rule>.
# Outputs: results/{run}/..., one k{K}/ directory per value of latents.num_states.
#
# Deployed (-s this/Snakefile -d project, or as a `module`): every file the workflow opens is
# found from this Snakefile's directory; outputs, logs, benchmarks and a relative data.path
# from the working directory. docs/workflow.md, "Deploying".

from snakemake.utils import min_version, validate

from lvd.configcheck import reject_float_integers, reject_renamed_keys

min_version("8.0")

SCHEMA = workflow.source_path("workflow/schemas/config.schema.yaml")


# this workflow's config.yaml, then --configfile files over it (a module: its config only)
configfile: workflow.source_path("config.yaml")


reject_renamed_keys(config)  # a key of an older layout: named with its new place
validate(config, SCHEMA)  # fills in the schema's defaults
reject_float_integers(config, SCHEMA)  # 2.0 where an integer belongs


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/latents.smk"
include: "workflow/rules/pc.smk"
include: "workflow/rules/pg.smk"
include: "workflow/rules/evaluate.smk"


localrules:
    all,
    summarize,


rule all:
    default_target: True
    input:
        final_outputs(),
