"""Budgets (docs/pc_stages.md, "Budgets: equal passes and equal time"): the time budget by
scripted clocks (no timed tests), the passes budget unchanged, the curve's points, what
fine-tuning bought, no fine-tuning, and reading a curve at LVD's seconds."""

from __future__ import annotations

import importlib
import itertools
import math

import numpy as np
import pytest
import torch

import pc_fixtures as fx
from lvd import budget, metrics, pc, training
from lvd.stages import evaluate, finetune, inputs, latent_em, latent_top_em, materialize_pc, train_baseline, train_hclt

em_module = importlib.import_module("lvd.pc.em")
K = 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """digits (120 train) -> position-mode latents -> pc_init -> one shard -> pc_latent_em."""
    d = tmp_path_factory.mktemp("budget")
    data = fx.write_digits(d / "data.h5", n_train=120, n_valid=30, n_test=30)
    x = inputs.load_split(data, "train")
    lat = fx.write_latents(d / "latents.h5", fx.kmeans_latents(x.reshape(-1, 8, 8, 1), 2, K), K)
    materialize_pc.run(materialize_pc.Config(num_latents=2), data, lat, d / "pc_init.h5")
    latent_em.run(latent_em.Config(epochs=1, batch_size=64), data, lat, d / "pc_init.h5", 0, 1, d / "shard0.h5")
    latent_top_em.run(latent_top_em.Config(epochs=1, batch_size=64), data, lat, d / "pc_init.h5", [d / "shard0.h5"],
                      d / "pc_latent_em.h5")
    return {"dir": d, "data": data, "x": x}


def scripted(times):
    """A clock returning ``times`` in turn (then its last value forever)."""
    it = iter(times)
    last = [0.0]

    def clock():
        last[0] = next(it, last[0])
        return last[0]
    return clock


def epoch_clock(durations):
    """A clock for training.train: epoch e lasts durations[e] (the loop reads it before and after)."""
    times, t = [], 0.0
    for d in durations:
        times += [t, t + d]
        t += d
    return scripted(times)


def tiny_tree():
    from pc_bruteforce import as_t, tree_circuit
    X = as_t(np.random.default_rng(0).integers(0, 3, (11, 5)))
    return tree_circuit([-1, 0, 0, 1, 1], 3, 3, seed=0), X


@pytest.fixture
def bruteforce_path(request):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parents[1] / "pc"))
    yield
    sys.path.remove(str(Path(__file__).parents[1] / "pc"))


@pytest.mark.parametrize("durations, budget_s, runs", [
    ([10.0] * 20, 35.0, 4),               # 40 s: past 35 by less than one epoch
    ([3.0, 7.0, 20.0, 1.0], 12.0, 3),     # 30 s: the third epoch crosses 12
    ([5.0] * 20, 10.0, 2),                # exactly at the budget: stop there
])
def test_the_time_budget_stops_within_one_epoch_of_the_budget(bruteforce_path, monkeypatch, durations, budget_s, runs):
    """Scripted clock: the loop stops after the first epoch that reaches the budget; a schedule
    of 2 epochs goes on with full-batch epochs (step 1) until then."""
    steps, real = [], em_module.update

    def update(circuit, flow, step_size, pseudocount):
        steps.append(step_size)
        return real(circuit, flow, step_size, pseudocount)

    monkeypatch.setattr(em_module, "update", update)
    c, X = tiny_tree()
    sched = pc.Schedule(epochs=2, full_batch_epochs=0, batch_size=4, step_size=0.3, step_size_end=0.05, seed=1)
    c, rec = training.train(c, X, sched, stage="t", budget_seconds=budget_s, clock=epoch_clock(durations))
    assert rec["epochs_run"] == len(rec["train_ll"]) == runs and rec["budget_seconds"] == budget_s
    assert rec["seconds"] == pytest.approx(sum(durations[:runs]))
    assert budget_s <= rec["seconds"] < budget_s + durations[runs - 1]       # within one epoch of the budget
    assert sum(durations[:runs - 1]) < budget_s                              # and not one epoch later
    nb = sched.num_batches(len(X))
    mini = [sched.step_size_at(t, nb) for t in range(min(runs, 2) * nb)]
    assert steps == mini + [1.0] * max(runs - 2, 0)                          # then full-batch epochs


def test_the_time_budget_of_a_control_counts_its_start_up(run_dir, tmp_path):
    """train_baseline under budget time: the clock starts with the stage (started = 0); its
    loading and building take what the clock says before the loop, and the loop stops within one
    epoch of LVD's seconds. Each clock reading advances 2 s (an epoch: 2 s)."""
    counter = itertools.count(start=1)
    clock = lambda: 2.0 * next(counter)  # noqa: E731   readings 2, 4, 6, ...
    cfg = train_baseline.Config(epochs=2, full_batch_epochs=0, batch_size=64, budget="time", curve_points=0)
    s = train_baseline.run(cfg, run_dir["data"], run_dir["dir"] / "pc_init.h5", tmp_path / "b.h5", lvd_seconds=13.0,
                           started=0.0, clock=clock)
    rec = inputs.history_of(tmp_path / "b.h5")[-1]
    left = rec["budget_seconds"]
    assert left == 13.0 - 2.0                    # one reading (2 s) before the loop: 11 s for the epochs
    assert rec["epochs_run"] == math.ceil(left / 2.0) == 6 and rec["seconds"] == 12.0
    assert s["budget"] == "time" and s["lvd_seconds"] == 13.0
    with pytest.raises(ValueError, match="needs LVD's training seconds"):
        train_baseline.run(cfg, run_dir["data"], run_dir["dir"] / "pc_init.h5", tmp_path / "c.h5")


def test_a_controls_budget_adds_the_seconds_lvds_resumed_finetune_carried(run_dir, tmp_path):
    """LVD's finetune killed after 30 s of epochs and resumed: its benchmark file holds the last
    run only, its pc_final.h5 (beside the pc_init.h5 the control builds on) the 30 s carried."""
    from lvd.stages import emstage
    lvd = tmp_path / "k4" / "lvd" / "s0"
    lvd.mkdir(parents=True)
    (lvd / "pc_init.h5").write_bytes((run_dir["dir"] / "pc_init.h5").read_bytes())
    files = [tmp_path / "materialize_pc.tsv", tmp_path / "finetune.tsv"]
    fx.write_benchmark(files[0], [10.0])
    fx.write_benchmark(files[1], [25.0])
    assert emstage.lvd_seconds_of(files, lvd / "pc_init.h5") == 35.0          # no pc_final.h5 (yet)
    circuit = pc.load(run_dir["dir"] / "pc_init.h5")
    pc.save(circuit, lvd / "pc_final.h5", history=[{"stage": "finetune", "seconds": 20.0}])
    assert emstage.lvd_seconds_of(files, lvd / "pc_init.h5") == 35.0          # not resumed
    pc.save(circuit, lvd / "pc_final.h5", history=[{"stage": "latent_top_em", "seconds": 3.0},
                                                   {"stage": "finetune", "seconds": 50.0, "carried_seconds": 30.0}])
    assert emstage.lvd_seconds_of(files, lvd / "pc_init.h5") == 65.0


def test_the_passes_budget_trains_exactly_the_schedule_as_before(run_dir, tmp_path):
    """budget passes (given LVD's seconds or not, with snapshots or not) gives the parameters of
    the plain loop: random_like, then the schedule's epochs with their epoch seeds."""
    d = run_dir["dir"]
    cfg = train_baseline.Config(epochs=3, full_batch_epochs=1, batch_size=64, budget="passes", seed=2)
    train_baseline.run(cfg, run_dir["data"], d / "pc_init.h5", tmp_path / "a.h5")
    train_baseline.run(cfg, run_dir["data"], d / "pc_init.h5", tmp_path / "b.h5", snapshot_dir=str(tmp_path / "snap"),
                       lvd_seconds=0.001)
    ref = pc.random_like(pc.load(d / "pc_init.h5"), cfg.seed)
    sched, x = training.schedule_from(cfg), inputs.load_split(run_dir["data"], "train")
    for e in range(sched.total_epochs):
        pc.em_epoch(ref, sched, e, x, gen=np.random.default_rng(sched.epoch_seed(e)))
    for path in ("a.h5", "b.h5"):
        got = pc.load(tmp_path / path)
        for k, t in ref.params.items():
            assert bool((got.params[k] == t).all()), (path, k)
        rec = inputs.history_of(tmp_path / path)[-1]
        assert len(rec["train_ll"]) == 4 and "budget_seconds" not in rec and pc.load_attrs(tmp_path / path)["budget"] == "passes"
    # the snapshot at epoch 2 is the circuit after 2 epochs of the same schedule
    part = pc.random_like(pc.load(d / "pc_init.h5"), cfg.seed)
    for e in range(2):
        pc.em_epoch(part, sched, e, x, gen=np.random.default_rng(sched.epoch_seed(e)))
    snaps = training.read_snapshots(tmp_path / "snap")
    assert [pc.load_attrs(p)["epoch"] for p in snaps] == [1, 2]              # ceil(4 / 4), ceil(4 / 2); 4 is the output
    got = pc.load(snaps[1])
    for k, t in part.params.items():
        assert bool((got.params[k] == t).all()), k


def test_the_curves_points_are_the_snapshots_recomputed_bpd(run_dir, tmp_path):
    """evaluate's curves: every snapshot's valid and test bpd computed again from its file, the
    final circuit last at the arm's seconds (the benchmark files), snapshots placed at (arm seconds
    - loop seconds) + their seconds; equal_time and equal_passes read off these points."""
    d, data = run_dir["dir"], run_dir["data"]
    finetune.run(finetune.Config(epochs=3, full_batch_epochs=1, batch_size=64, curve_points=2), data,
                 d / "pc_latent_em.h5", tmp_path / "pc_final.h5", snapshot_dir=str(tmp_path / "pc_final_snapshots"))
    base = tmp_path / "baseline" / "s0.h5"
    train_hclt.run(train_hclt.Config(epochs=3, full_batch_epochs=1, batch_size=64, num_latents=2, budget="passes",
                                     curve_points=2), data, d / "pc_init.h5", base.with_name("h0.h5"),
                   snapshot_dir=str(base.with_name("h0_snapshots")))
    train_baseline.run(train_baseline.Config(epochs=3, full_batch_epochs=1, batch_size=64, budget="passes",
                                             curve_points=2), data, d / "pc_init.h5", base,
                       snapshot_dir=str(base.with_name("s0_snapshots")))
    bench = tmp_path / "bench"
    fx.write_benchmark(bench / "train_teacher.tsv", [20.0], cpu=[39.0])
    fx.write_benchmark(bench / f"k{K}" / "assign_latents.tsv", [3.0])
    for name, s in (("materialize_pc", 1.0), ("latent_em/shard0", 2.0), ("latent_top_em", 3.0), ("finetune", 10.0)):
        fx.write_benchmark(bench / f"k{K}" / "lvd" / "s0" / f"{name}.tsv", [s], cpu=[1.5 * s])
    fx.write_benchmark(bench / f"k{K}" / "baseline" / "s0" / "train_baseline.tsv", [30.0], cpu=[59.5])
    fx.write_benchmark(bench / f"k{K}" / "hclt" / "s0" / "train_hclt.tsv", [5.0])
    teacher = fx.write_teacher_metrics(tmp_path / "t.json", teacher_test_bpd=2.0)
    m = evaluate.run(evaluate.Config(num_samples=0, num_inpaint=0), data,
                     {"lvd": [tmp_path / "pc_final.h5"], "baseline": [base], "hclt": [base.with_name("h0.h5")]},
                     teacher, bench, tmp_path / f"k{K}" / "metrics.json", tmp_path / "fig")
    xv, xt = inputs.load_split(data, "valid"), inputs.load_split(data, "test")

    def bpd(path, x):
        return metrics.bpd(pc.mean_log_likelihood(pc.load(path), x), 64)

    assert m["train_seconds"] == 16.0 and m["baseline_train_seconds"] == 30.0 and m["hclt_train_seconds"] == 5.0
    # CPU seconds: the same sums over the cpu_time column; the HCLT's file has none
    assert m["cpu_seconds"] == 24.0 and m["cpu_seconds_seeds"] == [24.0] and m["baseline_cpu_seconds"] == 59.5
    assert m["hclt_cpu_seconds"] is None and m["hclt_cpu_seconds_seeds"] == [None]
    assert m["job_cpu_seconds"]["train_teacher"] == 39.0 and m["job_cpu_seconds"]["hclt/s0/train_hclt"] is None
    assert set(m["job_cpu_seconds"]) == set(m["seconds"])      # the same keys whatever was sampled
    assert m["shared_seconds"] == 23.0 and m["budget"] == "passes"
    for arm, final, folder, secs in (("lvd", tmp_path / "pc_final.h5", tmp_path / "pc_final_snapshots", 16.0),
                                     ("baseline", base, base.with_name("s0_snapshots"), 30.0),
                                     ("hclt", base.with_name("h0.h5"), base.with_name("h0_snapshots"), 5.0)):
        curve = m["curves"][arm][0]
        files = training.read_snapshots(folder) + [final]
        assert len(curve) == len(files) == (4 if arm == "lvd" else 3)        # lvd: epoch 0 too
        loop = inputs.history_of(final)[-1]["seconds"]
        for point, path in zip(curve, files):
            assert point["valid_bpd"] == pytest.approx(bpd(path, xv), rel=1e-6)
            assert point["test_bpd"] == pytest.approx(bpd(path, xt), rel=1e-6)
            attrs = pc.load_attrs(path)
            if path != final:
                assert point["epoch"] == attrs["epoch"]
                assert point["seconds"] == pytest.approx(secs - loop + attrs["seconds"])
        assert curve[-1]["seconds"] == secs and curve[-1]["epoch"] == 4
        assert curve[-1]["test_bpd"] == pytest.approx(m[f"{evaluate.prefix(arm)}test_bpd"])
    assert [p["epoch"] for p in m["curves"]["lvd"][0]] == [0, 1, 2, 4]
    assert m["curves"]["lvd"][0][0]["test_bpd"] == pytest.approx(bpd(d / "pc_latent_em.h5", xt), rel=1e-6)
    for arm in ("baseline", "hclt"):
        pts = [(p["seconds"], p["test_bpd"]) for p in m["curves"][arm][0]]
        first = min(pts)                # a curve beginning after 16 s is read at its first point
        at, when = (first[1], first[0]) if first[0] > 16.0 else (budget.value_at(pts, 16.0), 16.0)
        eq = m["equal_time"][arm]
        assert eq["test_bpd"] == pytest.approx(at) and eq["margin"] == pytest.approx(at - m["test_bpd"])
        assert eq["seconds_seeds"] == [pytest.approx(when)] and eq["over_budget"] == (when > 16.0)
        assert m["equal_passes"][arm]["test_bpd"] == pytest.approx(m[f"{arm}_test_bpd"])   # passes: the final
    assert m["equal_time"]["hclt"]["test_bpd"] == pytest.approx(m["hclt_test_bpd"])          # ended before 16 s
    assert m["equal_time"]["hclt"]["over_budget"] is False
    # fine-tuning: pc_latent_em (the epoch-0 snapshot) against pc_final, finetune's loop seconds apart
    ft, lvd = m["finetune"]["lvd"], m["curves"]["lvd"][0]
    assert set(m["finetune"]) == {"lvd"}
    assert ft["test_bpd_before"] == pytest.approx(bpd(d / "pc_latent_em.h5", xt), rel=1e-6)
    assert ft["valid_bpd_before"] == pytest.approx(bpd(d / "pc_latent_em.h5", xv), rel=1e-6)
    assert ft["test_bpd_after"] == m["test_bpd"] and ft["valid_bpd_after"] == m["valid_bpd"]
    assert ft["seconds"] == pytest.approx(inputs.history_of(tmp_path / "pc_final.h5")[-1]["seconds"])
    assert ft["test_gain_bpd"] == pytest.approx(lvd[0]["test_bpd"] - lvd[-1]["test_bpd"])
    assert ft["chosen"] == ("finetuned" if ft["valid_bpd_after"] < ft["valid_bpd_before"] else "frozen")
    assert "Fine-tuning: test bpd" in m["verdict"]
    assert "At equal passes" in m["verdict"] and "At equal time (16.0 s" in m["verdict"]
    assert (tmp_path / "fig" / "compute.png").stat().st_size > 1000


def test_reading_a_curve_at_a_time():
    pts = [(10.0, 3.0), (20.0, 2.0), (40.0, 1.5)]
    assert budget.value_at(pts, 5.0) is None                    # before its first point
    assert budget.value_at(pts, 10.0) == 3.0
    assert budget.value_at(pts, 15.0) == pytest.approx(2.5)     # linear in between
    assert budget.value_at(pts, 30.0) == pytest.approx(1.75)
    assert budget.value_at(pts, 99.0) == 1.5                    # past its end: its last value
    assert budget.resolve("auto", "image") == "time" and budget.resolve("auto", "text") == "passes"
    with pytest.raises(ValueError, match="budget"):
        budget.resolve("flops", "image")
    seconds = {"lvd/s0/finetune": 2.0, "lvd/s0/latent_em/shard1": 1.5, "lvd/s1/finetune": 9.0, "train_teacher": 4.0,
               "assign_latents": 1.0, "prepare_data": 7.0}
    assert budget.arm_seconds(seconds, "lvd", 0) == 3.5 and budget.arm_seconds(seconds, "hclt", 0) is None
    assert budget.shared_seconds(seconds) == 5.0


def test_benchmark_columns_wall_and_cpu_seconds(tmp_path):
    """``s`` is required; ``cpu_time`` is read where the file has it (mean over rows), else None."""
    fx.write_benchmark(tmp_path / "k4" / "lvd" / "s0" / "finetune.tsv", [10.0, 12.0], cpu=[19.0, 23.0])
    fx.write_benchmark(tmp_path / "k4" / "hclt" / "s0" / "train_hclt.tsv", [5.0])
    (tmp_path / "k4" / "baseline" / "s0").mkdir(parents=True)
    (tmp_path / "k4" / "baseline" / "s0" / "train_baseline.tsv").write_text("s\tcpu_time\n30.0\tNA\n")
    assert budget.read_benchmarks(tmp_path, 4) == {"lvd/s0/finetune": 11.0, "hclt/s0/train_hclt": 5.0,
                                                   "baseline/s0/train_baseline": 30.0}
    cpu = budget.read_benchmarks(tmp_path, 4, column="cpu_time")
    assert cpu == {"lvd/s0/finetune": 21.0}
    assert budget.arm_seconds(cpu, "lvd", 0) == 21.0 and budget.arm_seconds(cpu, "hclt", 0) is None
    bad = tmp_path / "bad.tsv"
    bad.write_text("s\tcpu_time\n1.0\tlong\n")
    with pytest.raises(ValueError, match="bad.tsv: column 'cpu_time' is not numeric"):
        budget.benchmark_seconds(bad, "cpu_time")
    bad.write_text("seconds\n1.0\n")
    with pytest.raises(ValueError, match="bad.tsv: expected a Snakemake benchmark table with a column 's'"):
        budget.benchmark_seconds(bad, "cpu_time")


def test_finetune_with_no_epochs_writes_the_input_circuit(run_dir, tmp_path):
    """finetune.epochs 0 and no full-batch epoch: pc_final holds pc_latent_em's parameters, bit
    for bit, with a history record of no epochs; no snapshot besides it."""
    d = run_dir["dir"]
    cfg = finetune.Config(epochs=0, full_batch_epochs=0, batch_size=64)
    finetune.run(cfg, run_dir["data"], d / "pc_latent_em.h5", tmp_path / "pc_final.h5",
                 snapshot_dir=str(tmp_path / "snap"))
    a, b = pc.load(d / "pc_latent_em.h5"), pc.load(tmp_path / "pc_final.h5")
    assert a.params.keys() == b.params.keys()
    for k, t in a.params.items():
        assert bool((b.params[k] == t).all()), k
    hist_in, hist_out = inputs.history_of(d / "pc_latent_em.h5"), inputs.history_of(tmp_path / "pc_final.h5")
    assert hist_out[:-1] == hist_in
    rec = hist_out[-1]
    assert rec["stage"] == "finetune" and rec["train_ll"] == [] and "unchanged" in rec["note"]
    assert training.read_snapshots(tmp_path / "snap") == []
    # evaluate reports it as no fine-tuning: the frozen circuit, no seconds, no gain
    teacher = fx.write_teacher_metrics(tmp_path / "t.json", teacher_test_bpd=2.0)
    m = evaluate.run(evaluate.Config(num_samples=0, num_inpaint=0), run_dir["data"],
                     {"lvd": [tmp_path / "pc_final.h5"]}, teacher, None, tmp_path / "metrics.json", tmp_path / "fig")
    ft = m["finetune"]["lvd"]
    assert ft["test_bpd_before"] == ft["test_bpd_after"] == m["test_bpd"] and ft["seconds"] == 0.0
    assert ft["test_gain_bpd"] == 0.0 and ft["gain_per_1000s"] is None and ft["chosen"] == "frozen"
    assert ft["note"] and "Fine-tuning: none" in m["verdict"]


@pytest.mark.parametrize("valids, best", [([-3.0, -2.0, -2.5, -2.7], 2), ([-3.0, -2.5, -2.0, -1.0], 4),
                                          ([-1.0, -2.0, -3.0, -4.0], 1)])
def test_keep_best_returns_the_best_valid_epochs_parameters(bruteforce_path, valids, best):
    """keep_best (a control under a time budget): the circuit returned has the parameters it
    had after the epoch of the highest valid ll (scripted), and the record names that epoch."""
    c, X = tiny_tree()
    sched = pc.Schedule(epochs=4, batch_size=4, step_size=0.3, seed=1)
    seen = iter(valids)
    after = {}

    def valid(circuit):
        after[len(after) + 1] = {k: v.clone() for k, v in circuit.params.items()}
        return next(seen)

    c, rec = training.train(c, X, sched, stage="t", valid=valid, keep_best=True)
    assert rec["best_epoch"] == best and rec["valid_ll"] == valids
    for k, v in c.params.items():
        assert torch.equal(v, after[best][k]), k
    c2, X = tiny_tree()
    c2, rec2 = training.train(c2, X, sched, stage="t", valid=lambda t: 0.0)   # without it: the last epoch
    assert "best_epoch" not in rec2
    for k, v in c2.params.items():
        assert torch.equal(v, after[4][k]), k


def test_a_control_writes_the_valid_ll_of_the_parameters_it_keeps(run_dir, tmp_path, monkeypatch):
    """train_baseline under budget time keeps its best valid epoch (3 of 6, scripted valid lls):
    the output's valid_ll / valid_bpd / train_ll are that epoch's, not the last one's."""
    counter = itertools.count(start=1)
    clock = lambda: 2.0 * next(counter)  # noqa: E731   readings 2, 4, 6, ...: 6 epochs in 11 s
    valids = iter([-50.0, -40.0, -30.0, -35.0, -36.0, -37.0])
    monkeypatch.setattr(pc, "mean_log_likelihood", lambda *a, **k: next(valids))
    cfg = train_baseline.Config(epochs=2, full_batch_epochs=0, batch_size=64, budget="time", curve_points=0)
    train_baseline.run(cfg, run_dir["data"], run_dir["dir"] / "pc_init.h5", tmp_path / "b.h5", lvd_seconds=13.0,
                       started=0.0, clock=clock)
    rec = inputs.history_of(tmp_path / "b.h5")[-1]
    assert rec["epochs_run"] == 6 and rec["best_epoch"] == 3
    attrs = pc.load_attrs(tmp_path / "b.h5")
    assert attrs["valid_ll"] == -30.0 and attrs["train_ll"] == rec["train_ll"][2]
    assert attrs["valid_bpd"] == pytest.approx(metrics.bpd(-30.0, 64))
    assert training.kept_epoch_values({"train_ll": [-2.0, -1.0], "valid_ll": []}) == {"train_ll": -1.0}


def test_a_reading_has_the_same_keys_measured_or_not():
    """equal_time's record of a control has the same keys whether its curve reached LVD's seconds
    or not (a run's timings decide that, so two runs of one preset must not differ in keys)."""
    from lvd.stages import curves

    m = {"test_bpd": 2.0, "test_bpd_std": 0.01}
    got = curves.read_off(m, "test_bpd", [2.1, 2.2], "why")
    missing = curves.read_off(m, "test_bpd", [2.1, None], "why")
    assert set(got) == set(missing)
    assert got["reason"] is None and got["margin"] == pytest.approx(0.15)
    assert missing["reason"] == "why" and missing["test_bpd"] is None and missing["test_bpd_seeds"] == [2.1, None]
