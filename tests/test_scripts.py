"""scripts/hclt_leaf_latents.py runs on a tiny MNIST-style directory and prints one JSON line
per (K, seed, layout) with validation and test bpd."""

import gzip
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_idx(path, x):
    raw = bytes([0, 0, 0x08, x.ndim]) + struct.pack(f">{x.ndim}I", *x.shape) + x.astype(">u1").tobytes()
    Path(path).write_bytes(gzip.compress(raw))


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hclt_leaf_latents_prints_valid_and_test_bpd(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (1, 28, 28))
    imgs = np.clip(base + rng.integers(-20, 20, (50, 28, 28)), 0, 255)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs[:40])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs[40:])
    load("hclt_leaf_latents").main(["--idx-dir", str(tmp_path), "--num-latents", "2", "--epochs", "1",
                                    "--full-batch-epochs", "1", "--valid", "8", "--batch-size", "16"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["leaf_latents"] for r in rows] == [True, False]
    for r in rows:
        assert len(r["seconds_per_epoch"]) == len(r["train_ll"]) == 2
        assert np.isfinite(r["valid_bpd"]) and np.isfinite(r["test_bpd"]) and r["valid_bpd"] > 0  # (32 images: overfit)
    assert rows[1]["num_edges"] < rows[0]["num_edges"] == 783


def test_engine_phases_prints_the_fused_phases():
    """(In a subprocess: the script wraps the engine's functions with timers.)"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "engine_phases.py"), "hmm", "--num-latents", "2",
                          "--steps", "2", "--warmup", "1", "--batch-size", "8"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "median step" in out and "fused kernels on" in out
    for phase in ("kernel up_level", "kernel down_level", "matmul up (W u)", "update (total)"):
        assert phase in out


def test_bench_paths_summary_gives_medians_and_each_runs_ratio(tmp_path):
    import os
    import subprocess
    import sys

    for rep, (step, ratio) in enumerate([(0.3, 0.5), (0.1, 0.7), (0.2, 0.6)], 1):
        (tmp_path / f"hmm_fused_{rep}.json").write_text(json.dumps(
            {"seconds_per_batch": step, "ratio": ratio, "matmul_peak_gflops": 100.0 * rep}))
    out = subprocess.run(["bash", str(ROOT / "scripts" / "bench_paths.sh"), "--summary"], capture_output=True,
                         text=True, check=True, env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}).stdout
    assert out.strip() == ("hmm      fused median step 0.2000 s; runs 0.300 / 0.100 / 0.200; "
                           "ratios 0.500 / 0.700 / 0.600; median peak 200 GFLOP/s")
    for rep in (1, 2):                                      # runs with the memory probe: its figures too
        (tmp_path / f"em_K32_spin_{rep}.json").write_text(json.dumps(
            {"seconds_per_batch": 0.05, "ratio": 0.3, "matmul_peak_gflops": 150.0, "memory_read_gbps": 20.0 * rep}))
    out = subprocess.run(["bash", str(ROOT / "scripts" / "bench_paths.sh"), "--summary"], capture_output=True,
                         text=True, check=True, env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}).stdout
    assert out.splitlines()[0] == ("em_K32   spin  median step 0.0500 s; runs 0.050 / 0.050; ratios 0.300 / 0.300; "
                                   "median peak 150 GFLOP/s; memory reads 20 / 40 GB/s")


def test_bf16_matmul_precision_measures_a_small_nonzero_change_and_restores_the_matmul(tmp_path, capsys):
    import lvd.pc.tree as tree
    import lvd.pc.treell as treell

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (1, 28, 28))
    write_idx(tmp_path / "train.gz", np.clip(base + rng.integers(-40, 40, (60, 28, 28)), 0, 255))
    before = tree._mm
    out = load("bf16_matmul_precision").main(["4", "--images", str(tmp_path / "train.gz"), "--train", "40",
                                              "--valid", "20"])
    assert tree._mm is before and treell._mm is before
    assert out["ll_float32"] != out["ll_bfloat16"]                 # the second run did round
    assert 0 < abs(out["bpd_change"]) < 0.01
    assert all(0 < v < 0.05 for v in out["flows_rel_l1"].values())
    assert "relative L1 difference" in capsys.readouterr().out


def test_bench_regions_prints_positive_per_call_times(capsys):
    res = load("bench_regions").main(["--calls", "20", "--repeats", "2"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == res
    assert res["torch_add_100k_us"] > 0 and res["threads"] >= 1
    if "numba_region_us" in res:
        assert 0 < res["numba_region_us_range"][0] <= res["numba_region_us"] <= res["numba_region_us_range"][1]
