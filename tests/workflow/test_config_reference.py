"""docs/config.md is generated from the schema and lvd.sections (scripts/config_reference.py)
and kept current; the table of sections and stages agrees with the schema and the rules."""

import importlib.util

import pytest

from lvd import sections
from workflow_helpers import REPO

spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
config_reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(config_reference)
SCHEMA = config_reference.load_schema()


def test_docs_config_md_is_current():
    written = (REPO / "docs" / "config.md").read_text()
    assert written == config_reference.render(SCHEMA), (
        "docs/config.md is stale: run python scripts/config_reference.py (it is generated from "
        "workflow/schemas/config.schema.yaml and lvd/sections.py)")


def test_check_flag_reports_a_stale_file(tmp_path):
    out = tmp_path / "config.md"
    assert config_reference.main(["--check", "--out", str(out)]) == 1
    assert config_reference.main(["--out", str(out)]) == 0
    assert config_reference.main(["--check", "--out", str(out)]) == 0


def test_every_key_has_a_type_default_and_description():
    for name, sub in SCHEMA["properties"].items():
        assert sub.get("description"), f"section {name}: no description"
        for key, spec in sub.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{key}: no description"
            assert "default" in spec, f"{name}.{key}: no default"
            assert config_reference.type_text(spec) != "any", f"{name}.{key}: no type"


def test_the_sections_table_matches_the_schema():
    stage_sections = {s for s in sections.SECTIONS.values() if s is not None}
    assert set(SCHEMA["properties"]) == stage_sections | set(sections.GLOBAL_KEYS)
    for section in stage_sections:  # the schema's own words agree with the table
        description = SCHEMA["properties"][section]["description"]
        for stage in sections.stages_of(section):
            assert description.startswith(stage) or f"lvd.stages.{stage}" in description, (section, stage)


def test_section_of_names_the_stages_when_asked_for_an_unknown_one():
    assert sections.section_of("assign_latents") == "latents" and sections.section_of("summarize") is None
    with pytest.raises(KeyError, match="no stage 'assign'.*assign_latents"):
        sections.section_of("assign")
    assert sections.describe("materialize_pc") == "config section 'pc' (stage materialize_pc)"
