"""evaluate: test metrics of LVD and of every control, with their spread over seeds; figures.

Reads data.h5 (valid, test), the circuits of every arm and seed (``--pc``: LVD's pc_final.h5
files, ``--random``: the random-latent arm's, ``--baseline``, ``--hclt``; one file per seed
each, seed order), teacher_metrics.json and the Snakemake benchmark files; writes metrics.json
and figures into --figdir.

Images: ``test_bpd`` = - mean test log-likelihood / (ln 2 * num_vars) over whole test images,
the mean over LVD's seeds; ``<arm>_test_bpd`` the same for arm in random_latents, baseline,
hclt; ``test_bpd_std`` / ``<arm>_test_bpd_std`` the sample standard deviation over seeds (0
with one seed), ``*_test_bpd_seeds`` the values per seed, ``num_seeds``; ``valid_bpd`` likewise.
``inpaint_bpd`` / ``baseline_inpaint_bpd`` (seed 0): bits per hidden pixel of the bottom half
given the top half (exact: log p(x) - log p(x_top)). ``hclt_num_params``,
``hclt_num_latents``, ``hclt_seconds`` (mean training wall time over seeds, from the HCLT
files). ``controls``: for every control arm, ``margin`` (its mean minus LVD's: > 0 means LVD
is better), ``spread`` (the larger of the two standard deviations), ``beats`` (margin >
spread) and ``beats_3std`` (margin > 3 spread); the report states these in words. Figures
(seed 0): samples.png (LVD, baseline, test images), inpainting.png (bottom half hidden),
curves.png (valid and train bpd per epoch of every arm on one epoch axis). ``teacher_gap``:
LVD's test bpd minus the teacher's (< 0: the PC beats its teacher's bound; the verdict says so).
LVD-PG runs (a grow_patch_pcs record in the circuits' history): growing.png, each cluster's
mean log p(patch | own head) after every growing round (LVD and random latents, seed 0), and
``growing_mean_ll`` {arm: the size-weighted mean per round}. data.color ycbcr: the figures
show the images converted back to RGB (the bpd stays in YCbCr space, ``color``).

Text: the same with ``test_perplexity`` = exp(- sum over test windows of log p(window) /
(num_windows * seq_len)) (every window scored on its own from the HMM's initial distribution;
equal to exp(- mean window ll / seq_len), the teacher LM's definition, lvd.teachers.lm); the
controls are random_latents and baseline (the random-init HMM). Figure perplexity.png.

Both: ``teacher_test_bpd`` / ``teacher_test_perplexity`` copied from teacher_metrics.json (may
be null), ``num_params``, ``num_states``, ``seconds`` ({stage: seconds} from the ``s`` column
of every ``*.tsv`` under --benchmarks-dir: run-level files and those under k<num_states>/, the
prefix removed; a missing directory gives {}), ``total_seconds``. A metric that cannot be (a
NaN or negative bpd, a perplexity below 1) is an error naming the circuit file.

    python -m lvd.stages.evaluate --data data.h5 --pc k16/lvd/s0/pc_final.h5 \
        --random k16/random/s0/pc_final.h5 --baseline k16/baseline/s0.h5 --hclt k16/hclt/s0.h5 \
        --teacher-metrics teacher_metrics.json --benchmarks-dir benchmarks/run \
        --out k16/metrics.json --figdir k16/figures
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lvd import io, metrics, pc, plots
from lvd.stages import common, inputs

log = logging.getLogger("lvd.evaluate")


@dataclass(frozen=True)
class Config:
    num_seeds: int = 1         # seeds of every arm (the workflow trains each arm this many times)
    num_samples: int = 16      # unconditional samples per circuit in samples.png
    num_inpaint: int = 6       # test images in inpainting.png (3 conditional samples each per circuit)
    batch_size: int = 512      # examples per likelihood batch
    max_test: int = 0          # test (and valid) rows scored (seeded subset); 0 = all
    seed: int = 0              # subsets and samples

    def __post_init__(self):
        for name in ("num_seeds", "num_samples", "num_inpaint", "batch_size", "max_test", "seed"):
            v = getattr(self, name)
            lo = 1 if name in ("batch_size", "num_seeds") else 0
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"evaluate.{name} is {v!r}, expected an integer >= {lo}")


def read_benchmarks(directory, num_states: int) -> dict[str, float]:
    """{stage: seconds} from Snakemake benchmark files (mean of column ``s`` over their rows)."""
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
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows or "s" not in rows[0]:
            raise ValueError(f"{path}: expected a Snakemake benchmark table with a column 's'")
        try:
            out["/".join(parts)] = float(np.mean([float(r["s"]) for r in rows]))
        except ValueError as e:
            raise ValueError(f"{path}: column 's' is not numeric ({e})") from e
    return out


def read_teacher(path, key: str):
    metrics = io.read_json(path, "teacher_metrics.json from train_teacher")
    if not isinstance(metrics, dict) or key not in metrics:
        raise io.ArtifactError(f"{path}: missing field {key!r}")
    return metrics[key]


def bottom_half(info: inputs.DataInfo, n: int) -> np.ndarray:
    """bool [n, H, W, Ch]: the bottom half of every image."""
    H = info.image_shape[0]
    m = np.zeros((n, *info.image_shape), dtype=bool)
    m[:, H // 2:] = True
    return m


def curve_series(history: list, label: str, to_metric, num_vars: int, style: str, color: str) -> list[dict]:
    """Valid (solid) and train (dashed) curves of a history on the common epoch axis."""
    xs, vs, ts = [], [], []
    epoch = 0
    for rec in history:
        if rec.get("stage") == "latent_em":
            epoch += int(rec.get("epochs", 0))
            continue
        if "valid_ll_init" in rec:
            xs.append(epoch), vs.append(rec["valid_ll_init"]), ts.append(np.nan)
        for i, v in enumerate(rec.get("valid_ll", [])):
            xs.append(epoch + i + 1), vs.append(v)
            ts.append(rec["train_ll"][i] if i < len(rec.get("train_ll", [])) else np.nan)
        epoch += len(rec.get("train_ll", []))
    conv = lambda a: [to_metric(v, num_vars) if np.isfinite(v) else np.nan for v in a]  # noqa: E731
    return [{"label": f"{label} valid", "x": xs, "y": conv(vs), "style": style + "-", "color": color},
            {"label": f"{label} train", "x": xs, "y": conv(ts), "style": style + "--", "color": color}]


ARMS = ("lvd", "random_latents", "baseline", "hclt")    # metrics prefix: "" for lvd, else "<arm>_"
CONTROLS = ARMS[1:]


def prefix(arm: str) -> str:
    return "" if arm == "lvd" else f"{arm}_"


def compare(m: dict, key: str) -> dict:
    """LVD against every control present: margin (> 0: LVD better), spread, verdicts (None with
    a single seed: no spread was measured)."""
    out = {}
    for arm in CONTROLS:
        if m.get(f"{arm}_{key}") is None:
            continue
        margin = m[f"{arm}_{key}"] - m[key]
        sd = max(m[f"{key}_std"], m[f"{arm}_{key}_std"])
        one = m["num_seeds"] < 2
        out[arm] = {"margin": margin, "spread": sd, "beats": None if one else bool(margin > sd),
                    "beats_3std": None if one else bool(margin > 3 * sd)}
    return out


def verdict(m: dict, key: str, unit: str) -> str:
    """The comparison in words (log and report)."""
    parts = []
    for arm, c in m["controls"].items():
        how = ("(one seed: no spread measured)" if c["beats"] is None else
               "by more than 3 seed standard deviations" if c["beats_3std"] else
               "by more than the seeds' spread" if c["beats"] else
               "but not by more than the seeds' spread" if c["margin"] > 0 else "")
        better = "LVD better" if c["margin"] > 0 else "LVD worse"
        parts.append(f"LVD vs {arm}: {m[key]:.4f} vs {m[f'{arm}_{key}']:.4f} {unit} "
                     f"(margin {c['margin']:+.4f}, spread {c['spread']:.4f}): " + " ".join(filter(None, [better, how])))
    if m.get("teacher_gap") is not None:
        parts.append(f"LVD vs its teacher's bound: {m[key]:.4f} vs {m[key] - m['teacher_gap']:.4f} {unit} "
                     f"({'LVD better' if m['teacher_gap'] < 0 else 'teacher better'})")
    return "; ".join(parts) + f" [{m['num_seeds']} seed(s)]"


def growing_means(record: dict) -> list[float]:
    """Size-weighted mean over clusters of a grow_patch_pcs record's curves: one per round."""
    return metrics.size_weighted_means(record["growing_curves"], record["group_sizes"]).tolist()


def data_color(data) -> str:
    """The colour space of data.h5's images ("rgb" for files written before data.color existed)."""
    with io.open_artifact(data, "lvd.data") as f:
        c = f.attrs.get("color", "rgb")
    return c.decode() if isinstance(c, bytes) else str(c)


def run(cfg: Config, data: str, arms: dict, teacher_metrics: str, benchmarks_dir: str | None,
        out: str, figdir: str, device="cpu") -> dict:
    """Score every arm's circuits, draw the figures, write metrics.json; returns the metrics.

    arms: {"lvd": [pc_final.h5 per seed], "random_latents": [...], "baseline": [...],
    "hclt": [...]}; every arm but lvd may be absent or empty.
    """
    with common.Timer() as timer:
        info = inputs.data_info(data)
        files = {arm: [str(p) for p in arms.get(arm) or []] for arm in ARMS}
        if not files["lvd"]:
            raise ValueError("evaluate: no LVD circuit given (--pc)")
        lens = {arm: len(v) for arm, v in files.items() if v}
        if len(set(lens.values())) != 1:
            raise ValueError(f"evaluate: every arm needs one circuit per seed, got {lens}")
        xt = inputs.load_split(data, "test", cfg.max_test, cfg.seed)
        xv = inputs.load_split(data, "valid", cfg.max_test, cfg.seed)
        image = info.kind == "image"
        unit = "bpd" if image else "perplexity"
        to = (lambda v: metrics.bpd(v, info.num_vars)) if image else \
            (lambda v: metrics.perplexity(v, info.seq_len))  # noqa: E731
        m = {"kind": info.kind, "num_test": len(xt), "num_valid": len(xv), "num_seeds": lens["lvd"]}
        first, histories = {}, {}
        for arm, paths in files.items():
            if not paths:
                continue
            per = {"test": [], "valid": []}
            for j, path in enumerate(paths):
                circuit = pc.load(path, device=device)
                inputs.check_circuit(circuit, info, path)
                for split, x in (("test", xt), ("valid", xv)):
                    ll = pc.mean_log_likelihood(circuit, x, batch_size=cfg.batch_size)
                    per[split].append(metrics.check_metric(to(ll), info.kind, path))
                    if j == 0:
                        m[f"{prefix(arm)}{split}_ll"] = ll
                log.info("%s seed %d (%s): test %s %.4f", arm, j, path, unit, per["test"][-1])
                if j == 0:
                    first[arm] = circuit
                    histories[arm] = inputs.history_of(path)
            for split in ("test", "valid"):
                key = f"{prefix(arm)}{split}_{unit}"
                m[key], m[key + "_std"] = float(np.mean(per[split])), metrics.spread(per[split])
                m[key + "_seeds"] = per[split]
            m[f"{prefix(arm)}num_params"] = int(first[arm].num_params)
        if files["hclt"]:
            attrs = [pc.load_attrs(p) for p in files["hclt"]]
            m["hclt_num_latents"] = int(first["hclt"].num_latents)
            m["hclt_seconds"] = float(np.mean([a.get("seconds", np.nan) for a in attrs]))
        c = first["lvd"]
        K = c.num_states if image else c.num_latents
        m["num_states"] = int(K)
        m["controls"] = compare(m, f"test_{unit}")
        fig = Path(figdir)
        styles = {"lvd": ("LVD", "o", "C0"), "random_latents": ("random latents", "v", "C2"),
                  "baseline": ("baseline", "s", "C1"), "hclt": ("HCLT", "^", "C3")}
        if image:
            m["teacher_test_bpd"] = read_teacher(teacher_metrics, "teacher_test_bpd")
            m["color"] = data_color(data)   # "ycbcr": every bpd is in the lossy YCbCr space
            m.update(_image_extras(cfg, info, c, first.get("baseline"), xt, m, fig))
            series = []
            for arm, h in histories.items():
                series += curve_series(h, styles[arm][0], metrics.bpd, info.num_vars, *styles[arm][1:])
            plots.curves_figure(fig / "curves.png", series, m["teacher_test_bpd"])
            if m["teacher_test_bpd"] is not None:   # < 0: the PC beats its teacher's bound
                m["teacher_gap"] = m["test_bpd"] - m["teacher_test_bpd"]
            grown = [(styles[arm][0], r) for arm in ("lvd", "random_latents") for r in histories.get(arm, [])
                     if r.get("stage") == "grow_patch_pcs"]
            if grown:   # LVD-PG: seed 0's per-cluster growing curves of every arm
                plots.growing_figure(fig / "growing.png", [(label, np.asarray(r["growing_curves"], dtype=float),
                                                            np.asarray(r["group_sizes"])) for label, r in grown])
                m["growing_mean_ll"] = {label: growing_means(r) for label, r in grown}
        else:
            tp = lambda v, n: metrics.perplexity(v, info.seq_len)  # noqa: E731
            m["teacher_test_perplexity"] = read_teacher(teacher_metrics, "teacher_test_perplexity")
            m["test_tokens_scored"] = len(xt) * info.seq_len
            series = [curve_series(h, styles[arm][0], tp, 0, *styles[arm][1:])[0] for arm, h in histories.items()]
            bars = {styles[arm][0]: m[f"{prefix(arm)}test_perplexity"] for arm in histories}
            plots.perplexity_figure(fig / "perplexity.png", {**bars, "teacher": m["teacher_test_perplexity"]},
                                    series)
        m["history"] = histories
        m["verdict"] = verdict(m, f"test_{unit}", unit)
    seconds = read_benchmarks(benchmarks_dir, int(K))
    seconds["evaluate"] = timer.seconds
    m["seconds"], m["total_seconds"] = seconds, float(sum(seconds.values()))
    m["config"] = asdict(cfg)
    io.write_json(out, m)
    log.info("wrote %s: %s", out, m["verdict"])
    return m


def _image_extras(cfg: Config, info, c, b, xt: np.ndarray, m: dict, fig: Path) -> dict:
    """Inpainting bpd of LVD and (when given) the baseline; samples.png and inpainting.png.

    m holds the test lls (``test_ll``, ``baseline_test_ll``); b is None without a baseline, and
    then the figures show LVD alone."""
    shape, out = info.image_shape, {}
    miss = bottom_half(info, len(xt)).reshape(len(xt), -1)
    hidden = int(miss[0].sum())
    circuits = [("LVD", "", c)] + ([("baseline", "baseline_", b)] if b is not None else [])
    for _, name, circuit in circuits:
        top = pc.mean_log_likelihood(circuit, xt, batch_size=cfg.batch_size, missing=miss)
        out[name + "inpaint_bpd"] = metrics.bpd(m[name + "test_ll"] - top, hidden)
    torch.manual_seed(cfg.seed)
    if cfg.num_samples:
        n = cfg.num_samples
        blocks = [(f"{label} samples", circ.sample(n, seed=cfg.seed).cpu().numpy()) for label, _, circ in circuits]
        blocks.append(("test images", xt[:n]))
        plots.samples_figure(fig / "samples.png", [(k, v.reshape(-1, *shape)) for k, v in blocks],
                             info.num_cats, color=m.get("color", "rgb"))
    if cfg.num_inpaint:
        k = min(cfg.num_inpaint, len(xt))
        x, mk = xt[:k], miss[:k]
        draws = {label: [circ.sample(k, x=x, missing=mk, seed=cfg.seed + j).cpu().numpy().reshape(-1, *shape)
                         for j in range(3)] for label, _, circ in circuits}
        plots.inpainting_figure(fig / "inpainting.png", x.reshape(-1, *shape), mk.reshape(-1, *shape),
                                list(draws.items()), info.num_cats, color=m.get("color", "rgb"))
    return out


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="data.h5 (format lvd.data)")
    p.add_argument("--pc", nargs="+", required=True, help="LVD's pc_final.h5, one per seed")
    p.add_argument("--random", nargs="*", default=[], help="the random-latent arm's pc_final.h5, one per seed")
    p.add_argument("--baseline", nargs="*", default=[], help="baseline circuits, one per seed")
    p.add_argument("--hclt", nargs="*", default=[], help="plain HCLTs, one per seed (images)")
    p.add_argument("--teacher-metrics", required=True, help="teacher_metrics.json")
    p.add_argument("--benchmarks-dir", default=None, help="Snakemake benchmark directory of the run")
    p.add_argument("--out", required=True, help="metrics.json to write")
    p.add_argument("--figdir", required=True, help="directory for the figures")
    args = p.parse_args(argv)
    cfg = common.load_config(Config, args.config)
    device = common.setup(args, seed=cfg.seed)
    arms = {"lvd": args.pc, "random_latents": args.random, "baseline": args.baseline, "hclt": args.hclt}
    run(cfg, args.data, arms, args.teacher_metrics, args.benchmarks_dir, args.out, args.figdir, device=device)


if __name__ == "__main__":
    main()
