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

    import os

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "engine_phases.py"), "hmm", "--num-latents", "2",
                          "--steps", "2", "--warmup", "1", "--batch-size", "8"],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "LVD_KERNELS": "numba"}).stdout
    assert "median step" in out and "fused kernels on" in out
    for phase in ("kernel up_level", "kernel down_level", "matmul up (W u)", "update (total)"):
        assert phase in out


def test_bench_paths_summary_gives_default_against_reference(tmp_path):
    import os
    import subprocess
    import sys

    for rep, (step, ref, ratio) in enumerate([(0.3, 0.6, 0.5), (0.1, 0.3, 0.7), (0.2, 0.2, 0.6)], 1):
        (tmp_path / f"hmm_{rep}.json").write_text(json.dumps(
            {"seconds_per_batch": step, "reference_seconds_per_batch": ref, "speedup": ref / step, "ratio": ratio,
             "matmul_peak_gflops": 100.0 * rep, "cpu_model": "Some CPU", "vector_isa": "avx2",
             "choices": {"up|1": {"chosen": "numba"}, "down|1": {"chosen": "torch"}}}))
    out = subprocess.run(["bash", str(ROOT / "scripts" / "bench_paths.sh"), "--summary"], capture_output=True,
                         text=True, check=True, env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}).stdout
    assert out.strip() == ("hmm      default 0.2000 s (ratio 0.500 / 0.700 / 0.600), reference 0.3000 s, speedup "
                           "2.00 / 3.00 / 1.00; peak 200 GFLOP/s; Some CPU (avx2); chosen: down:torch, up:numba")


def test_count_ops_counts_the_torch_paths_calls_per_level():
    """scripts/count_ops.py on a small HCLT: the torch path's step makes at most 16 non-view
    operator calls a level plus a fixed few (the EM update), whatever K."""
    import subprocess
    import sys

    counts = []
    for K in (4, 8):
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / "count_ops.py"), "--num-vars", "30",
                              "--num-cats", "5", "--num-latents", str(K), "--batch-size", "16", "--by-name"],
                             capture_output=True, text=True, check=True, cwd=ROOT).stdout
        r = json.loads(out.strip().splitlines()[-1])
        assert r["ops"] == sum(r["by_name"].values()) and r["ops"] <= 16 * r["depth"] + 60, r
        assert "aten::matmul" in r["by_name"] and "aten::view" not in r["by_name"]
        counts.append(r["ops"])
    assert counts[0] == counts[1]                           # calls do not grow with K


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
