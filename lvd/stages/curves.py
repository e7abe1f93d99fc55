"""The curves of bpd against training seconds and the tables read off them (evaluate's
``curves``, ``equal_time``, ``equal_passes``, ``finetune``; docs/pc_stages.md, "Budgets: equal
passes and equal time").

    points = arm_curve("baseline", 0, "k16/baseline/s0.h5", final, seconds, score)
    equal_passes, equal_time = compute_tables(m, curves, planned, "test_bpd")
    finetune = finetune_gain(curves["lvd"])      # pc_latent_em (epoch 0) against pc_final

A circuit file ``X.h5`` has its snapshots (lvd.training.Snapshots) in ``X_snapshots/`` beside
it. A curve's points are {epoch, seconds, valid_<unit>, test_<unit>}: every snapshot scored,
then the circuit itself at the arm's training seconds (lvd.budget.arm_seconds; without benchmark
files, the stages' own training seconds from the history; a last stage resumed from its
checkpoint adds the loop seconds of its earlier runs, ``carried_seconds`` of its record, which
its benchmark file does not hold); a snapshot of the last training stage sits at (the arm's
seconds - that stage's loop seconds) + its seconds when taken.
"""

from __future__ import annotations

from pathlib import Path

import math

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
    else:               # a last stage resumed from its checkpoint: its earlier runs' loop seconds
        total += float(last.get("carried_seconds", 0.0))
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


def time_reading(points: list[dict], key: str, t: float) -> tuple[float | None, float | None]:
    """(value, seconds) of a curve read at ``t`` seconds (lvd.budget.value_at); a curve whose first
    point comes after ``t`` is read at that point, and its seconds say so (None, None: no point)."""
    pts = sorted((float(p["seconds"]), float(p[key])) for p in points
                 if p.get(key) is not None and math.isfinite(p["seconds"]) and math.isfinite(p[key]))
    if not pts:
        return None, None
    if t < pts[0][0]:
        return pts[0][1], pts[0][0]
    return budget.value_at(pts, t), float(t)


def compute_tables(m: dict, curves: dict, planned: dict, key: str) -> tuple[dict, dict]:
    """(equal_passes, equal_time) of every control with a curve (the module docstring), against
    LVD's ``m[key]`` and ``m[key + "_std"]``. equal_time also has ``seconds_seeds`` (where each
    seed's curve was read) and ``over_budget`` (True when a curve began after LVD's seconds and
    was read at its first point: the control had more time, which favours it, not LVD)."""
    lvd_secs = [c[-1]["seconds"] for c in curves["lvd"]]
    passes, same_time = {}, {}
    for arm in CONTROLS:
        if arm not in curves:
            continue
        read = [time_reading(c, key, t) for c, t in zip(curves[arm], lvd_secs)]
        same_time[arm] = read_off(m, key, [v for v, _ in read], "its curve has no finite point")
        same_time[arm]["seconds_seeds"] = [s for _, s in read]
        same_time[arm]["over_budget"] = any(s is not None and s > t for (_, s), t in zip(read, lvd_secs))
        if arm == "random_latents":
            at_pass = [c[-1][key] for c in curves[arm]]
        else:
            at_pass = [next((p[key] for p in c if p["epoch"] == e), None) for c, e in zip(curves[arm], planned[arm])]
        passes[arm] = read_off(m, key, at_pass, "stopped by its time budget before LVD's passes")
    return passes, same_time


FINETUNE_FIELDS = ("valid_bpd_before", "test_bpd_before", "valid_bpd_after", "test_bpd_after", "seconds",
                   "valid_gain_bpd", "test_gain_bpd", "gain_per_1000s")


def finetune_seed(curve: list[dict]) -> tuple[dict, str | None, str | None]:
    """One seed's fine-tuning, read off its curve: ({field: value}, chosen, reason). "before" is the
    epoch-0 point (finetune's input, pc_latent_em), "after" the last (pc_final); ``seconds`` the
    seconds between them (finetune's training loop); gains are before - after (> 0: fine-tuning
    helped); ``chosen`` "finetuned" when it lowered the valid bpd, else "frozen". A final point
    of epoch 0 (no fine-tuning epochs): before = after, 0 s, gains 0, no rate, "frozen"."""
    after = curve[-1]
    before = after if after["epoch"] == 0 else next((p for p in curve[:-1] if p["epoch"] == 0), None)
    out = dict.fromkeys(FINETUNE_FIELDS)
    out.update(valid_bpd_after=after["valid_bpd"], test_bpd_after=after["test_bpd"])
    if before is None:
        return out, None, "no epoch-0 snapshot beside pc_final.h5 (finetune's input was not kept)"
    secs = float(after["seconds"] - before["seconds"])
    out.update(valid_bpd_before=before["valid_bpd"], test_bpd_before=before["test_bpd"], seconds=secs,
               valid_gain_bpd=before["valid_bpd"] - after["valid_bpd"],
               test_gain_bpd=before["test_bpd"] - after["test_bpd"])
    out["gain_per_1000s"] = 1000.0 * out["test_gain_bpd"] / secs if secs > 0 else None
    return out, ("finetuned" if out["valid_gain_bpd"] > 0 else "frozen"), None


def finetune_gain(curves_of_arm: list[list[dict]]) -> dict:
    """What fine-tuning bought an arm (lvd, random_latents; images), from its curves (one per seed):
    every field of ``finetune_seed`` as the mean over seeds, ``*_std`` and ``*_seeds`` (a mean is
    None when a seed's value is); ``chosen`` by the mean valid bpd (never test; a tie keeps the
    cheaper "frozen"), ``chosen_seeds``; ``reason`` (None, or why values are missing) and ``note``
    (None, or that no fine-tuning ran: finetune.epochs and full_batch_epochs 0, so pc_final.h5 is
    pc_latent_em.h5, 0 s, gains 0, ``gain_per_1000s`` None, "frozen"). The keys are always the same."""
    seeds = [finetune_seed(c) for c in curves_of_arm]
    out = {}
    for f in FINETUNE_FIELDS:
        vals = [s[0][f] for s in seeds]
        whole = bool(vals) and all(v is not None for v in vals)
        out[f] = float(np.mean(vals)) if whole else None
        out[f + "_std"] = metrics.spread(vals) if whole else None
        out[f + "_seeds"] = vals
    gain = out["valid_gain_bpd"]
    out["chosen"] = None if gain is None else ("finetuned" if gain > 0 else "frozen")
    out["chosen_seeds"] = [s[1] for s in seeds]
    out["reason"] = next((s[2] for s in seeds if s[2]), None)
    none = bool(seeds) and all(c[-1]["epoch"] == 0 for c in curves_of_arm)
    out["note"] = ("no fine-tuning epochs (finetune.epochs and full_batch_epochs 0): pc_final.h5 is "
                   "pc_latent_em.h5" if none else None)
    return out


def late_words(c: dict) -> str:
    """equal_time read at a control's first point, after LVD's seconds (compute_tables)."""
    if not c.get("over_budget"):
        return ""
    late = max(s for s in c["seconds_seeds"] if s is not None)
    return f" at its first point ({late:.1f} s, past LVD's seconds)"


def finetune_words(f: dict) -> str:
    """LVD's fine-tuning gain and the final model chosen on valid bpd (finetune_gain)."""
    if f["note"]:
        return f"Fine-tuning: none ({f['note']}); the final model is the frozen one"
    if f["chosen"] is None:
        return f"Fine-tuning: gain not measured ({f['reason']})"
    rate = "" if f["gain_per_1000s"] is None else f", {f['gain_per_1000s']:+.4f} per 1000 s"
    model = "pc_final.h5 (fine-tuned)" if f["chosen"] == "finetuned" else "pc_latent_em.h5 (frozen)"
    return (f"Fine-tuning: test bpd {f['test_bpd_before']:.4f} -> {f['test_bpd_after']:.4f} (gain "
            f"{f['test_gain_bpd']:+.4f} in {f['seconds']:.1f} s{rate}); chosen on valid bpd "
            f"({f['valid_bpd_before']:.4f} -> {f['valid_bpd_after']:.4f}): {model}")
