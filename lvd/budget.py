"""What training costs, and a curve read at a given cost (docs/pc_stages.md, "Budgets").

    seconds = read_benchmarks("benchmarks/run", num_states=16)   # {"lvd/s0/finetune": 12.3, ...}
    arm_seconds(seconds, "baseline", 0)                          # the arm's training seconds, seed 0
    resolve("auto", "image")                                     # "time" ("passes" for text)
    value_at(points, 42.0)                                       # a curve read at 42 s

An arm's training seconds for one seed are the summed job seconds (the ``s`` column of the
Snakemake benchmark files) of every job under ``k<K>/<arm>/s<seed>/`` (an arm's name is its
folder, lvd.arms): LVD's materialize_pc, latent_em (or grow_patch_pcs) shards, latent_top_em and
finetune; random_latents' random_latents and the same stages; train_baseline; train_hclt.
Shards that run side by side count each. The same sums over the benchmark files' ``cpu_time``
column (``read_benchmarks(..., column="cpu_time")``) give each arm's CPU seconds, which do not
depend on how many threads a job ran with. The teacher, the embeddings and the k-means
(``SHARED_STAGES``) serve every LVD run of a dataset and are reported apart.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import time
from pathlib import Path

import numpy as np

from lvd import arms

log = logging.getLogger("lvd.budget")

BUDGETS = ("auto", "passes", "time")
SHARED_STAGES = ("train_teacher", "extract_embeddings", "assign_latents")


def resolve(budget: str, kind: str) -> str:
    """The controls' budget: ``auto`` is ``time`` for images and ``passes`` for text."""
    if budget not in BUDGETS:
        raise ValueError(f"budget is {budget!r}, expected one of {list(BUDGETS)}")
    if budget == "auto":
        return "time" if kind == "image" else "passes"
    return budget


def benchmark_seconds(path, column: str = "s") -> float | None:
    """The job seconds of one Snakemake benchmark file: the mean of ``column`` over its rows
    (``s``: wall seconds; ``cpu_time``: user + system CPU seconds of the job's processes). A
    missing ``s`` is an error; a missing or "NA" other column gives None (older Snakemake, or a
    platform where it is not measured)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise ValueError(f"{path}: expected a Snakemake benchmark table with a column 's'")
    if column != "s" and (column not in rows[0] or any(r[column] in ("", "NA", None) for r in rows)):
        return None
    try:
        return float(np.mean([float(r[column]) for r in rows]))
    except ValueError as e:
        raise ValueError(f"{path}: column {column!r} is not numeric ({e})") from e


def read_benchmarks(directory, num_states: int, column: str = "s") -> dict[str, float]:
    """{job: seconds} of every benchmark file under ``directory``: run-level files by their name
    (``train_teacher``), those under ``k<num_states>/`` without that prefix (``lvd/s0/finetune``),
    other K skipped; a missing directory gives {} (logged). ``column``: which seconds
    (benchmark_seconds); files without it are left out."""
    if directory is None or not Path(directory).is_dir():
        log.info("no benchmark directory %s: seconds = {}", directory)
        return {}
    root, out = Path(directory), {}
    for path in sorted(root.rglob("*.tsv")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if re.fullmatch(r"k[0-9]+", parts[0]):
            if parts[0] != f"k{num_states}" or len(parts) == 1:
                continue
            parts = parts[1:]
        value = benchmark_seconds(path, column)
        if value is not None:
            out["/".join(parts)] = value
    return out


def arm_seconds(seconds: dict[str, float], arm: str, seed: int) -> float | None:
    """An arm's training seconds for one seed (the module docstring); None when no job of it
    has a benchmark."""
    if arm not in arms.ARMS:
        raise ValueError(f"no arm {arm!r}; the arms: {', '.join(arms.ARMS)}")
    prefix = f"{arm}/s{seed}/"
    found = [v for k, v in seconds.items() if k.startswith(prefix)]
    return float(sum(found)) if found else None


def shared_seconds(seconds: dict[str, float]) -> float | None:
    """The seconds of the teacher, the embeddings and the k-means of this K (None: none measured)."""
    found = [seconds[s] for s in SHARED_STAGES if s in seconds]
    return float(sum(found)) if found else None


def value_at(points: list[tuple[float, float]], x: float) -> float | None:
    """A curve [(seconds, value)] read at ``x``: linear between the two points around it; the
    last value past the curve's end (the arm had stopped; more time was not used); None before
    its first point (nothing was measured that early)."""
    pts = sorted((float(a), float(b)) for a, b in points if math.isfinite(a) and math.isfinite(b))
    if not pts or x < pts[0][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


def process_start(clock=time.perf_counter) -> float:
    """The ``clock`` reading at which this process started (Linux: /proc/self/stat, so that the
    interpreter's start and the imports count as the job's seconds do); elsewhere: now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])   # field 22: starttime
        age = float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
        return clock() - max(age, 0.0)
    except (OSError, ValueError, IndexError):
        return clock()
