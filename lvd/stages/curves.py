"""The curves of bpd against training seconds and the tables read off them (evaluate's
``curves``, ``equal_time``, ``equal_passes``; docs/pc_stages.md, "Budgets: equal passes and
equal time").

    points = arm_curve("baseline", 0, "k16/baseline/s0.h5", final, seconds, score)
    equal_passes, equal_time = compute_tables(m, curves, planned, "test_bpd")

A circuit file ``X.h5`` has its snapshots (lvd.training.Snapshots) in ``X_snapshots/`` beside
it. A curve's points are {epoch, seconds, valid_<unit>, test_<unit>}: every snapshot scored,
then the circuit itself at the arm's training seconds (lvd.budget.arm_seconds; without benchmark
files, the stages' own training seconds from the history); a snapshot of the last training
stage sits at (the arm's seconds - that stage's loop seconds) + its seconds when taken.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvd import arms, budget, metrics, pc, training
from lvd.stages import inputs

CONTROLS = arms.CONTROLS


def snapshot_folder(path) -> Path:
    """Where the snapshots of circuit file ``path`` are: ``<stem>_snapshots/`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + "_snapshots")


def arm_curve(arm: str, seed: int, path, final: dict, seconds: dict, score, device="cpu") -> list[dict]:
    """One arm's and seed's curve: its snapshots scored (``score(circuit) -> {valid_<unit>,
    test_<unit>}``), then the final circuit (``final``: its scores); seconds as in the module
    docstring."""
    hist = inputs.history_of(path)
    last = hist[-1] if hist else {}
    total = budget.arm_seconds(seconds, arm, seed)
    if total is None:   # no benchmark files (a stage run by hand): the stages' own training seconds
        total = float(sum(float(r.get("seconds", 0.0)) for r in hist))
    offset = total - float(last.get("seconds", 0.0))
    points = []
    for snap in training.read_snapshots(snapshot_folder(path)):
        attrs = pc.load_attrs(snap)
        points.append({"epoch": int(attrs["epoch"]), "seconds": offset + float(attrs["seconds"]),
                       **score(pc.load(snap, device=device), str(snap))})
    points.append({"epoch": len(last.get("train_ll", [])), "seconds": total, **final})
    return points


def planned_epochs(path) -> int | None:
    """A control's planned passes (its schedule's epochs + full_batch_epochs), from its config."""
    cfg = pc.load_attrs(path).get("config") or {}
    if not isinstance(cfg, dict) or "epochs" not in cfg:
        return None
    return int(cfg["epochs"]) + int(cfg.get("full_batch_epochs", 0))


def read_off(m: dict, key: str, values: list, reason: str) -> dict:
    """A control's metric at one budget (one value per seed, None: not measured) against LVD's:
    the fields of ``compare`` and ``reason`` (None when measured; else why not, the numbers None).
    The keys are the same either way, so that runs whose timings differ have the same keys."""
    seeds = [None if v is None else float(v) for v in values]
    if not values or any(v is None for v in values):
        return {key: None, f"{key}_std": None, f"{key}_seeds": seeds, "margin": None, "spread": None,
                "beats": None, "beats_3std": None, "reason": reason}
    mean, sd = float(np.mean(values)), metrics.spread(values)
    margin, spread = mean - m[key], max(m[f"{key}_std"], sd)
    one = len(values) < 2
    return {key: mean, f"{key}_std": sd, f"{key}_seeds": seeds, "margin": margin,
            "spread": spread, "beats": None if one else bool(margin > spread),
            "beats_3std": None if one else bool(margin > 3 * spread), "reason": None}


def compute_tables(m: dict, curves: dict, planned: dict, key: str) -> tuple[dict, dict]:
    """(equal_passes, equal_time) of every control with a curve (the module docstring), against
    LVD's ``m[key]`` and ``m[key + "_std"]``."""
    lvd_secs = [c[-1]["seconds"] for c in curves["lvd"]]
    passes, same_time = {}, {}
    for arm in CONTROLS:
        if arm not in curves:
            continue
        at_time = [budget.value_at([(p["seconds"], p[key]) for p in c], t) for c, t in zip(curves[arm], lvd_secs)]
        same_time[arm] = read_off(m, key, at_time, "its first point comes after LVD's seconds")
        if arm == "random_latents":
            at_pass = [c[-1][key] for c in curves[arm]]
        else:
            at_pass = [next((p[key] for p in c if p["epoch"] == e), None) for c, e in zip(curves[arm], planned[arm])]
        passes[arm] = read_off(m, key, at_pass, "stopped by its time budget before LVD's passes")
    return passes, same_time
