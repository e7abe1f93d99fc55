"""Checks of the workflow config that its JSON schema cannot express, and YAML errors with a line.

    reject_renamed_keys(config)             # a key of an older layout: ValueError naming its new place
    reject_float_integers(config, schema)   # 4.0 where the schema says integer: ValueError naming the key
    check_yaml_files(paths)                 # a YAML syntax error: ValueError "file:line:column: problem"
    python -m lvd.configcheck FILE...       # all three, for config files given to --configfile

JSON Schema counts 4.0 as an integer, so the schema alone lets ``latents.num_states: [4.0]``
through (it then builds paths like ``k4.0/`` and crashes in a stage). Snakemake parses the
``--configfile`` files itself, before the Snakefile runs, and reports a YAML syntax error
without a file or line; ``python -m lvd.configcheck`` names both. A key that moved (``RENAMED``)
would only be "unexpected" to the schema; ``reject_renamed_keys`` says where it went.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from lvd import sections


# the workflow's schema, found from this file (not the working directory), as the Snakefile
# finds it with workflow.source_path
SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"

# keys of an older config layout -> where they are now ("section.key")
RENAMED = {
    "latent_em.top_epochs": "latent_top_em.epochs",
    "latent_em.top_batch_size": "latent_top_em.batch_size",
    "latent_em.top_step_size": "latent_top_em.step_size",
    "latent_em.top_step_size_end": "latent_top_em.step_size_end",
    "latent_em.lls_memory_gb": "latent_top_em.patch_lls_memory_gb",
    "latent_top_em.second_epochs": "latent_top_em.next_phases[0].epochs",
    "latent_top_em.second_step_size": "latent_top_em.next_phases[0].step_size",
    "latent_top_em.second_step_size_end": "latent_top_em.next_phases[0].step_size_end",
}


def moved_keys(section: str | None, keys) -> dict[str, str]:
    """{"section.key": its new "section.key"} for the ``keys`` of ``section`` that moved."""
    return {f"{section}.{k}": RENAMED[f"{section}.{k}"] for k in keys if f"{section}.{k}" in RENAMED}


def reject_renamed_keys(config: dict) -> None:
    """Raise ValueError naming every key of ``config`` that moved, with its new place."""
    moved = {}
    for section, value in (config or {}).items():
        if isinstance(value, dict):
            moved.update(moved_keys(section, value))
    if moved:
        where = "; ".join(f"config key {old!r} is now {new!r}" for old, new in moved.items())
        readers = sorted({new.split(".")[0] for new in moved.values()})
        readers = "; ".join(f"section {s!r} is read by stage {', '.join(sections.stages_of(s))}" for s in readers)
        raise ValueError(f"{where} ({readers}; move the key there)")


def _types(schema: dict) -> set[str]:
    t = schema.get("type", ())
    return {t} if isinstance(t, str) else set(t)


def _subschemas(schema: dict) -> list[dict]:
    """The schema and the branches of anyOf / oneOf / allOf (one level of nesting each)."""
    out = [schema]
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, ()):
            if isinstance(sub, dict):
                out += _subschemas(sub)
    return out


def _integer_only(schemas: list[dict]) -> bool:
    """Some branch allows integers and none allows other numbers."""
    types = set().union(*(_types(s) for s in schemas))
    return "integer" in types and "number" not in types


def _walk(value: Any, schema: dict, key: str) -> None:
    schemas = _subschemas(schema)
    if isinstance(value, float) and _integer_only(schemas):
        hint = f" (write {int(value)})" if value.is_integer() else ""
        raise ValueError(f"config key {key!r} is {value!r}, expected an integer{hint}")
    if isinstance(value, dict):
        for name, item in value.items():
            sub = {}
            for s in schemas:
                props = s.get("properties") or {}
                if name in props:
                    sub = props[name]
                    break
                extra = s.get("additionalProperties")
                if isinstance(extra, dict):
                    sub = extra
            _walk(item, sub, f"{key}.{name}" if key else str(name))
    elif isinstance(value, (list, tuple)):
        for s in schemas:
            items = s.get("items")
            if isinstance(items, dict):
                for i, item in enumerate(value):
                    _walk(item, items, f"{key}[{i}]")
                break


def reject_float_integers(config: dict, schema: dict | str | Path) -> None:
    """Raise ValueError naming the first key whose value is a float (such as 2.0) where
    ``schema`` (a dict, or the path of a YAML/JSON schema file) allows only integers."""
    if not isinstance(schema, dict):
        schema = yaml.safe_load(Path(schema).read_text())
    _walk(config, schema, "")


def yaml_error(path: str | Path) -> str | None:
    """None when ``path`` parses as YAML, else "path:line:column: problem"."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return f"{path}: not UTF-8 text (byte {e.start})"
    except OSError as e:
        return f"{path}: cannot read ({e.strerror})"
    try:
        yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(p for p in (e.context, e.problem) if p)
        return f"{where}: YAML syntax error: {problem}"
    except yaml.YAMLError as e:
        return f"{path}: YAML error: {e}"
    return None


def check_yaml_files(paths) -> None:
    """Raise ValueError listing every file of ``paths`` that is not valid YAML, with its line."""
    errors = [e for e in map(yaml_error, paths) if e]
    if errors:
        raise ValueError("\n".join(errors))


def main(argv=None) -> int:
    """Check config files: YAML syntax, then moved keys and floats for integers against the schema."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="config files (config.yaml, presets, --configfile files)")
    p.add_argument("--schema", default=str(SCHEMA), help="the config schema (default: this checkout's)")
    args = p.parse_args(argv)
    try:
        check_yaml_files(args.files)
        for path in args.files:
            try:
                config = yaml.safe_load(Path(path).read_text()) or {}
                reject_renamed_keys(config)
                reject_float_integers(config, args.schema)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
