"""The config schema: it rejects what it should, fills defaults, and matches the stages' Configs."""

import copy
import dataclasses
import importlib
import re
import typing

import pytest
from snakemake.utils import validate
from snakemake_interface_common.exceptions import WorkflowError
from workflow_helpers import PRESETS, REPO, STAGE_SECTIONS, load_yaml, merged_config

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

# keys the workflow reads itself and hands to the stage another way (the sweep: --num-states K)
SWEEP_KEYS = {("latents", "num_states")}
# "auto" in the config, resolved by the workflow (common.smk lvd_budget) before the stage sees it
AUTO_KEYS = {(section, name) for section in ("baseline", "hclt") for name in ("epochs", "full_batch_epochs")}
JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null", tuple: "array"}


def validated(cfg):
    cfg = copy.deepcopy(cfg)
    validate(cfg, str(SCHEMA))
    return cfg


def schema_sections():
    return load_yaml(SCHEMA)["properties"]


def stage_config_class(stage):
    return importlib.import_module(f"lvd.stages.{stage}").Config


def test_every_object_forbids_unknown_keys_and_every_key_has_default_and_description():
    def walk(node, where):
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, f"{where}: additionalProperties"
            for key, sub in node["properties"].items():
                walk(sub, f"{where}.{key}")
        if where != "config":
            assert "default" in node, f"{where}: no default"
            assert node.get("description"), f"{where}: no description"

    walk(load_yaml(SCHEMA), "config")


@pytest.mark.parametrize("cfg, key", [
    ({"data": {"dataset": "digits", "patchsize": 2}}, "patchsize"),
    ({"finetune": {"epochz": 3}}, "epochz"),
    ({"runn": "x"}, "runn"),
])
def test_unknown_key_is_rejected_naming_it(cfg, key):
    with pytest.raises(WorkflowError, match=rf"'{key}' was unexpected"):
        validated(cfg)


@pytest.mark.parametrize("cfg, fragment", [
    ({"latents": {"num_states": 8}}, "is not of type 'array'"),
    ({"latents": {"num_states": [8, 0]}}, "less than the minimum of 1"),
    ({"latents": {"num_states": []}}, "should be non-empty"),
    ({"data": {"dataset": "cifar"}}, "'cifar' is not one of"),
    ({"run": "a/b"}, "does not match"),
    ({"latent_em": {"num_shards": "2"}}, "is not of type 'integer'"),
])
def test_bad_values_are_rejected(cfg, fragment):
    with pytest.raises(WorkflowError, match=re.escape(fragment)):
        validated(cfg)


def test_defaults_fill_an_empty_config_with_the_stage_defaults():
    cfg = validated({})
    sections = schema_sections()
    assert set(cfg) == set(sections)
    assert cfg["run"] == "default" and cfg["latents"]["num_states"] == [64]
    # a partly given section keeps its values and gains the rest
    part = validated({"finetune": {"epochs": 3}})["finetune"]
    assert part["epochs"] == 3 and part["pseudocount"] == sections["finetune"]["properties"]["pseudocount"]["default"]


@pytest.mark.parametrize("stage", sorted(STAGE_SECTIONS))
def test_schema_section_matches_stage_config_dataclass(stage):
    """Properties == dataclass fields, defaults equal, JSON types agree with the annotations."""
    cls = stage_config_class(stage)
    section = STAGE_SECTIONS[stage]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if section is None:
        assert not fields, f"lvd.stages.{stage}.Config has fields {sorted(fields)} but no config section"
        return
    props = schema_sections()[section]["properties"]
    assert set(props) == set(fields), (
        f"schema section {section!r} vs lvd.stages.{stage}.Config: only in schema "
        f"{sorted(set(props) - set(fields))}, only in Config {sorted(set(fields) - set(props))}")
    hints = typing.get_type_hints(cls)
    for name, field in fields.items():
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        schema_default = props[name]["default"]
        if (section, name) in SWEEP_KEYS:
            assert schema_default == [default], f"{section}.{name}"
            continue
        if (section, name) in AUTO_KEYS:
            assert schema_default == "auto" and hints[name] is int, f"{section}.{name}"
            assert props[name]["anyOf"] == [{"type": "integer", "minimum": 0}, {"const": "auto"}]
            continue
        if isinstance(default, tuple):
            default = list(default)
        assert schema_default == default, f"{section}.{name}: schema default {schema_default!r} != {default!r}"
        allowed = typing.get_args(hints[name]) or (hints[name],)
        types = props[name]["type"]
        types = set(types) if isinstance(types, list) else {types}
        assert types == {JSON_TYPES.get(t, "?") for t in allowed}, f"{section}.{name}: {types} vs {allowed}"


def test_every_stage_module_has_a_section_entry():
    """A stage module (a Config and a main) without an entry would escape the sync test."""
    modules = {p.stem for p in (REPO / "lvd" / "stages").glob("*.py")
               if re.search(r"^class Config\b", p.read_text(), flags=re.M)
               and re.search(r"^def main\(", p.read_text(), flags=re.M)}
    assert "prepare_data" in modules and "common" not in modules
    assert modules <= set(STAGE_SECTIONS), f"stages without an entry here: {sorted(modules - set(STAGE_SECTIONS))}"


def test_config_yaml_is_complete_and_every_key_is_commented():
    cfg = load_yaml(REPO / "config.yaml")
    assert validated(cfg) == cfg, "config.yaml should spell out every key (no schema default needed)"
    lines = (REPO / "config.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*\w+:", line):
            commented = "#" in line or (i > 0 and lines[i - 1].lstrip().startswith("#"))
            assert commented, f"config.yaml line {i + 1} has no comment: {line!r}"


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_are_valid_and_name_their_own_run(preset):
    raw = load_yaml(REPO / "workflow" / "presets" / f"{preset}.yaml")
    assert raw.get("run") and raw["run"] != load_yaml(REPO / "config.yaml")["run"]
    validated(raw)  # on its own
    validated(merged_config(preset))  # and merged over config.yaml, as Snakemake does


@pytest.mark.parametrize("preset", [None, *PRESETS])
def test_controls_get_the_lvd_training_budget(preset):
    """Same number of passes over the training set as the LVD pipeline: `auto` everywhere, and
    the workflow resolves it to latent_em (mini- and full-batch) + top + finetune epochs."""
    cfg = validated(merged_config(preset))
    for section in ("baseline", "hclt"):
        assert cfg[section]["epochs"] == "auto" and cfg[section]["full_batch_epochs"] == "auto", section
