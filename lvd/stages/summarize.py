"""summarize: gather the sweep. Reads every k{K}/metrics.json of a run, writes summary.tsv
(one row per K, sorted by K) and a plot of the main metric of every arm (LVD, random latents,
baseline, HCLT; mean over seeds with the seeds' standard deviation as error bars) and the
teacher, against num_states (left), against the number of parameters (middle: the size
study's view, where each arm sits at its own size) and against training seconds (right: each
arm at its ``<arm>_train_seconds``, the mean over seeds of its summed training job seconds, one
line per arm through the K's; docs/pc_stages.md, "Budgets"). The table also gets
``equal_time_<arm>_<main>`` / ``equal_passes_<arm>_<main>`` and their ``*_margin`` from each
file's ``equal_time`` and ``equal_passes``.

The main metric is ``test_bpd`` (images) or ``test_perplexity`` (text), whichever every
metrics file has; arm ``a``'s is ``a_<main>`` (``a_<main>_std`` its spread), the teacher's
``teacher_<main>``.
K comes from the file's directory name (``k16`` -> 16); a ``num_states`` entry in the file,
if present, must agree with it.

    python -m lvd.stages.summarize --metrics results/x/k8/metrics.json results/x/k16/metrics.json \
        --out results/x/summary.tsv --plot results/x/summary.png
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from lvd import arms, io
from lvd.stages import common

log = logging.getLogger("lvd.summarize")

MAIN_METRICS = ("test_bpd", "test_perplexity")  # images, text
LEADING = ("num_states",)
LINES = {"lvd": "-", "random_latents": "-.", "baseline": "--", "hclt": ":"}
# (metrics prefix, label, line style, colour, the key of its size) of every arm (lvd.arms)
ARMS = tuple((arms.prefix(a), arms.LABELS[a], arms.MARKERS[a] + LINES[a], arms.COLORS[a],
              arms.prefix(a) + "num_params") for a in arms.ARMS)
BUDGET_TABLES = ("equal_time", "equal_passes")


@dataclass(frozen=True)
class Config:
    """No settings: the table and plot follow from the metrics files alone."""


class SummaryError(ValueError):
    """A metrics file is missing, malformed or inconsistent with the others."""


def read_metrics(path: str | Path) -> dict:
    """One metrics.json as a dict with ``num_states`` set from its directory name (k{K})."""
    path = Path(path)
    if not path.exists():
        raise SummaryError(f"{path}: file not found (expected a metrics.json written by evaluate)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SummaryError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(metrics, dict):
        raise SummaryError(f"{path}: expected a JSON object, got {type(metrics).__name__}")
    match = re.fullmatch(r"k([0-9]+)", path.parent.name)
    if match is None:
        raise SummaryError(f"{path}: directory {path.parent.name!r} is not named k<num_states> (e.g. k16)")
    k = int(match.group(1))
    if "num_states" in metrics and metrics["num_states"] != k:
        raise SummaryError(f"{path}: field 'num_states' is {metrics['num_states']!r}, expected {k} "
                           f"(from the directory name)")
    return {**metrics, **flat_budget_tables(metrics), "num_states": k}


def flat_budget_tables(metrics: dict) -> dict:
    """``equal_time_<arm>_<metric>`` and ``..._margin`` (and the same for equal_passes) as
    columns: each table's main metric of every control and its margin over LVD."""
    out = {}
    for table in BUDGET_TABLES:
        for arm, entry in (metrics.get(table) or {}).items():
            if not isinstance(entry, dict):
                continue
            for key, value in entry.items():
                if key in MAIN_METRICS or key == "margin":
                    out[f"{table}_{arm}_{key}"] = value
    return out


def main_metric(rows: list[dict], paths: list[str]) -> str:
    """The first of MAIN_METRICS present in every row; a clear error when none is."""
    for name in MAIN_METRICS:
        if all(name in row for row in rows):
            return name
    for row, path in zip(rows, paths):
        if not any(name in row for name in MAIN_METRICS):
            raise SummaryError(f"{path}: missing field, expected one of {list(MAIN_METRICS)}")
    raise SummaryError(f"{paths}: the files mix metrics {list(MAIN_METRICS)}; expected one kind for all")


def columns(rows: list[dict], main: str) -> list[str]:
    """Column order: num_states, the main metric, its baseline and teacher, then the rest sorted.

    Only scalar entries (numbers, strings, booleans) become columns; curves and tables do not.
    """
    first = [*LEADING, *(f"{a}{main}{sd}" for a, *_ in ARMS for sd in ("", "_std")), f"teacher_{main}",
             "num_seeds"]
    scalar = {key for row in rows for key, v in row.items() if isinstance(v, (int, float, str, bool))}
    return [c for c in first if c in scalar] + sorted(scalar - set(first))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_table(path: str | Path, rows: list[dict], cols: list[str]) -> None:
    lines = ["\t".join(cols)] + ["\t".join(_cell(row.get(c)) for c in cols) for row in rows]
    with io.atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def plot(path: str | Path, rows: list[dict], main: str, title: str = "") -> None:
    """main metric of every arm (error bars: std over seeds) and the teacher (flat), against
    num_states (left) and against the number of parameters (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [row["num_states"] for row in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), dpi=120)
    values = []
    for prefix, label, style, color, size_key in ARMS:
        key = prefix + main
        pts = [(k, row.get(size_key), row[key], row.get(key + "_std") or 0.0, row.get(prefix + "train_seconds"))
               for k, row in zip(ks, rows) if _finite(row.get(key))]
        if not pts:
            continue
        k, size, y, err, secs = zip(*pts)
        values += [v + sign * e for v, e in zip(y, err) for sign in (-1, 1)]
        axes[0].errorbar(k, y, yerr=err, fmt=style, color=color, label=label, capsize=3, markersize=4)
        for ax, xs in ((axes[1], size), (axes[2], secs)):
            known = [(n, v, e) for n, v, e in zip(xs, y, err) if _finite(n)]
            if known:
                n, v, e = zip(*known)
                ax.errorbar(n, v, yerr=e, fmt=style, color=color, label=label, capsize=3, markersize=4)
    teacher = [row[f"teacher_{main}"] for row in rows if _finite(row.get(f"teacher_{main}"))]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max(hi - lo, 1e-3) * 0.15
    for ax in axes:
        ax.set_ylim(lo - pad, hi + pad)
        if teacher and lo - 3 * pad <= teacher[0] <= hi + 3 * pad:
            ax.set_ylim(min(lo, teacher[0]) - pad, max(hi, teacher[0]) + pad)
            ax.axhline(teacher[0], color="grey", linestyle=":", label="teacher")
        elif teacher:   # far off the arms' scale: say so instead of flattening every curve
            ax.plot([], [], color="grey", linestyle=":", label=f"teacher {teacher[0]:.4g} (off scale)")
        ax.set_ylabel(main.replace("_", " "))
        ax.grid(alpha=0.3)
    if len(set(ks)) > 1 and min(ks) > 0:
        axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(ks, [str(k) for k in ks])
    axes[0].set_xlabel("num_states (K)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("parameters")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("training seconds (summed job seconds; shared teacher and k-means not included)", fontsize=7)
    seeds = {row.get("num_seeds") for row in rows}
    budgets = {str(row.get("budget")) for row in rows if row.get("budget")}
    axes[0].set_title(title or f"{main} vs num_states")
    axes[1].set_title(f"the same against model size ({'/'.join(str(s) for s in seeds if s)} seed(s))")
    axes[2].set_title(f"the same against training time (controls' budget: {'/'.join(sorted(budgets)) or '?'})",
                      fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run(cfg: Config, metrics: list[str], out: str | Path, plot_path: str | Path, device="cpu") -> dict:
    """Gather ``metrics`` into ``out`` (TSV) and ``plot_path`` (PNG); returns the table."""
    if not metrics:
        raise SummaryError("--metrics: no files given (expected one k{K}/metrics.json per K)")
    with common.Timer() as timer:
        rows = [read_metrics(p) for p in metrics]
        seen: dict[int, str] = {}
        for row, p in zip(rows, metrics):
            k = row["num_states"]
            if k in seen:
                raise SummaryError(f"{p}: num_states {k} already given by {seen[k]}")
            seen[k] = str(p)
        main = main_metric(rows, [str(p) for p in metrics])
        rows.sort(key=lambda row: row["num_states"])
        cols = columns(rows, main)
        write_table(out, rows, cols)
        plot(plot_path, rows, main, title=f"{Path(out).parent.name}: {main} vs num_states")
    for row in rows:
        log.info("K=%d: %s", row["num_states"], row.get("verdict") or
                 f"{main} {row.get(main)}, baseline {row.get(f'baseline_{main}')}")
    log.info("wrote %s and %s (%d rows) in %.1f s", out, plot_path, len(rows), timer.seconds)
    return {"main_metric": main, "columns": cols, "rows": rows, "seconds": timer.seconds}


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--metrics", nargs="+", required=True, help="every k{K}/metrics.json of the run")
    p.add_argument("--out", required=True, help="summary.tsv to write")
    p.add_argument("--plot", required=True, help="summary.png to write")
    args = p.parse_args(argv)
    cfg = common.load_config(Config, args.config)
    device = common.setup(args)
    try:
        run(cfg, args.metrics, args.out, args.plot, device=device)
    except SummaryError as e:
        log.error("%s", e)
        raise SystemExit(f"summarize: {e}") from e


if __name__ == "__main__":
    main()
