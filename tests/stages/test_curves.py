"""The tables read off hand-built curves (lvd.stages.curves): equal_time of a control whose curve
begins after LVD's seconds, and what fine-tuning bought (epoch-0 point against the final one)."""

from __future__ import annotations

import math

import pytest

from lvd.stages import curves, evaluate


def pt(epoch, seconds, valid, test):
    return {"epoch": epoch, "seconds": seconds, "valid_bpd": valid, "test_bpd": test}


def test_equal_time_reads_a_late_curve_at_its_first_point():
    """Seed 1 of random_latents begins at 25 s, after LVD's 20 s: read there (3.0), its seconds
    kept and over_budget set; seed 0 is read between its points as before (2.5 at 10 s)."""
    m = {"test_bpd": 2.0, "test_bpd_std": 0.0}
    crv = {"lvd": [[pt(4, 10.0, 2.1, 2.0)], [pt(4, 20.0, 2.1, 2.0)]],
           "random_latents": [[pt(0, 8.0, 3.1, 3.0), pt(4, 12.0, 2.1, 2.0)],
                              [pt(0, 25.0, 3.1, 3.0), pt(4, 30.0, 2.7, 2.6)]],
           "baseline": [[pt(1, 5.0, 3.0, 3.0), pt(2, 30.0, 2.0, 2.0)], [pt(1, 5.0, 3.0, 3.0), pt(2, 30.0, 2.0, 2.0)]]}
    passes, same = curves.compute_tables(m, crv, {"random_latents": [None, None], "baseline": [2, 2]}, "test_bpd")
    rl, base = same["random_latents"], same["baseline"]
    assert rl["test_bpd_seeds"] == pytest.approx([2.5, 3.0]) and rl["test_bpd"] == pytest.approx(2.75)
    assert rl["seconds_seeds"] == [10.0, 25.0] and rl["over_budget"] is True and rl["reason"] is None
    assert rl["margin"] == pytest.approx(0.75)
    assert base["test_bpd_seeds"] == pytest.approx([2.8, 2.4]) and base["seconds_seeds"] == [10.0, 20.0]
    assert base["over_budget"] is False
    assert set(rl) == set(base)
    assert passes["random_latents"]["test_bpd_seeds"] == [2.0, 2.6] and "over_budget" not in passes["baseline"]
    m.update(num_seeds=2, controls={}, equal_time=same, train_seconds=15.0)
    said = evaluate.verdict(m, "test_bpd", "bpd")
    assert "vs random_latents 2.7500 at its first point (25.0 s, past LVD's seconds)" in said


def test_equal_time_of_a_curve_without_a_finite_point_is_not_measured():
    m = {"test_bpd": 2.0, "test_bpd_std": 0.0}
    crv = {"lvd": [[pt(4, 10.0, 2.1, 2.0)]], "baseline": [[pt(1, 5.0, math.nan, math.nan)]]}
    _, same = curves.compute_tables(m, crv, {"baseline": [1]}, "test_bpd")
    b = same["baseline"]
    assert b["test_bpd"] is None and b["seconds_seeds"] == [None] and b["over_budget"] is False and b["reason"]


def finetuned_curves():
    """Seed 0: fine-tuning helps on valid (3.0 -> 2.8) and test (3.1 -> 2.9) in 40 s; seed 1: it
    helps on test (3.0 -> 2.8) but not on valid (3.0 -> 3.1), in 20 s."""
    return [[pt(0, 10.0, 3.0, 3.1), pt(2, 30.0, 2.9, 3.0), pt(4, 50.0, 2.8, 2.9)],
            [pt(0, 12.0, 3.0, 3.0), pt(4, 32.0, 3.1, 2.8)]]


def test_finetune_gain_from_the_epoch0_and_final_points():
    f = curves.finetune_gain(finetuned_curves())
    assert f["valid_bpd_before_seeds"] == [3.0, 3.0] and f["test_bpd_before_seeds"] == [3.1, 3.0]
    assert f["valid_bpd_after_seeds"] == [2.8, 3.1] and f["test_bpd_after_seeds"] == [2.9, 2.8]
    assert f["seconds_seeds"] == [40.0, 20.0] and f["seconds"] == 30.0
    assert f["seconds_std"] == pytest.approx(math.sqrt(200.0))
    assert f["test_gain_bpd_seeds"] == pytest.approx([0.2, 0.2]) and f["test_gain_bpd"] == pytest.approx(0.2)
    assert f["test_gain_bpd_std"] == pytest.approx(0.0, abs=1e-12)
    assert f["valid_gain_bpd_seeds"] == pytest.approx([0.2, -0.1]) and f["valid_gain_bpd"] == pytest.approx(0.05)
    assert f["gain_per_1000s_seeds"] == pytest.approx([5.0, 10.0]) and f["gain_per_1000s"] == pytest.approx(7.5)
    assert f["chosen_seeds"] == ["finetuned", "frozen"] and f["chosen"] == "finetuned"   # mean valid gain > 0
    assert f["reason"] is None and f["note"] is None


def test_finetune_is_chosen_on_valid_never_test():
    """Better on test, worse on valid: frozen; a tie keeps the frozen circuit too."""
    worse_on_valid = curves.finetune_gain([[pt(0, 0.0, 3.0, 3.0), pt(1, 10.0, 3.01, 2.0)]])
    assert worse_on_valid["test_gain_bpd"] == pytest.approx(1.0) and worse_on_valid["chosen"] == "frozen"
    tie = curves.finetune_gain([[pt(0, 0.0, 3.0, 3.0), pt(1, 10.0, 3.0, 2.0)]])
    assert tie["chosen"] == "frozen" and tie["chosen_seeds"] == ["frozen"]


def test_no_finetuning_and_a_missing_snapshot_keep_the_keys():
    """No fine-tuning epochs (the final point is epoch 0): before = after, 0 s, gains 0, no rate,
    frozen, a note. No epoch-0 snapshot: the after values, the rest None with a reason."""
    full = curves.finetune_gain(finetuned_curves())
    none = curves.finetune_gain([[pt(0, 15.0, 3.0, 3.1)], [pt(0, 16.0, 3.2, 3.3)]])
    assert none["valid_bpd_before_seeds"] == none["valid_bpd_after_seeds"] == [3.0, 3.2]
    assert none["test_bpd_before"] == none["test_bpd_after"] == pytest.approx(3.2)
    assert none["seconds"] == 0.0 and none["test_gain_bpd"] == 0.0 and none["valid_gain_bpd"] == 0.0
    assert none["gain_per_1000s"] is None and none["gain_per_1000s_seeds"] == [None, None]
    assert none["chosen"] == "frozen" and "pc_latent_em.h5" in none["note"] and none["reason"] is None
    missing = curves.finetune_gain([[pt(2, 30.0, 2.9, 3.0), pt(4, 50.0, 2.8, 2.9)]])
    assert missing["test_bpd_after"] == 2.9 and missing["test_bpd_before"] is None and missing["seconds"] is None
    assert missing["chosen"] is None and missing["chosen_seeds"] == [None] and "epoch-0" in missing["reason"]
    assert missing["note"] is None
    assert set(full) == set(none) == set(missing)


def test_the_verdict_states_the_gain_and_the_chosen_model():
    def said(f):
        return evaluate.verdict({"controls": {}, "test_bpd": 2.85, "num_seeds": 2, "finetune": {"lvd": f}},
                                "test_bpd", "bpd")

    text = said(curves.finetune_gain(finetuned_curves()))
    assert ("Fine-tuning: test bpd 3.0500 -> 2.8500 (gain +0.2000 in 30.0 s, +7.5000 per 1000 s); "
            "chosen on valid bpd (3.0000 -> 2.9500): pc_final.h5 (fine-tuned)") in text
    assert "Fine-tuning: none (no fine-tuning epochs" in said(curves.finetune_gain([[pt(0, 15.0, 3.0, 3.1)]]))
    assert "gain not measured (no epoch-0" in said(curves.finetune_gain([[pt(4, 50.0, 2.8, 2.9)]]))
    assert "pc_latent_em.h5 (frozen)" in said(curves.finetune_gain([[pt(0, 0.0, 3.0, 3.0), pt(1, 9.0, 3.1, 2.0)]]))


def test_a_resumed_last_stage_adds_its_carried_seconds(monkeypatch):
    """finetune killed after 30 s of epochs and resumed: its benchmark file holds the second run
    only (25 s: 5 s start-up, 20 s of epochs), its record 50 s of epochs of which 30 carried. The
    arm's seconds: materialize 5 + 25 + 30 = 60; a snapshot taken at 10 s of epochs sits at
    60 - 50 + 10 = 20."""
    record = {"stage": "finetune", "seconds": 50.0, "carried_seconds": 30.0, "train_ll": [1.0, 2.0, 3.0]}
    monkeypatch.setattr(curves.inputs, "history_of", lambda path: [{"stage": "latent_top_em"}, record])
    monkeypatch.setattr(curves.training, "read_snapshots", lambda folder: ["epoch1.h5"])
    monkeypatch.setattr(curves.pc, "load_attrs", lambda path: {"epoch": 1, "seconds": 10.0})
    monkeypatch.setattr(curves.pc, "load", lambda path, device="cpu": None)
    seconds = {"lvd/s0/materialize_pc": 5.0, "lvd/s0/finetune": 25.0, "baseline/s0/train_baseline": 99.0}
    points = curves.arm_curve("lvd", 0, "k4/lvd/s0/pc_final.h5", {"test_bpd": 2.0}, seconds,
                              lambda circuit, path: {"test_bpd": 2.5})
    assert points == [{"epoch": 1, "seconds": 20.0, "test_bpd": 2.5}, {"epoch": 3, "seconds": 60.0, "test_bpd": 2.0}]
    del record["carried_seconds"]      # without it, the benchmark files alone: the arm 30 s short and
    points = curves.arm_curve("lvd", 0, "k4/lvd/s0/pc_final.h5", {"test_bpd": 2.0}, seconds,
                              lambda circuit, path: {"test_bpd": 2.5})
    assert [p["seconds"] for p in points] == [-10.0, 30.0]     # the snapshot before the arm began
