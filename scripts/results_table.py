"""Markdown tables of one run's metrics.json (lvd.stages.evaluate) for a results page.

    python scripts/results_table.py results/digits/k16/metrics.json
    python scripts/results_table.py results/*/k8/metrics.json --label digits --label fashion

Prints one section per file: a caption line; the headline table (one row per arm, then the
teacher as a reference row: parameters, final test metric mean ± std over seeds with valid in
brackets, the metric at equal time and at equal passes with the margin against LVD (> 0: LVD
better) and whether LVD wins by more than 3 std, training seconds and CPU seconds per seed);
footnotes; a line per fine-tuned arm; the job seconds of every arm and seed (with their CPU
seconds), and the shared stages apart. The unit (bpd for images, perplexity for text) comes
from the file unless --unit says otherwise.
"n/m": not measured (missing or null in the file); "-": does not apply. A file that is not an
evaluate metrics.json exits with status 2 and one line naming the file and the field.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from lvd import arms
from lvd.budget import SHARED_STAGES

NM = "n/m"
# the order of an arm's jobs in its stage table (lvd.budget, docs/pc_stages.md); others follow
JOB_ORDER = ("random_latents", "materialize_pc", "latent_em", "grow", "latent_top_em", "finetune",
             "train_baseline", "train_hclt")


class Bad(Exception):
    """The file is not what evaluate writes; the message names the field."""


def _type(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(v), type(v).__name__)


def num(d: dict, key: str, where: str = ""):
    """``d[key]`` as a float, None when absent or null; Bad when it is not a number."""
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Bad(f"field {where + key!r} is {_type(v)} ({v!r:.40}), expected a number")
    return float(v)


def table(d: dict, key: str) -> dict:
    """``d[key]``, an object of objects ({} when absent or null); Bad otherwise."""
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise Bad(f"field {key!r} is {_type(v)}, expected an object")
    for k, e in v.items():
        if not isinstance(e, dict):
            raise Bad(f"field {key + '.' + k!r} is {_type(e)}, expected an object")
    return v


def load(path: str, unit: str) -> tuple[dict, str]:
    """(metrics, unit) of one file; Bad for a missing, unreadable or foreign file."""
    try:
        m = json.loads(Path(path).read_text())
    except OSError as e:
        raise Bad(f"cannot read it ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise Bad(f"not JSON ({e})") from None
    if not isinstance(m, dict):
        raise Bad(f"holds {_type(m)}, expected the object evaluate writes (metrics.json)")
    if unit == "auto":
        kind = m.get("kind")
        unit = {"image": "bpd", "text": "perplexity"}.get(kind) or next(
            (u for u in ("bpd", "perplexity") if f"test_{u}" in m), None)
        if unit is None:
            raise Bad("missing field 'test_bpd' (images) or 'test_perplexity' (text): "
                      "not a metrics.json from evaluate")
    if num(m, f"test_{unit}") is None:
        raise Bad(f"missing (or null) field 'test_{unit}'" + (" (try --unit)" if "kind" not in m else ""))
    seconds = m.get("seconds")
    if seconds is not None:
        if not isinstance(seconds, dict):
            raise Bad(f"field 'seconds' is {_type(seconds)}, expected an object {{job: seconds}}")
        for job in seconds:
            num(seconds, job, "seconds.")
    return m, unit


def fmt(v, unit: str, sign: bool = False) -> str:
    if v is None:
        return NM
    return f"{v:{'+' if sign else ''}.{4 if unit == 'bpd' else 2}f}"


def secs(v) -> str:
    return NM if v is None else f"{v:.1f}"


def mean_std(d: dict, key: str, unit: str, where: str = "") -> str:
    mean, sd = num(d, key, where), num(d, key + "_std", where)
    if mean is None:
        return NM
    return fmt(mean, unit) + ("" if sd is None else f" ± {fmt(sd, unit)}")


def verdict(c: dict, where: str) -> str:
    """LVD better by more than 3 std (``beats_3std``): yes, no or n/m."""
    v = c.get("beats_3std")
    if v is None:
        return NM
    if not isinstance(v, bool):
        raise Bad(f"field {where + 'beats_3std'!r} is {_type(v)}, expected true, false or null")
    return "yes" if v else "no"


def comparison(m: dict, name: str, arm: str, unit: str, notes: list[str]) -> list[str]:
    """[value, margin, beats_3std] of a control in table ``name`` (equal_time, equal_passes)."""
    where = f"{name}.{arm}."
    c = table(m, name).get(arm)
    if c is None:
        return [NM] * 3
    value = mean_std(c, f"test_{unit}", unit, where)
    if value == NM and isinstance(c.get("reason"), str):
        notes.append(f"n/m, {arms.LABELS[arm]} at {name.replace('_', ' ')}: {c['reason']}.")
    if c.get("over_budget") is True and value != NM:
        value += "*"
        late = [s for s in c.get("seconds_seeds") or [] if isinstance(s, (int, float))]
        at = f" ({max(late):.1f} s)" if late else ""
        notes.append(f"\\* {arms.LABELS[arm]}: read at its curve's first point{at}, after LVD's "
                     f"training seconds; it had more time than LVD.")
    return [value, fmt(num(c, "margin", where), unit, sign=True), verdict(c, where)]


def headline(m: dict, unit: str) -> list[str]:
    """The headline table and its footnotes."""
    t = secs(num(m, "train_seconds"))
    head = ["arm", "parameters", f"test {unit} (valid)", f"equal time ({t} s)", "margin", "LVD by > 3 std",
            "equal passes", "margin", "LVD by > 3 std", "train s / seed", "CPU s / seed"]
    rows, notes = [], []
    for arm in arms.ARMS:
        p = arms.prefix(arm)
        if f"{p}test_{unit}" not in m and arm not in table(m, "controls"):
            continue     # an arm this run has not (the HCLT of a text run)
        params = num(m, f"{p}num_params")
        test = mean_std(m, f"{p}test_{unit}", unit)
        valid = num(m, f"{p}valid_{unit}")
        final = test if valid is None else f"{test} ({fmt(valid, unit)})"
        if arm == "lvd":
            cmp = [test, "-", "-"] * 2     # at its own seconds and passes
        else:
            cmp = comparison(m, "equal_time", arm, unit, notes) + comparison(m, "equal_passes", arm, unit, notes)
        size = f"{int(params):,}" if params is not None and math.isfinite(params) else NM
        rows.append([arms.LABELS[arm], size, final, *cmp, secs(num(m, f"{p}train_seconds")),
                     secs(num(m, f"{p}cpu_seconds"))])
    if f"teacher_test_{unit}" in m:
        teacher = "teacher's bound" if unit == "bpd" else "teacher"
        rows.append([teacher, NM, fmt(num(m, f"teacher_test_{unit}"), unit), *["-"] * 6,
                     secs(num(m.get("seconds") or {}, "train_teacher")),
                     secs(num(m.get("job_cpu_seconds") or {}, "train_teacher"))])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + ([""] + notes if notes else [])


def finetune_lines(m: dict) -> list[str]:
    """One line per arm in ``finetune`` (images): before -> after, gain per 1000 s, the choice."""
    out = []
    for arm, f in table(m, "finetune").items():
        w = f"finetune.{arm}."
        label = arms.LABELS.get(arm, arm)
        if f.get("note"):
            out.append(f"Fine-tuning, {label}: none ({f['note']}); the frozen model is the final one.")
            continue
        before, after = num(f, "test_bpd_before", w), num(f, "test_bpd_after", w)
        if before is None and f.get("reason"):
            out.append(f"Fine-tuning, {label}: gain not measured ({f['reason']}).")
            continue
        chosen = {"finetuned": "fine-tuned (pc_final.h5)", "frozen": "frozen (pc_latent_em.h5)"}.get(
            f.get("chosen"), NM)
        rate = num(f, "gain_per_1000s", w)
        out.append(f"Fine-tuning, {label}: test bpd {fmt(before, 'bpd')} -> {fmt(after, 'bpd')} (gain "
                   f"{fmt(num(f, 'test_gain_bpd', w), 'bpd', sign=True)} in {secs(num(f, 'seconds', w))} s, "
                   f"{fmt(rate, 'bpd', sign=True)} per 1000 s); chosen on valid bpd: {chosen}.")
    return out


def job_key(stage: str) -> tuple:
    """Pipeline order, then shards by number (shard2 before shard10)."""
    first = stage.split("/")[0]
    rank = JOB_ORDER.index(first) if first in JOB_ORDER else len(JOB_ORDER)
    return rank, [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in re.split(r"(\d+)", stage) if s]


def stage_tables(m: dict) -> list[str]:
    """Job seconds by arm and seed, then the shared stages and the other run-level jobs."""
    seconds = m.get("seconds") or {}
    cpu = m.get("job_cpu_seconds") or {}
    runs, other = {}, {}
    for job, s in seconds.items():
        parts = job.split("/", 2)
        if len(parts) == 3 and parts[0] in arms.ARMS and re.fullmatch(r"s[0-9]+", parts[1]):
            runs.setdefault((arms.ARMS.index(parts[0]), int(parts[1][1:])), {})[parts[2]] = float(s)
        else:
            other[job] = float(s)
    if not seconds:
        return ["Job seconds: n/m (no benchmark files were read)."]
    out = ["| arm | seed | jobs (s) | total s | CPU s |", "|---|---|---|---|---|"]
    for (a, seed), jobs in sorted(runs.items()):
        listed = ", ".join(f"{k} {v:.1f}" for k, v in sorted(jobs.items(), key=lambda kv: job_key(kv[0])))
        used = [cpu.get(f"{arms.ARMS[a]}/s{seed}/{k}") for k in jobs]
        total_cpu = NM if None in used else f"{sum(used):.1f}"
        out.append(f"| {arms.LABELS[arms.ARMS[a]]} | {seed} | {listed} | {sum(jobs.values()):.1f} | {total_cpu} |")
    out += ["", "| shared stage | seconds |", "|---|---|"]
    out += [f"| {s} | {secs(other.pop(s, None))} |" for s in SHARED_STAGES]
    out.append(f"| total | {secs(num(m, 'shared_seconds'))} |")
    if other:
        out += ["", "Other jobs: " + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(other.items())) + "."]
    return out


def section(m: dict, unit: str, label: str) -> str:
    k = m.get("num_states")
    seeds = m.get("num_seeds")
    caption = f"**{label}" + (f", K = {k}" if k is not None else "") + f"**: test {unit}"
    caption += f", mean ± std over {seeds} seed{'' if seeds == 1 else 's'}" if seeds is not None else \
        ", mean ± std over seeds"
    if isinstance(m.get("protocol"), str):
        caption += f"; {m['protocol']}"
    budget = m.get("budget")
    if budget:
        caption += f"; the controls' budget: {budget if isinstance(budget, str) else json.dumps(budget)}"
    lines = [caption + ".", "", *headline(m, unit)]
    ft = finetune_lines(m)
    if ft:
        lines += ["", *ft]
    lines += ["", *stage_tables(m)]
    return "\n".join(lines)


def run_name(path: str) -> str:
    """The run of ``results/<run>/k<K>/metrics.json`` (else the file's folder)."""
    p = Path(path).resolve()
    return p.parent.parent.name if re.fullmatch(r"k[0-9]+", p.parent.name) else p.parent.name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", nargs="+", help="metrics.json files written by evaluate, one section each")
    p.add_argument("--unit", choices=("auto", "bpd", "perplexity"), default="auto",
                   help="the metric: auto = bpd for images, perplexity for text (the file's 'kind')")
    p.add_argument("--label", action="append", default=[],
                   help="the caption's name instead of the run's; once per file, in order")
    args = p.parse_args(argv)
    if args.label and len(args.label) != len(args.metrics):
        p.error(f"{len(args.label)} --label for {len(args.metrics)} files: give one per file or none")
    sections = []
    for i, path in enumerate(args.metrics):
        try:
            m, unit = load(path, args.unit)
            sections.append(section(m, unit, args.label[i] if args.label else run_name(path)))
        except Bad as e:
            print(f"results_table: {path}: {e}", file=sys.stderr)
            return 2
    print("\n\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
