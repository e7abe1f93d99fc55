"""lvd.configcheck (floats for integers, YAML errors with a line) and lvd.io.read_json."""

from pathlib import Path

import pytest
import yaml

from lvd import configcheck, io

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_floats_for_integers_are_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"config key 'latents.num_states\[1\]' is 4.0, expected an integer "
                                         r"\(write 4\)"):
        configcheck.reject_float_integers({"latents": {"num_states": [2, 4.0]}}, SCHEMA)
    with pytest.raises(ValueError, match=r"'latent_em.epochs' is 2.5, expected an integer$"):
        configcheck.reject_float_integers({"latent_em": {"epochs": 2.5}}, SCHEMA)
    with pytest.raises(ValueError, match=r"'latents.max_points_per_centroid' is 256.0"):  # [integer, null]
        configcheck.reject_float_integers({"latents": {"max_points_per_centroid": 256.0}}, SCHEMA)


def test_numbers_integers_and_the_shipped_configs_pass():
    configcheck.reject_float_integers({"teacher": {"lr": 1.0, "mask_ratio": 0.5},      # numbers
                                       "latents": {"num_states": [4, 8], "max_points_per_centroid": None},
                                       "unknown": {"x": 1.0}}, SCHEMA)                # not in the schema
    for path in [REPO / "config.yaml", *sorted((REPO / "workflow" / "presets").glob("*.yaml"))]:
        configcheck.reject_float_integers(yaml.safe_load(path.read_text()), SCHEMA)
        assert configcheck.yaml_error(path) is None


def test_nested_schemas():
    schema = {"type": "object", "properties": {"a": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                                               "b": {"type": "object", "additionalProperties": {"type": "integer"}}}}
    with pytest.raises(ValueError, match="'a' is 3.0"):
        configcheck.reject_float_integers({"a": 3.0}, schema)
    with pytest.raises(ValueError, match="'b.x' is 1.0"):
        configcheck.reject_float_integers({"b": {"x": 1.0}}, schema)
    configcheck.reject_float_integers({"a": None, "b": {"x": 1}}, schema)


def test_yaml_syntax_errors_name_file_and_line(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("run: x\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: x\nlatents:\n  num_states: [4, 8\n  seed: 1\n")
    msg = configcheck.yaml_error(bad)
    assert msg.startswith(f"{bad}:4:") and "YAML syntax error" in msg
    with pytest.raises(ValueError, match="bad.yaml:4:"):
        configcheck.check_yaml_files([good, bad])
    configcheck.check_yaml_files([good])
    assert configcheck.main([str(good), str(bad), "--schema", str(SCHEMA)]) == 1
    assert "bad.yaml:4:" in capsys.readouterr().err
    floats = tmp_path / "floats.yaml"
    floats.write_text("latents:\n  num_states: [4.0]\n")
    assert configcheck.main([str(floats), "--schema", str(SCHEMA)]) == 1
    assert "floats.yaml: config key 'latents.num_states[0]' is 4.0" in capsys.readouterr().err
    assert configcheck.main([str(good), "--schema", str(SCHEMA)]) == 0


def test_read_json_names_the_file(tmp_path):
    p = tmp_path / "teacher_metrics.json"
    p.write_text('{"teacher_test_bpd": 2.5}')
    assert io.read_json(p) == {"teacher_test_bpd": 2.5}
    p.write_bytes(b'{"teacher_test_bpd": \xff\xfe}')
    with pytest.raises(io.ArtifactError, match=r"teacher_metrics\.json: not UTF-8 text \(byte 21"):
        io.read_json(p, "teacher_metrics.json from train_teacher")
    p.write_text('{"teacher_test_bpd": 2.5,\n}')
    with pytest.raises(io.ArtifactError, match=r"teacher_metrics\.json: not valid JSON \(line 2, column 1"):
        io.read_json(p)
    with pytest.raises(io.ArtifactError, match=r"absent\.json: file not found \(expected teacher_metrics"):
        io.read_json(tmp_path / "absent.json", "teacher_metrics.json from train_teacher")


def test_keys_of_the_old_latent_em_layout_are_refused_naming_their_new_place():
    with pytest.raises(ValueError, match=r"config key 'latent_em.top_epochs' is now 'latent_top_em.epochs'; "
                                         r"config key 'latent_em.lls_memory_gb' is now "
                                         r"'latent_top_em.patch_lls_memory_gb'"):
        configcheck.reject_renamed_keys({"latent_em": {"epochs": 2, "top_epochs": 3, "lls_memory_gb": 1.0}})
    for path in [REPO / "config.yaml", *sorted((REPO / "workflow" / "presets").glob("*.yaml"))]:
        configcheck.reject_renamed_keys(yaml.safe_load(path.read_text()))
    old = REPO / "workflow" / "presets" / "tiny.yaml"
    assert configcheck.main([str(old), "--schema", str(SCHEMA)]) == 0


def test_a_stage_given_a_moved_key_names_its_new_place():
    from lvd.stages import common, latent_em

    with pytest.raises(SystemExit, match=r"unknown key\(s\) \['top_step_size'\] in config section 'latent_em' "
                                         r"\(stage latent_em\).*'latent_em.top_step_size' is now "
                                         r"'latent_top_em.step_size'"):
        common.load_config(latent_em.Config, '{"top_step_size": 0.1}')


def test_configcheck_command_names_a_moved_key(tmp_path, capsys):
    bad = tmp_path / "old.yaml"
    bad.write_text("latent_em:\n  top_batch_size: 128\n")
    assert configcheck.main([str(bad), "--schema", str(SCHEMA)]) == 1
    assert "'latent_em.top_batch_size' is now 'latent_top_em.batch_size'" in capsys.readouterr().err


def test_the_default_schema_is_found_from_the_package_not_the_working_directory(tmp_path, monkeypatch, capsys):
    floats = tmp_path / "floats.yaml"
    floats.write_text("latents:\n  num_states: [4.0]\n")
    monkeypatch.chdir(tmp_path)
    assert configcheck.SCHEMA == SCHEMA and configcheck.main([str(floats)]) == 1
    assert "expected an integer" in capsys.readouterr().err
