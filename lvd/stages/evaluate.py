"""evaluate: test metrics of the LVD circuit and the baseline, and the figures.

Reads data.h5 (valid, test), pc_final.h5, baseline.h5, teacher_metrics.json and the Snakemake
benchmark files; writes metrics.json and figures into --figdir.

Images: ``test_bpd`` / ``baseline_test_bpd`` = - mean test log-likelihood / (ln 2 * num_vars)
over whole test images (``valid_bpd`` likewise), ``inpaint_bpd``: bits per hidden pixel of the
bottom half given the top half (exact: log p(x) - log p(x_top)); figures samples.png (LVD,
baseline, test images), inpainting.png (bottom half hidden: originals, masked, conditional
samples of both circuits), curves.png (valid and train bpd per epoch of latent_top_em,
finetune and the baseline on one epoch axis, the LVD curve starting after latent_em's epochs).

Text: ``test_perplexity`` = exp(- sum over test windows of log p(window) / (num_windows *
seq_len)): every window is scored on its own from the HMM's initial distribution and each of
its tokens counts once per window holding it (with stride-1 windows a token is scored in up to
seq_len windows). This equals exp(- mean over windows of ll / seq_len) and the teacher LM's
definition (lvd.teachers.lm). Figure perplexity.png.

Both: ``teacher_test_bpd`` / ``teacher_test_perplexity`` copied from teacher_metrics.json (may
be null), ``num_params``, ``num_states``, ``seconds`` ({stage: seconds} from the ``s`` column
of every ``*.tsv`` under --benchmarks-dir: run-level files and those under k<num_states>/, the
prefix removed; a missing directory gives {}), ``total_seconds``.

    python -m lvd.stages.evaluate --data data.h5 --pc k16/pc_final.h5 --baseline k16/baseline.h5 \
        --teacher-metrics teacher_metrics.json --benchmarks-dir benchmarks/run \
        --out k16/metrics.json --figdir k16/figures
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lvd import io, pc, plots
from lvd.stages import common, pcutil

log = logging.getLogger("lvd.evaluate")


@dataclass(frozen=True)
class Config:
    num_samples: int = 16      # unconditional samples per circuit in samples.png
    num_inpaint: int = 6       # test images in inpainting.png (3 conditional samples each per circuit)
    batch_size: int = 512      # examples per likelihood batch
    max_test: int = 0          # test (and valid) rows scored (seeded subset); 0 = all
    seed: int = 0              # subsets and samples

    def __post_init__(self):
        for name in ("num_samples", "num_inpaint", "batch_size", "max_test", "seed"):
            v = getattr(self, name)
            lo = 1 if name == "batch_size" else 0
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
    path = Path(path)
    if not path.exists():
        raise io.ArtifactError(f"{path}: file not found (expected teacher_metrics.json from train_teacher)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise io.ArtifactError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(metrics, dict) or key not in metrics:
        raise io.ArtifactError(f"{path}: missing field {key!r}")
    return metrics[key]


def bottom_half(info: pcutil.DataInfo, n: int) -> np.ndarray:
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


def run(cfg: Config, data: str, pc_path: str, baseline: str, teacher_metrics: str, benchmarks_dir: str | None,
        out: str, figdir: str, device="cpu") -> dict:
    """Score both circuits, draw the figures, write metrics.json; returns the metrics."""
    with common.Timer() as timer:
        info = pcutil.data_info(data)
        c, b = pc.load(pc_path, device=device), pc.load(baseline, device=device)
        pcutil.check_circuit(c, info, pc_path)
        pcutil.check_circuit(b, info, baseline)
        xt = pcutil.load_split(data, "test", cfg.max_test, cfg.seed)
        xv = pcutil.load_split(data, "valid", cfg.max_test, cfg.seed)
        ll = {}
        for name, circuit in (("", c), ("baseline_", b)):
            for split, x in (("test", xt), ("valid", xv)):
                ll[name + split] = pc.mean_log_likelihood(circuit, x, batch_size=cfg.batch_size)
                log.info("%s%s: mean ll %.4f over %d rows", name or "lvd_", split, ll[name + split], len(x))
        K = c.num_states if info.kind == "image" else c.num_latents
        m = {"kind": info.kind, "num_states": int(K), "num_params": int(c.num_params),
             "baseline_num_params": int(b.num_params), "num_test": len(xt), "num_valid": len(xv),
             **{f"{k}_ll": v for k, v in ll.items()}}
        history = pcutil.history_of(pc_path)
        base_history = pcutil.history_of(baseline)
        fig = Path(figdir)
        if info.kind == "image":
            to = pcutil.bpd
            m.update({k + "_bpd": to(v, info.num_vars) for k, v in ll.items()})
            m["teacher_test_bpd"] = read_teacher(teacher_metrics, "teacher_test_bpd")
            m.update(_image_extras(cfg, info, c, b, xt, ll, fig))
            series = (curve_series(history, "LVD", to, info.num_vars, "o", "C0")
                      + curve_series(base_history, "baseline", to, info.num_vars, "s", "C1"))
            plots.curves_figure(fig / "curves.png", series, m["teacher_test_bpd"])
        else:
            to = lambda v, n: pcutil.perplexity(v, info.seq_len)  # noqa: E731
            m.update({k + "_perplexity": to(v, 0) for k, v in ll.items()})
            m["teacher_test_perplexity"] = read_teacher(teacher_metrics, "teacher_test_perplexity")
            m["test_tokens_scored"] = len(xt) * info.seq_len
            series = [curve_series(history, "LVD", to, 0, "o", "C0")[0],
                      curve_series(base_history, "baseline", to, 0, "s", "C1")[0]]
            plots.perplexity_figure(fig / "perplexity.png",
                                    {"LVD": m["test_perplexity"], "baseline": m["baseline_test_perplexity"],
                                     "teacher": m["teacher_test_perplexity"]}, series)
        m["history"] = {"lvd": history, "baseline": base_history}
    seconds = read_benchmarks(benchmarks_dir, int(K))
    seconds["evaluate"] = timer.seconds
    m["seconds"], m["total_seconds"] = seconds, float(sum(seconds.values()))
    m["config"] = asdict(cfg)
    io.write_json(out, m)
    main_key = "test_bpd" if info.kind == "image" else "test_perplexity"
    log.info("wrote %s: %s %.4f, baseline %.4f, teacher %s", out, main_key, m[main_key],
             m["baseline_" + main_key], m["teacher_" + main_key])
    return m


def _image_extras(cfg: Config, info, c, b, xt: np.ndarray, ll: dict, fig: Path) -> dict:
    """Inpainting bpd of both circuits; samples.png and inpainting.png."""
    shape, out = info.image_shape, {}
    miss = bottom_half(info, len(xt)).reshape(len(xt), -1)
    hidden = int(miss[0].sum())
    for name, circuit in (("", c), ("baseline_", b)):
        top = pc.mean_log_likelihood(circuit, xt, batch_size=cfg.batch_size, missing=miss)
        out[name + "inpaint_bpd"] = pcutil.bpd(ll[name + "test"] - top, hidden)
    torch.manual_seed(cfg.seed)
    if cfg.num_samples:
        n = cfg.num_samples
        blocks = [("LVD samples", c.sample(n, seed=cfg.seed).cpu().numpy()),
                  ("baseline samples", b.sample(n, seed=cfg.seed).cpu().numpy()),
                  ("test images", xt[:n])]
        plots.samples_figure(fig / "samples.png", [(k, v.reshape(-1, *shape)) for k, v in blocks],
                             info.num_cats)
    if cfg.num_inpaint:
        k = min(cfg.num_inpaint, len(xt))
        x, mk = xt[:k], miss[:k]
        draws = {label: [circ.sample(k, x=x, missing=mk, seed=cfg.seed + j).cpu().numpy().reshape(-1, *shape)
                         for j in range(3)] for label, circ in (("LVD", c), ("baseline", b))}
        plots.inpainting_figure(fig / "inpainting.png", x.reshape(-1, *shape), mk.reshape(-1, *shape),
                                list(draws.items()), info.num_cats)
    return out


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="data.h5 (format lvd.data)")
    p.add_argument("--pc", required=True, help="pc_final.h5 (format lvd.pc)")
    p.add_argument("--baseline", required=True, help="baseline.h5 (format lvd.pc)")
    p.add_argument("--teacher-metrics", required=True, help="teacher_metrics.json")
    p.add_argument("--benchmarks-dir", default=None, help="Snakemake benchmark directory of the run")
    p.add_argument("--out", required=True, help="metrics.json to write")
    p.add_argument("--figdir", required=True, help="directory for the figures")
    args = p.parse_args(argv)
    cfg = common.load_config(Config, args.config)
    device = common.setup(args, seed=cfg.seed)
    run(cfg, args.data, args.pc, args.baseline, args.teacher_metrics, args.benchmarks_dir, args.out,
        args.figdir, device=device)


if __name__ == "__main__":
    main()
