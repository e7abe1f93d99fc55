"""scripts/hclt_leaf_latents.py runs on a tiny MNIST-style directory and prints one JSON line
per (K, seed, layout) with validation and test bpd."""

import gzip
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest

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


# scripts/results_table.py: metrics.json as evaluate writes it (lvd.stages.evaluate, lvd.stages.curves)

def arm_metrics(prefix, unit, test, std, valid, params, seconds):
    t, v = f"{prefix}test_{unit}", f"{prefix}valid_{unit}"
    return {t: test, f"{t}_std": std, f"{t}_seeds": [test - std, test + std],
            v: valid, f"{v}_std": std, f"{v}_seeds": [valid] * 2,
            f"{prefix}num_params": params, f"{prefix}train_seconds": seconds,
            f"{prefix}train_seconds_seeds": [seconds - 1, seconds + 1],
            f"{prefix}cpu_seconds": 2 * seconds, f"{prefix}cpu_seconds_seeds": [2 * seconds - 2, 2 * seconds + 2]}


def read_off(unit, value, std, margin, beats_3std, reason=None, **extra):
    seeds = [None, None] if value is None else [value - std, value + std]
    return {f"test_{unit}": value, f"test_{unit}_std": std, f"test_{unit}_seeds": seeds, "margin": margin,
            "spread": std, "beats": beats_3std, "beats_3std": beats_3std, "reason": reason, **extra}


def image_metrics():
    m = {"kind": "image", "num_seeds": 2, "num_states": 16, "protocol": "digits, whole 8x8 images, RGB",
         "budget": "time", "teacher_test_bpd": 1.9, "teacher_gap": 0.2, "shared_seconds": 115.0}
    for arm, vals in (("", (2.1, 0.01, 2.15, 1234, 30.0)), ("random_latents_", (2.3, 0.02, 2.35, 1234, 33.0)),
                      ("baseline_", (2.2, 0.01, 2.25, 1234, 31.0)), ("hclt_", (2.15, 0.03, 2.2, 999, 29.0))):
        m.update(arm_metrics(arm, "bpd", *vals))
    m["controls"] = {a: {"margin": m[f"{a}_test_bpd"] - 2.1, "spread": 0.03, "beats": True, "beats_3std": False}
                     for a in ("random_latents", "baseline", "hclt")}
    m["equal_time"] = {
        "random_latents": read_off("bpd", 2.31, 0.02, 0.21, True, seconds_seeds=[29.0, 31.0], over_budget=False),
        "baseline": read_off("bpd", 2.5, 0.01, 0.4, True, seconds_seeds=[40.0, 42.5], over_budget=True),
        "hclt": read_off("bpd", 2.12, 0.03, 0.02, False, seconds_seeds=[29.0, 31.0], over_budget=False)}
    m["equal_passes"] = {
        "random_latents": read_off("bpd", 2.3, 0.02, 0.2, True),
        "baseline": read_off("bpd", None, None, None, None, "stopped by its time budget before LVD's passes"),
        "hclt": read_off("bpd", 2.15, 0.03, 0.05, False)}
    ft = {"valid_bpd_before": 2.2, "test_bpd_before": 2.15, "valid_bpd_after": 2.15, "test_bpd_after": 2.1,
          "seconds": 12.5, "valid_gain_bpd": 0.05, "test_gain_bpd": 0.05, "gain_per_1000s": 4.0}
    none = {k: 0.0 for k in ft} | {"gain_per_1000s": None}
    m["finetune"] = {
        "lvd": {**ft, "chosen": "finetuned", "chosen_seeds": ["finetuned"] * 2, "reason": None, "note": None},
        "random_latents": {**none, "chosen": "frozen", "chosen_seeds": ["frozen"] * 2, "reason": None,
                           "note": "no fine-tuning epochs (finetune.epochs and full_batch_epochs 0)"}}
    m["seconds"] = {"assign_latents": 5.0, "baseline/s0/train_baseline": 30.0, "baseline/s1/train_baseline": 32.0,
                    "evaluate": 2.0, "extract_embeddings": 10.0, "lvd/s0/finetune": 14.0, "lvd/s0/grow/shard10": 3.0,
                    "lvd/s0/grow/shard2": 4.0, "lvd/s0/latent_top_em": 5.0, "lvd/s0/materialize_pc": 2.0,
                    "prepare_data": 1.0, "train_teacher": 100.0}
    # CPU seconds of every job but baseline/s1's (an old benchmark file without the column)
    m["job_cpu_seconds"] = {k: 1.5 * v for k, v in m["seconds"].items() if k != "baseline/s1/train_baseline"}
    m.update(curves={}, history={}, verdict="...", total_seconds=208.0, config={"num_seeds": 2})
    return m


def results_table(tmp_path, capsys, *metrics, args=()):
    paths = []
    for i, m in enumerate(metrics):
        path = tmp_path / "results" / f"run{i}" / "k16" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(m if isinstance(m, str) else json.dumps(m))
        paths.append(str(path))
    rc = load("results_table").main([*paths, *args])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


def test_results_table_image_run_rows_footnotes_finetune_and_job_seconds(tmp_path, capsys):
    rc, out, err = results_table(tmp_path, capsys, image_metrics())
    assert rc == 0 and err == ""
    assert out[0] == ("**run0, K = 16**: test bpd, mean ± std over 2 seeds; digits, whole 8x8 images, RGB; "
                      "the controls' budget: time.")
    assert out[2:9] == [
        "| arm | parameters | test bpd (valid) | equal time (30.0 s) | margin | LVD by > 3 std | equal passes | margin "
        "| LVD by > 3 std | train s / seed | CPU s / seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        "| LVD | 1,234 | 2.1000 ± 0.0100 (2.1500) | 2.1000 ± 0.0100 | - | - | 2.1000 ± 0.0100 | - | - | 30.0 "
        "| 60.0 |",
        "| random latents | 1,234 | 2.3000 ± 0.0200 (2.3500) | 2.3100 ± 0.0200 | +0.2100 | yes | 2.3000 ± 0.0200 "
        "| +0.2000 | yes | 33.0 | 66.0 |",
        "| baseline (random-init EM) | 1,234 | 2.2000 ± 0.0100 (2.2500) | 2.5000 ± 0.0100* | +0.4000 | yes | n/m "
        "| n/m | n/m | 31.0 | 62.0 |",
        "| plain HCLT | 999 | 2.1500 ± 0.0300 (2.2000) | 2.1200 ± 0.0300 | +0.0200 | no | 2.1500 ± 0.0300 | +0.0500 "
        "| no | 29.0 | 58.0 |",
        "| teacher's bound | n/m | 1.9000 | - | - | - | - | - | - | 100.0 | 150.0 |"]
    assert out[10:12] == [
        "\\* baseline (random-init EM): read at its curve's first point (42.5 s), after LVD's training seconds; "
        "it had more time than LVD.",
        "n/m, baseline (random-init EM) at equal passes: stopped by its time budget before LVD's passes."]
    assert out[13:15] == [
        "Fine-tuning, LVD: test bpd 2.1500 -> 2.1000 (gain +0.0500 in 12.5 s, +4.0000 per 1000 s); chosen on "
        "valid bpd: fine-tuned (pc_final.h5).",
        "Fine-tuning, random latents: none (no fine-tuning epochs (finetune.epochs and full_batch_epochs 0)); "
        "the frozen model is the final one."]
    assert out[16:] == [
        "| arm | seed | jobs (s) | total s | CPU s |", "|---|---|---|---|---|",
        "| LVD | 0 | materialize_pc 2.0, grow/shard2 4.0, grow/shard10 3.0, latent_top_em 5.0, finetune 14.0 | 28.0 "
        "| 42.0 |",
        "| baseline (random-init EM) | 0 | train_baseline 30.0 | 30.0 | 45.0 |",
        "| baseline (random-init EM) | 1 | train_baseline 32.0 | 32.0 | n/m |",
        "", "| shared stage | seconds |", "|---|---|", "| train_teacher | 100.0 |", "| extract_embeddings | 10.0 |",
        "| assign_latents | 5.0 |", "| total | 115.0 |", "", "Other jobs: evaluate 2.0 s, prepare_data 1.0 s."]


def test_results_table_missing_equal_time_values_print_nm(tmp_path, capsys):
    m = image_metrics()
    m["equal_time"]["hclt"] = read_off("bpd", None, None, None, None, "its curve has no finite point",
                                       seconds_seeds=[None, None], over_budget=False)
    del m["equal_time"]["baseline"], m["train_seconds"], m["finetune"], m["seconds"], m["baseline_valid_bpd"]
    rc, out, _ = results_table(tmp_path, capsys, m)
    assert rc == 0
    assert out[2].split(" | ")[3] == "equal time (n/m s)"
    assert out[6] == ("| baseline (random-init EM) | 1,234 | 2.2000 ± 0.0100 | n/m | n/m | n/m | n/m | n/m | n/m "
                      "| 31.0 | 62.0 |")
    assert out[7].startswith("| plain HCLT | 999 | 2.1500 ± 0.0300 (2.2000) | n/m | n/m | n/m | 2.1500 ± 0.0300 |")
    assert out[10:] == ["n/m, baseline (random-init EM) at equal passes: stopped by its time budget before LVD's "
                        "passes.", "n/m, plain HCLT at equal time: its curve has no finite point.",
                        "", "Job seconds: n/m (no benchmark files were read)."]


def test_results_table_text_run_in_perplexity_with_labels(tmp_path, capsys):
    m = {"kind": "text", "num_seeds": 1, "num_states": 64, "dataset": "wikitext2", "budget": "passes",
         "teacher_test_perplexity": 120.5, "shared_seconds": None, "seconds": {}}
    m.update(arm_metrics("", "perplexity", 250.0, 0.0, 260.0, 8000, 10.0))
    m.update(arm_metrics("baseline_", "perplexity", 300.0, 0.0, 310.0, 8000, 10.0))
    m["baseline_cpu_seconds"] = None    # a job without CPU seconds
    m["controls"] = {"baseline": {"margin": 50.0, "spread": 0.0, "beats": None, "beats_3std": None}}
    m["equal_passes"] = {"baseline": read_off("perplexity", 300.0, 0.0, 50.0, None)}
    m["equal_time"] = {"baseline": read_off("perplexity", 305.25, 0.0, 55.25, None, seconds_seeds=[10.0],
                                            over_budget=False)}
    rc, out, _ = results_table(tmp_path, capsys, image_metrics(), m, args=["--label", "digits", "--label", "WT2"])
    assert rc == 0 and out[0].startswith("**digits, K = 16**: test bpd")
    text = out[out.index("**WT2, K = 64**: test perplexity, mean ± std over 1 seed; the controls' budget: passes."):]
    assert text[2:7] == [
        "| arm | parameters | test perplexity (valid) | equal time (10.0 s) | margin | LVD by > 3 std | equal passes "
        "| margin | LVD by > 3 std | train s / seed | CPU s / seed |", "|---|---|---|---|---|---|---|---|---|---|---|",
        "| LVD | 8,000 | 250.00 ± 0.00 (260.00) | 250.00 ± 0.00 | - | - | 250.00 ± 0.00 | - | - | 10.0 | 20.0 |",
        "| baseline (random-init EM) | 8,000 | 300.00 ± 0.00 (310.00) | 305.25 ± 0.00 | +55.25 | n/m | 300.00 ± 0.00 "
        "| +50.00 | n/m | 10.0 | n/m |",
        "| teacher | n/m | 120.50 | - | - | - | - | - | - | n/m | n/m |"]
    assert text[7:] == ["", "Job seconds: n/m (no benchmark files were read)."]   # no HCLT, no fine-tuning


@pytest.mark.parametrize("content, says", [
    ("{not json", "not JSON"),
    ("[1, 2]", "holds a list, expected the object evaluate writes"),
    (json.dumps({"kind": "image", "test_perplexity": 3.0}), "missing (or null) field 'test_bpd'"),
    (json.dumps({"num_params": 5}), "missing field 'test_bpd' (images) or 'test_perplexity' (text)"),
    (json.dumps({"kind": "image", "test_bpd": "2.1"}), "field 'test_bpd' is a string ('2.1'), expected a number"),
    (json.dumps({**image_metrics(), "seconds": [1.0]}), "field 'seconds' is a list, expected an object"),
    (json.dumps({**image_metrics(), "seconds": {"train_teacher": "long"}}),
     "field 'seconds.train_teacher' is a string"),
    (json.dumps({**image_metrics(), "equal_time": {"hclt": {"test_bpd": 2.0, "margin": [0.1]}}}),
     "field 'equal_time.hclt.margin' is a list"),
    (json.dumps({**image_metrics(), "finetune": {"lvd": 3}}), "field 'finetune.lvd' is a number, expected an object"),
])
def test_results_table_bad_file_is_one_line_naming_file_and_field(tmp_path, capsys, content, says):
    rc, out, err = results_table(tmp_path, capsys, content)
    path = tmp_path / "results" / "run0" / "k16" / "metrics.json"
    assert rc == 2 and out == [] and err.count("\n") == 1
    assert err.startswith(f"results_table: {path}: ") and says in err, err


def test_results_table_cli_exits_2_without_a_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "metrics.json").write_text('{"kind": "image"}')
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_table.py"), str(tmp_path / "metrics.json"),
                           str(tmp_path / "absent.json")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"results_table: {tmp_path / 'metrics.json'}: missing (or null) field 'test_bpd'\n"


def test_step_seconds_prints_the_cpu_and_a_step_time_per_circuit(tmp_path, capsys):
    import sys

    import torch

    from lvd import pc
    from lvd.stages import inputs

    sys.path.insert(0, str(ROOT / "tests" / "stages"))
    try:
        import pc_fixtures as fx
    finally:
        sys.path.remove(str(ROOT / "tests" / "stages"))
    data = fx.write_digits(tmp_path / "data.h5", n_train=64, n_valid=8, n_test=8)
    x = torch.as_tensor(inputs.load_split(data, "train"))
    pc.save(pc.hclt(x, num_latents=4, num_cats=17, seed=0), tmp_path / "c.h5")
    load("step_seconds").main([str(data), str(tmp_path / "c.h5"), "--steps", "2", "--batch-size", "16",
                               "--threads", "1"])
    out = capsys.readouterr().out.splitlines()
    assert "thread(s), denormals flushed:" in out[0]
    path, rest = out[1].split(": ", 1)
    assert path == str(tmp_path / "c.h5") and float(rest.split(" s/step")[0]) > 0
