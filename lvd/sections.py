"""Which stage reads which section of the workflow config: the one table.

    SECTIONS[stage]        -> its config section (None: a stage without settings)
    section_of(stage)      -> the same, with an error naming the known stages
    stages_of(section)     -> the stages that read a section (in DAG order)
    describe(stage)        -> "config section 'latents' (stage assign_latents)"

Every rule runs the stage of its own name (``python -m lvd.stages.<rule>``) and passes it that
stage's section (``stage_config("<rule>")`` in workflow/rules/common.smk looks it up here); the
stages name the section in their config errors (lvd.stages.common.describe), lvd.configcheck in
its messages, and scripts/config_reference.py in docs/config.md. Most sections carry their
stage's name; the older, shorter ones (data, teacher, embeddings, latents, pc, grow, baseline,
hclt) do not, and renaming them would break every config file, so this table says which is which.
"""

from __future__ import annotations

# stage -> its section of the workflow config, in the order of the DAG
SECTIONS: dict[str, str | None] = {
    "prepare_data": "data",
    "train_teacher": "teacher",
    "extract_embeddings": "embeddings",
    "assign_latents": "latents",
    "random_latents": None,
    "materialize_pc": "pc",
    "latent_em": "latent_em",
    "grow_patch_pcs": "grow",
    "latent_top_em": "latent_top_em",
    "finetune": "finetune",
    "train_baseline": "baseline",
    "train_hclt": "hclt",
    "evaluate": "evaluate",
    "summarize": None,
}

# top-level keys that are not a stage's section
GLOBAL_KEYS = ("run",)


def section_of(stage: str) -> str | None:
    """The config section stage ``stage`` reads (None: it has no settings)."""
    try:
        return SECTIONS[stage]
    except KeyError:
        raise KeyError(f"no stage {stage!r}; the stages: {', '.join(SECTIONS)}") from None


def stages_of(section: str) -> list[str]:
    """The stages that read config section ``section`` (one today for every section)."""
    return [stage for stage, s in SECTIONS.items() if s == section]


def describe(stage: str) -> str:
    """How an error message names a stage's settings."""
    section = SECTIONS.get(stage)
    return f"config section {section!r} (stage {stage})" if section else f"the settings of stage {stage}"
