"""envs/*.yaml (the conda environments of `--use-conda`) against pyproject.toml's dependencies.

Each file must list every dependency of pyproject.toml under its conda-forge name with the same
version bounds; the GPU file swaps the CPU builds for CUDA ones (CONDA_NAMES). The files are
not built under conda here: the tests install with pip.
"""

import re
import sys

import pytest
import yaml

from workflow_helpers import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
# pip name -> the conda-forge packages that may stand for it
CONDA_NAMES = {"torch": {"pytorch", "pytorch-gpu"}, "faiss-cpu": {"faiss-cpu", "faiss-gpu"},
               "matplotlib": {"matplotlib", "matplotlib-base"}}
SPEC = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(.*?)\s*$")


def parse(spec: str) -> tuple[str, str]:
    """("name", "version bounds without spaces") of "name >=1,<2" or "name>=1,<2"."""
    name, bounds = SPEC.match(spec).groups()
    return name.lower(), bounds.replace(" ", "")


def pyproject_dependencies() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return dict(parse(d) for d in project["dependencies"])


def test_there_are_environment_files():
    assert [p.name for p in ENV_FILES] == ["lvd-gpu.yaml", "lvd.yaml"]


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_every_pyproject_dependency_is_in_the_conda_environment(path):
    listed = dict(parse(d) for d in yaml.safe_load(path.read_text())["dependencies"] if isinstance(d, str))
    for name, bounds in pyproject_dependencies().items():
        names = CONDA_NAMES.get(name, {name})
        found = names & set(listed)
        assert found, f"{path.name} lacks {name} (as {' or '.join(sorted(names))})"
        got = listed[found.pop()]
        assert got == bounds, f"{path.name}: {name} {got!r}, pyproject.toml says {bounds!r}"
