"""One name per arm (lvd.arms) in paths, metrics, the job seconds and evaluate's arguments; the
random-latent arm's old folder name random/ refused, naming random_latents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lvd import arms, budget
from lvd.stages import curves, evaluate, summarize

REPO = Path(__file__).resolve().parents[1]


def test_every_module_uses_the_one_table_of_arms():
    assert arms.ARMS == ("lvd", "random_latents", "baseline", "hclt")
    assert evaluate.ARMS == arms.ARMS and evaluate.CONTROLS == curves.CONTROLS == arms.CONTROLS
    assert [arms.prefix(arm) for arm in arms.ARMS] == ["", "random_latents_", "baseline_", "hclt_"]
    assert [row[0] for row in summarize.ARMS] == [arms.prefix(a) for a in arms.ARMS]
    assert [row[4] for row in summarize.ARMS] == [arms.prefix(a) + "num_params" for a in arms.ARMS]
    with pytest.raises(ValueError, match="no arm 'random'; the arms: lvd, random_latents"):
        arms.prefix("random")
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'ARMS = ("lvd", "random_latents")' in common and 'arm="|".join(ARMS)' in common


def test_no_rule_writes_under_an_old_arm_name():
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        for old in arms.RENAMED:
            quoted = re.findall(r'"[^"\n]*"', path.read_text())   # the paths (comments may name it)
            assert not [q for q in quoted if f"/{old}/" in q], f"{path.name}: a path under {old}/"


def test_an_arms_seconds_are_read_from_its_own_folder():
    seconds = {"random_latents/s0/random_latents": 1.0, "random_latents/s0/finetune": 2.5,
               "random/s0/finetune": 100.0, "lvd/s0/finetune": 4.0}
    assert budget.arm_seconds(seconds, "random_latents", 0) == 3.5
    assert budget.arm_seconds(seconds, "random_latents", 1) is None
    with pytest.raises(ValueError, match="no arm 'random'"):
        budget.arm_seconds(seconds, "random", 0)


def test_folders_under_the_old_name_are_refused_naming_the_new_one(tmp_path):
    arms.reject_old_dirs("run", str(tmp_path))                         # nothing there yet
    (tmp_path / "results" / "run" / "k8" / "random_latents" / "s0").mkdir(parents=True)
    (tmp_path / "results" / "other" / "k8" / "random").mkdir(parents=True)   # another run's
    (tmp_path / "results" / "run" / "k8" / "random.txt").write_text("")      # not a folder
    arms.reject_old_dirs("run", str(tmp_path))
    (tmp_path / "results" / "run" / "k8" / "random" / "s0").mkdir(parents=True)
    (tmp_path / "benchmarks" / "run" / "k16" / "random").mkdir(parents=True)
    assert arms.old_dirs("run", str(tmp_path)) == ["benchmarks/run/k16/random", "results/run/k8/random"]
    with pytest.raises(ValueError) as e:
        arms.reject_old_dirs("run", str(tmp_path))
    msg = str(e.value)
    assert msg.startswith("benchmarks/run/k16/random, results/run/k8/random: made under an arm's old name "
                          "('random' is now 'random_latents')")
    assert "mv results/run/k8/random results/run/k8/random_latents" in msg
    assert "mv benchmarks/run/k16/random benchmarks/run/k16/random_latents" in msg


def test_evaluate_refuses_the_old_argument_naming_the_new_one(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--data", "d.h5", "--pc", "p.h5", "--random", "r.h5", "--teacher-metrics", "t.json",
                       "--out", "m.json", "--figdir", "fig"])
    assert "--random is now --random-latents" in capsys.readouterr().err
