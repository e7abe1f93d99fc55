"""evaluate: test metrics of LVD and of every control, with their spread over seeds; figures.

Reads data.h5 (valid, test), the circuits of every arm and seed (``--pc``: LVD's pc_final.h5
files, ``--random-latents``: the random-latent arm's, ``--baseline``, ``--hclt``; one file per
seed each, seed order; the arms and their names: lvd.arms), teacher_metrics.json and the
Snakemake benchmark files; writes metrics.json and figures into --figdir.

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
``growing_mean_ll`` {arm (lvd, random_latents): the size-weighted mean per round}. data.color
ycbcr: the figures show the images converted back to RGB (the bpd stays in YCbCr space,
``color``).

Text: the same with ``test_perplexity`` = exp(- sum over test windows of log p(window) /
(num_windows * seq_len)) (every window scored on its own from the HMM's initial distribution;
equal to exp(- mean window ll / seq_len), the teacher LM's definition, lvd.teachers.lm); the
controls are random_latents and baseline (the random-init HMM). Figure perplexity.png.

Compute (every key defined in docs/pc_stages.md, "Budgets: equal passes and equal time"):
``train_seconds`` and ``<arm>_train_seconds`` (an arm's summed job seconds, lvd.budget;
``*_seeds``), ``cpu_seconds``, ``<arm>_cpu_seconds`` and ``job_cpu_seconds`` (the same from the
sampled ``cpu_time``, null where not sampled), ``shared_seconds`` (teacher, embeddings,
k-means), ``budget``, ``curves`` (every arm's snapshots scored on valid and test, then its final
circuit at its training seconds; lvd.stages.curves), ``equal_time`` and ``equal_passes`` (every
control read off its curve at LVD's seconds and passes, with margins as in ``controls``) and
figures/compute.png; the verdict states both comparisons. Images also ``finetune`` {lvd,
random_latents}: pc_latent_em.h5 (the curve's epoch 0) against pc_final.h5, the gain, its
seconds and the model chosen on valid bpd, never test ("What fine-tuning buys" there).

Both: the data protocol, lvd.data.protocol's keys (images: ``dataset``, ``color``,
``lossless``, ``crop``, ``crop_train``, ``crop_eval``, ``crops_per_image`` and the sentence
``protocol``; text: ``dataset``); ``teacher_test_bpd`` / ``teacher_test_perplexity`` copied
from teacher_metrics.json (may be null), ``num_params``, ``num_states``, ``seconds``
({stage: seconds} from the ``s`` column of every ``*.tsv`` under --benchmarks-dir: run-level
files and those under k<num_states>/, the prefix removed; a missing directory gives {}),
``total_seconds``. A metric that cannot be (a
NaN or negative bpd, a perplexity below 1) is an error naming the circuit file.

    python -m lvd.stages.evaluate --data data.h5 --pc k16/lvd/s0/pc_final.h5 \
        --random-latents k16/random_latents/s0/pc_final.h5 --baseline k16/baseline/s0.h5 \
        --hclt k16/hclt/s0.h5 \
        --teacher-metrics teacher_metrics.json --benchmarks-dir benchmarks/run \
        --out k16/metrics.json --figdir k16/figures
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lvd import arms as arms_mod
from lvd import budget, io, metrics, pc, plots
from lvd.data import protocol as data_protocol
from lvd.stages import common, inputs
from lvd.stages import curves as curves_mod

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


read_benchmarks = budget.read_benchmarks     # {stage: seconds} of the benchmark files (lvd.budget)


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


ARMS, CONTROLS = arms_mod.ARMS, arms_mod.CONTROLS
prefix = arms_mod.prefix     # metrics prefix: "" for lvd, else "<arm>_"


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


def _words(c: dict) -> str:
    how = ("(one seed: no spread measured)" if c["beats"] is None else
           "by more than 3 seed standard deviations" if c["beats_3std"] else
           "by more than the seeds' spread" if c["beats"] else
           "but not by more than the seeds' spread" if c["margin"] > 0 else "")
    return " ".join(filter(None, ["LVD better" if c["margin"] > 0 else "LVD worse", how]))


def verdict(m: dict, key: str, unit: str) -> str:
    """The comparison in words (log and report): the final circuits (trained under ``budget``),
    then at equal passes and at equal time when the curves were read."""
    parts = []
    for arm, c in m["controls"].items():
        parts.append(f"LVD vs {arm}: {m[key]:.4f} vs {m[f'{arm}_{key}']:.4f} {unit} "
                     f"(margin {c['margin']:+.4f}, spread {c['spread']:.4f}): " + _words(c))
    if m.get("teacher_gap") is not None:
        parts.append(f"LVD vs its teacher's bound: {m[key]:.4f} vs {m[key] - m['teacher_gap']:.4f} {unit} "
                     f"({'LVD better' if m['teacher_gap'] < 0 else 'teacher better'})")
    text = "; ".join(parts) + f" [{m['num_seeds']} seed(s)]"
    for name, label in (("equal_passes", "at equal passes"),
                        ("equal_time", f"at equal time ({m.get('train_seconds') or 0:.1f} s of training)")):
        table = m.get(name)
        if not table:
            continue
        said = [f"vs {arm} {c[key]:.4f}{curves_mod.late_words(c)} (margin {c['margin']:+.4f}): {_words(c)}"
                if c.get(key) is not None
                else f"vs {arm}: not measured ({c['reason']})" for arm, c in table.items()]
        text += f". {label[0].upper()}{label[1:]}: LVD {m[key]:.4f} {unit} " + "; ".join(said)
    if m.get("budget"):
        text += f". Controls trained by budget: {m['budget']}"
    if (m.get("finetune") or {}).get("lvd"):
        text += ". " + curves_mod.finetune_words(m["finetune"]["lvd"])
    return text


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
        m.update(data_protocol(data))   # what the numbers measure: dataset, colour space, crops
        states = _num_states(files["lvd"][0], image)
        seconds, cpu = (read_benchmarks(benchmarks_dir, states, column=c) for c in ("s", "cpu_time"))

        def score(circuit, path):
            inputs.check_circuit(circuit, info, path)
            return {f"{split}_{unit}": metrics.check_metric(
                to(pc.mean_log_likelihood(circuit, x, batch_size=cfg.batch_size)), info.kind, path)
                for split, x in (("valid", xv), ("test", xt))}

        first, histories, curves, planned = {}, {}, {}, {}
        for arm, paths in files.items():
            if not paths:
                continue
            per = {"test": [], "valid": []}
            curves[arm], planned[arm] = [], [curves_mod.planned_epochs(p) for p in paths]
            for j, path in enumerate(paths):
                circuit = pc.load(path, device=device)
                inputs.check_circuit(circuit, info, path)
                for split, x in (("test", xt), ("valid", xv)):
                    ll = pc.mean_log_likelihood(circuit, x, batch_size=cfg.batch_size)
                    per[split].append(metrics.check_metric(to(ll), info.kind, path))
                    if j == 0:
                        m[f"{prefix(arm)}{split}_ll"] = ll
                log.info("%s seed %d (%s): test %s %.4f", arm, j, path, unit, per["test"][-1])
                final = {f"valid_{unit}": per["valid"][-1], f"test_{unit}": per["test"][-1]}
                curves[arm].append(curves_mod.arm_curve(arm, j, path, final, seconds, score, device))
                if j == 0:
                    first[arm] = circuit
                    histories[arm] = inputs.history_of(path)
            for split in ("test", "valid"):
                key = f"{prefix(arm)}{split}_{unit}"
                m[key], m[key + "_std"] = float(np.mean(per[split])), metrics.spread(per[split])
                m[key + "_seeds"] = per[split]
            m[f"{prefix(arm)}num_params"] = int(first[arm].num_params)
            secs = [c[-1]["seconds"] for c in curves[arm]]
            m[f"{prefix(arm)}train_seconds"], m[f"{prefix(arm)}train_seconds_seeds"] = float(np.mean(secs)), secs
            cpus = [budget.arm_seconds(cpu, arm, j) for j in range(len(paths))]
            m[f"{prefix(arm)}cpu_seconds"] = None if None in cpus else float(np.mean(cpus))
            m[f"{prefix(arm)}cpu_seconds_seeds"] = cpus
        m["shared_seconds"] = budget.shared_seconds(seconds)
        budgets = {arm: pc.load_attrs(files[arm][0]).get("budget") for arm in ("baseline", "hclt") if files[arm]}
        budgets = {arm: b for arm, b in budgets.items() if b}
        m["budget"] = (next(iter(budgets.values())) if len(set(budgets.values())) == 1 else budgets) or None
        m["curves"] = curves
        if files["hclt"]:
            attrs = [pc.load_attrs(p) for p in files["hclt"]]
            m["hclt_num_latents"] = int(first["hclt"].num_latents)
            m["hclt_seconds"] = float(np.mean([a.get("seconds", np.nan) for a in attrs]))
        c = first["lvd"]
        K = c.num_states if image else c.num_latents
        m["num_states"] = int(K)
        m["controls"] = compare(m, f"test_{unit}")
        m["equal_passes"], m["equal_time"] = curves_mod.compute_tables(m, curves, planned, f"test_{unit}")
        if image:     # pc_latent_em (finetune's epoch 0) against pc_final; text has no pc_latent_em
            m["finetune"] = {arm: curves_mod.finetune_gain(curves[arm]) for arm in ("lvd", "random_latents")
                             if arm in curves}
        fig = Path(figdir)
        styles = {arm: (arms_mod.LABELS[arm], arms_mod.MARKERS[arm], arms_mod.COLORS[arm]) for arm in ARMS}
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
            grown = [(arm, r) for arm in ("lvd", "random_latents") for r in histories.get(arm, [])
                     if r.get("stage") == "grow_patch_pcs"]
            if grown:   # LVD-PG: seed 0's per-cluster growing curves of every arm
                panels = [(styles[arm][0], np.asarray(r["growing_curves"], dtype=float), np.asarray(r["group_sizes"]))
                          for arm, r in grown]
                plots.growing_figure(fig / "growing.png", panels)
                m["growing_mean_ll"] = {arm: growing_means(r) for arm, r in grown}
        else:
            tp = lambda v, n: metrics.perplexity(v, info.seq_len)  # noqa: E731
            m["teacher_test_perplexity"] = read_teacher(teacher_metrics, "teacher_test_perplexity")
            m["test_tokens_scored"] = len(xt) * info.seq_len
            series = [curve_series(h, styles[arm][0], tp, 0, *styles[arm][1:])[0] for arm, h in histories.items()]
            bars = {styles[arm][0]: m[f"{prefix(arm)}test_perplexity"] for arm in histories}
            plots.perplexity_figure(fig / "perplexity.png", {**bars, "teacher": m["teacher_test_perplexity"]},
                                    series)
        labels = {arm: styles[arm][0] for arm in curves}
        plots.compute_figure(fig / "compute.png", {labels[a]: (c, styles[a][2]) for a, c in curves.items()},
                             f"test_{unit}", m["train_seconds"],
                             ylabel="test bits per dimension" if image else "test perplexity")
        m["history"] = histories
        m["verdict"] = verdict(m, f"test_{unit}", unit)
    seconds["evaluate"] = timer.seconds
    m["seconds"], m["total_seconds"] = seconds, float(sum(seconds.values()))
    m["job_cpu_seconds"] = {job: cpu.get(job) for job in seconds}   # the same keys as "seconds"; null: not sampled
    m["config"] = asdict(cfg)
    io.write_json(out, m)
    log.info("wrote %s: %s", out, m["verdict"])
    return m


def _num_states(path, image: bool) -> int:
    """K of an LVD circuit file (images: num_states; text: the HMM's hidden states)."""
    c = pc.load(path)
    return int(c.num_states if image else c.num_latents)


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
    p.add_argument("--random-latents", nargs="*", default=[],
                   help="the random-latent arm's pc_final.h5, one per seed")
    p.add_argument("--random", nargs="*", default=None, help=argparse.SUPPRESS)   # the old name: refused
    p.add_argument("--baseline", nargs="*", default=[], help="baseline circuits, one per seed")
    p.add_argument("--hclt", nargs="*", default=[], help="plain HCLTs, one per seed (images)")
    p.add_argument("--teacher-metrics", required=True, help="teacher_metrics.json")
    p.add_argument("--benchmarks-dir", default=None, help="Snakemake benchmark directory of the run")
    p.add_argument("--out", required=True, help="metrics.json to write")
    p.add_argument("--figdir", required=True, help="directory for the figures")
    args = p.parse_args(argv)
    if args.random is not None:
        p.error("--random is now --random-latents (the arm random_latents, lvd.arms)")
    cfg = common.load_config(Config, args.config)
    device = common.setup(args, seed=cfg.seed)
    arms = {"lvd": args.pc, "random_latents": args.random_latents, "baseline": args.baseline, "hclt": args.hclt}
    run(cfg, args.data, arms, args.teacher_metrics, args.benchmarks_dir, args.out, args.figdir, device=device)


if __name__ == "__main__":
    main()
