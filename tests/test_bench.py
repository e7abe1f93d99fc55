"""The engine benchmarks run small and print one JSON line last with medians and spreads."""

import json

import pytest

from lvd import bench


@pytest.mark.parametrize("argv", [
    ["em", "--num-vars", "40", "--num-cats", "16", "--num-latents", "4"],
    ["em", "--num-vars", "40", "--num-cats", "16", "--num-latents", "4", "--leaf-latents", "no"],
    ["hmm", "--seq-len", "6", "--vocab-size", "50", "--num-latents", "4"],
])
def test_engine_benchmarks_report_medians_and_spreads(capsys, argv):
    bench.main(argv + ["--batch-size", "32", "--steps", "4", "--peak-repeats", "2", "--threads", "1",
                       "--device", "cpu"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["timed_steps"] == 4 and out["peak_measurements"] == 4
    lo, hi = out["seconds_per_batch_quartiles"]
    assert lo <= out["seconds_per_batch"] <= hi
    lo, hi = out["matmul_peak_range"]
    assert lo <= out["matmul_peak_gflops"] <= hi
    assert out["ratio"] == pytest.approx(out["gflops"] / out["matmul_peak_gflops"])
    assert out["threads"] == 1 and len(out["loadavg"]) == 2
    lo, hi = out["memory_read_gbps_range"]
    assert 0 < lo <= out["memory_read_gbps"] <= hi
    assert out["steal_fraction"] is None or 0.0 <= out["steal_fraction"] <= 1.0
    if argv[0] == "em":
        assert (out["num_edges"] < 39) == (out["leaf_latents"] is False)


def test_steal_fraction_from_proc_stat_counters_by_hand():
    # user nice system idle iowait irq softirq steal: 100 jiffies pass, 25 of them stolen
    before = [10, 0, 5, 50, 0, 0, 0, 5, 0, 0]
    after = [50, 0, 15, 75, 0, 0, 0, 30, 0, 0]
    assert bench.steal_fraction(before, after) == pytest.approx(25 / 100)
    assert bench.steal_fraction(before, before) == 0.0
    assert bench.steal_fraction(None, after) is None and bench.steal_fraction([1, 2], [3, 4]) is None
