"""lvd.stages.summarize: the sweep table and plot from hand-written metrics files."""

import json

import pytest

from lvd.stages import summarize


def write(tmp_path, k, **metrics):
    path = tmp_path / f"k{k}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))
    return str(path)


def read_tsv(path):
    header, *lines = path.read_text().splitlines()
    cols = header.split("\t")
    return cols, [dict(zip(cols, line.split("\t"))) for line in lines]


def test_table_sorted_by_k_with_main_columns_first(tmp_path):
    paths = [
        write(tmp_path, 16, test_bpd=1.5, baseline_test_bpd=1.75, teacher_test_bpd=1.25,
              num_params=4000, seconds=3.0, curve=[1, 2, 3]),
        write(tmp_path, 4, test_bpd=2.0, baseline_test_bpd=2.125, teacher_test_bpd=1.25,
              num_params=300, seconds=1.0, curve=[4]),
    ]
    out, png = tmp_path / "summary.tsv", tmp_path / "summary.png"
    result = summarize.run(summarize.Config(), paths, out, png)
    cols, rows = read_tsv(out)
    assert cols == ["num_states", "test_bpd", "baseline_test_bpd", "teacher_test_bpd",
                    "num_params", "seconds"]  # lists (curves) are left out
    assert [r["num_states"] for r in rows] == ["4", "16"]
    assert float(rows[0]["test_bpd"]) == 2.0 and float(rows[1]["baseline_test_bpd"]) == 1.75
    assert rows[1]["num_params"] == "4000"
    assert result["main_metric"] == "test_bpd"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_metrics_use_perplexity_and_missing_cells_stay_empty(tmp_path):
    paths = [write(tmp_path, 8, test_perplexity=300.0, baseline_test_perplexity=350.0),
             write(tmp_path, 16, test_perplexity=250.0, extra="x")]
    out = tmp_path / "s.tsv"
    summarize.run(summarize.Config(), paths, out, tmp_path / "s.png")
    cols, rows = read_tsv(out)
    assert cols[:3] == ["num_states", "test_perplexity", "baseline_test_perplexity"]
    assert rows[1]["baseline_test_perplexity"] == "" and rows[1]["extra"] == "x"
    assert rows[0]["extra"] == ""


def test_missing_main_metric_names_the_file(tmp_path):
    good = write(tmp_path, 4, test_bpd=2.0)
    bad = write(tmp_path, 8, seconds=1.0)
    with pytest.raises(summarize.SummaryError, match=r"k8/metrics.json: missing field.*test_bpd"):
        summarize.run(summarize.Config(), [good, bad], tmp_path / "s.tsv", tmp_path / "s.png")
    assert not (tmp_path / "s.tsv").exists()


def test_directory_must_name_k_and_agree_with_num_states(tmp_path):
    odd = tmp_path / "run" / "metrics.json"
    odd.parent.mkdir()
    odd.write_text('{"test_bpd": 1.0}')
    with pytest.raises(summarize.SummaryError, match="not named k<num_states>"):
        summarize.read_metrics(odd)
    wrong = write(tmp_path, 8, test_bpd=1.0, num_states=16)
    with pytest.raises(summarize.SummaryError, match="'num_states' is 16, expected 8"):
        summarize.read_metrics(wrong)


def test_bad_json_and_missing_file(tmp_path):
    (tmp_path / "k2").mkdir()
    broken = tmp_path / "k2" / "metrics.json"
    broken.write_text("{not json")
    with pytest.raises(summarize.SummaryError, match="k2/metrics.json: not valid JSON"):
        summarize.read_metrics(broken)
    with pytest.raises(summarize.SummaryError, match="file not found"):
        summarize.read_metrics(tmp_path / "k3" / "metrics.json")


def test_cli_writes_both_files_and_exits_clearly_on_error(tmp_path):
    paths = [write(tmp_path, 2, test_bpd=3.0), write(tmp_path, 32, test_bpd=2.5)]
    out, png = tmp_path / "summary.tsv", tmp_path / "summary.png"
    log = tmp_path / "logs" / "summarize.log"
    summarize.main(["--metrics", *paths, "--out", str(out), "--plot", str(png), "--log", str(log)])
    assert [r["num_states"] for r in read_tsv(out)[1]] == ["2", "32"]
    assert png.stat().st_size > 1000 and "wrote" in log.read_text()
    with pytest.raises(SystemExit, match=r"--config: unknown key.*metric"):
        summarize.main(["--metrics", *paths, "--out", str(out), "--plot", str(png),
                        "--config", '{"metric": "x"}'])
    with pytest.raises(SystemExit, match="summarize: .*num_states 2 already given"):
        summarize.main(["--metrics", paths[0], paths[0], "--out", str(out), "--plot", str(png)])


def test_training_seconds_and_the_budget_tables_reach_the_table_and_plot(tmp_path):
    """Each arm's train_seconds are columns (the plot's right panel places the arms by them), and
    every control's equal_time / equal_passes metric and margin become flat columns."""
    tables = {"equal_time": {"baseline": {"test_bpd": 1.9, "margin": 0.4, "test_bpd_seeds": [1.9]},
                             "hclt": {"test_bpd": None, "reason": "its first point comes after LVD's seconds"}},
              "equal_passes": {"baseline": {"test_bpd": 1.6, "margin": 0.1}}}
    paths = [write(tmp_path, k, test_bpd=1.5, baseline_test_bpd=1.6, hclt_test_bpd=1.7, train_seconds=10.0 * k,
                   baseline_train_seconds=11.0 * k, hclt_train_seconds=9.0 * k, shared_seconds=5.0, budget="time",
                   **tables) for k in (4, 8)]
    out, png = tmp_path / "summary.tsv", tmp_path / "summary.png"
    summarize.run(summarize.Config(), paths, out, png)
    cols, rows = read_tsv(out)
    for col in ("train_seconds", "baseline_train_seconds", "hclt_train_seconds", "shared_seconds", "budget",
                "equal_time_baseline_test_bpd", "equal_time_baseline_margin", "equal_passes_baseline_test_bpd"):
        assert col in cols, col
    assert "equal_time_hclt_test_bpd" not in cols       # not measured in any row: no column
    assert rows[1]["train_seconds"] == "80.0" and rows[0]["equal_time_baseline_margin"] == "0.4"
    assert rows[0]["budget"] == "time"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
