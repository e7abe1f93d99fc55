"""A replaced dataset file at the same data.path reruns prepare_data (it is the rule's input)."""

import os

import numpy as np
import yaml
from workflow_helpers import copy_workflow, job_stats, snakemake


def _write_arrays(path, seed):
    rng = np.random.default_rng(seed)
    np.savez(path, train=rng.integers(0, 4, (40, 4, 4)).astype(np.uint8),
             test=rng.integers(0, 4, (12, 4, 4)).astype(np.uint8))


def test_a_replaced_dataset_reruns_prepare_data(tmp_path):
    wd = copy_workflow(tmp_path / "wf")
    (wd / "user").mkdir()
    _write_arrays(wd / "user" / "arrays.npz", seed=0)
    (wd / "array.yaml").write_text(yaml.safe_dump(
        {"run": "arr", "data": {"dataset": "array", "path": "user/arrays.npz", "num_cats": 4, "patch_size": 2}}))
    target = "results/arr/data.h5"
    args = ("--cores", "1", "--configfile", "array.yaml")
    snakemake(wd, target, *args)
    first = (wd / target).stat().st_mtime_ns
    proc, _ = snakemake(wd, target, "-n", *args)
    assert job_stats(proc.stdout) == {}  # up to date
    _write_arrays(wd / "user" / "arrays.npz", seed=1)  # another dataset, same path
    later = first + 10**9
    os.utime(wd / "user" / "arrays.npz", ns=(later, later))
    proc, _ = snakemake(wd, target, "-n", *args)
    assert job_stats(proc.stdout) == {"prepare_data": 1}
    assert "user/arrays.npz" in proc.stdout
    snakemake(wd, target, *args)
    assert (wd / target).stat().st_mtime_ns > first


def test_a_dataset_directory_lists_its_files(tmp_path):
    wd = copy_workflow(tmp_path / "wf")
    d = wd / "mnist"
    (d / "sub").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "sub/extra", ".hidden"):
        (d / name).write_bytes(b"x")
    (wd / "mnist.yaml").write_text(yaml.safe_dump({"run": "mn", "data": {"dataset": "mnist", "path": "mnist"}}))
    proc, _ = snakemake(wd, "results/mn/data.h5", "--cores", "1", "-n", "--configfile", "mnist.yaml")
    block = proc.stdout[proc.stdout.index("rule prepare_data:"):]
    inputs = block[block.index("input: ") + len("input: "):].splitlines()[0].split(", ")
    assert sorted(inputs) == ["mnist/sub/extra", "mnist/t10k-images-idx3-ubyte.gz", "mnist/train-images-idx3-ubyte.gz"]


def test_a_dataset_of_many_files_is_tracked_by_its_folders(tmp_path):
    """Past MAX_DATASET_FILES files below data.path (PNG folders) the folders are the input."""
    wd = copy_workflow(tmp_path / "wf")
    d = wd / "imgs"
    for sub in ("train", "valid"):
        (d / sub).mkdir(parents=True)
        for i in range(501):
            (d / sub / f"{i}.png").write_bytes(b"x")
    (wd / "png.yaml").write_text(yaml.safe_dump({"run": "png", "data": {"dataset": "imagenet32", "path": "imgs"}}))
    proc, _ = snakemake(wd, "results/png/data.h5", "--cores", "1", "-n", "--configfile", "png.yaml")
    block = proc.stdout[proc.stdout.index("rule prepare_data:"):]
    inputs = block[block.index("input: ") + len("input: "):].splitlines()[0].split(", ")
    assert sorted(inputs) == ["imgs", "imgs/train", "imgs/valid"]
