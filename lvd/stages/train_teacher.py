"""Train the teacher (VQ-VAE / MAE for images, transformer LM for text) on data.h5's train split.

Reads ``data.h5`` (lvd.data). Writes ``teacher.pt`` ({"kind", "config", "data_info",
"state_dict", "epoch", ...}, loadable with weights_only=True; rebuilt by lvd.teachers.load),
``teacher_metrics.json`` (``teacher_test_bpd`` for images -- an upper bound, see
lvd.teachers.vqvae -- or ``teacher_test_perplexity`` for text, ``seconds``, per-epoch
``history`` with validation metrics) and a checkpoint ``last.pt`` in --ckpt-dir after every
epoch. The checkpoint resumes only the same job interrupted: a run finding one resumes when
its job key matches (the teacher kind, the whole config including ``epochs`` and
``max_minutes``, the training data's layout and CRC, and the digest of the lvd source code,
``lvd.fingerprints.code_digest``); any difference starts afresh (logged, naming what
differs). A finished job deletes its checkpoint, so a forced rerun (``--forcerun
train_teacher``) trains from scratch.

``select`` says which epoch's weights ``teacher.pt`` holds: ``last`` (the default, the one every
figure in the README was measured with) or ``best``, the epoch with the lowest validation loss
(``VALID_LOSS_KEYS``: nll for the language models, the bpd bound for the VQ-VAE, masked bpd for
the MAE; scored on ``valid_max`` validation examples after each epoch). The best epoch's weights
travel in the checkpoint, so a resumed job selects as an uninterrupted one would. Without a
validation split ``best`` falls back to the last epoch, with a warning. ``teacher_metrics.json``
records ``selected_epoch``.

Denormal floats are flushed to zero while the teacher trains on the CPU: AdamW's moment
estimates and the convolutions' gradients drift into the denormal range after an epoch or so,
and x86 CPUs compute on denormals in microcode (the VQ-VAE's convolution backward became 7x
slower after one epoch on Fashion-MNIST). Values below 1.2e-38 become 0, nothing else changes.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lvd import fingerprints, io, runtime, teachers
from lvd.progress import Progress
from lvd.stages import common

log = logging.getLogger("lvd.train_teacher")

VALID_LOSS_KEYS = ("nll", "bpd", "masked_bpd")  # the first one a teacher's evaluate() reports is selected on


@dataclass(frozen=True)
class Config:
    kind: str = "auto"          # auto | vqvae | mae (images) | lm | mlm (text); auto: vqvae / lm
    seed: int = 0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3            # peak AdamW learning rate (warm-up, then cosine to lr / 10)
    weight_decay: float = 0.0
    max_minutes: float = 0.0    # cap on total training wall-clock (resumed runs included); 0 = none
    valid_max: int = 2048       # validation examples scored after each epoch; 0 = all
    dim: int = 64               # width: conv channels (vqvae) or transformer width (mae, lm, mlm)
    layers: int = 1             # residual conv blocks (vqvae) or transformer layers
    heads: int = 4              # attention heads (mae, lm, mlm)
    latent_dim: int = 16        # vqvae: code vector size = embedding dim
    codebook_size: int = 128    # vqvae: codes per codebook
    num_codebooks: int = 1      # vqvae: product quantization groups (latent_dim split evenly)
    commitment: float = 0.25    # vqvae: commitment loss weight
    ema_decay: float = 0.95     # vqvae: EMA codebook decay
    num_mix: int = 4            # vqvae, mae: logistic mixture components per variable
    mask_ratio: float | None = None  # mae (default 0.75) / mlm (default 0.15): fraction masked
    select: str = "last"        # which epoch teacher.pt holds: last | best (lowest validation loss)


def _lr(cfg: Config, step: int, total: int) -> float:
    warm = max(1, min(100, total // 20))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def _batches(data: torch.Tensor, batch_size: int, device, limit: int = 0):
    n = len(data) if limit <= 0 else min(limit, len(data))
    for i in range(0, n, batch_size):
        yield data[i:min(i + batch_size, n)].to(device)


def job_key(kind: str, cfg: Config, info: dict) -> dict:
    """What makes a checkpoint this job's own: kind, whole config, data, code version."""
    return {"kind": kind, "config": common.config_dict(cfg), "data_info": info, "code": fingerprints.code_digest()}


def _resume_state(path: Path, job: dict) -> dict | None:
    """The checkpoint's dict if it is this very job interrupted, else None (a stale one is ignored)."""
    if not path.exists():
        return None
    state = io.load_checkpoint(path)  # a corrupt checkpoint is an error naming the file
    old = state.get("job")
    if old == job:
        return state
    if not isinstance(old, dict):
        why = "it has no job key (written by an older lvd)"
    else:
        differ = [k for k in job if k != "config" and old.get(k) != job[k]]
        fields = sorted(k for k in set(job["config"]) | set(old.get("config") or {})
                        if (old.get("config") or {}).get(k) != job["config"].get(k))
        why = ", ".join(differ + ([f"config fields {fields}"] if fields else [])) + " differ"
    log.warning("%s: checkpoint is of another job (%s); starting afresh", path, why)
    return None


def check_config(cfg: Config) -> None:
    """Reject settings that cannot work, naming the field."""
    positive = {"batch_size": cfg.batch_size, "dim": cfg.dim, "heads": cfg.heads, "latent_dim": cfg.latent_dim,
                "codebook_size": cfg.codebook_size, "num_codebooks": cfg.num_codebooks, "num_mix": cfg.num_mix,
                "lr": cfg.lr}
    bad = {k: v for k, v in positive.items() if not v > 0}
    if cfg.epochs < 0 or cfg.layers < 0 or cfg.max_minutes < 0:
        bad.update({k: getattr(cfg, k) for k in ("epochs", "layers", "max_minutes") if getattr(cfg, k) < 0})
    if bad:
        raise ValueError(f"train_teacher config: field(s) {bad} must be positive (epochs, layers, "
                         f"max_minutes: non-negative)")
    if cfg.select not in ("last", "best"):
        raise ValueError(f"train_teacher config: field 'select' is {cfg.select!r}, expected 'last' or 'best'")
    if cfg.mask_ratio is not None and not 0 < cfg.mask_ratio < 1:
        raise ValueError(f"train_teacher config: field 'mask_ratio' is {cfg.mask_ratio}, expected in (0, 1)")


def run(cfg: Config, data_path, out_path, metrics_path, ckpt_dir, device="cpu") -> dict:
    check_config(cfg)
    before = runtime.denormals_flushed()    # the module docstring; the process's setting comes back after
    runtime.flush_denormals(True)
    try:
        return _train(cfg, data_path, out_path, metrics_path, ckpt_dir, device)
    finally:
        runtime.flush_denormals(before)


def _train(cfg: Config, data_path, out_path, metrics_path, ckpt_dir, device) -> dict:
    device = torch.device(device)
    with io.open_artifact(data_path, "lvd.data") as f:
        info = teachers.read_data_info(f)
        kind = teachers.resolve_kind(cfg.kind, info["kind"], where=f"train_teacher config (data {data_path})")
        train = torch.from_numpy(f["train"][...])
        # resuming needs the very same training data, not only the same shapes
        crc = zlib.crc32(np.ascontiguousarray(train.numpy()))
        info_ckpt = {**info, "train_crc32": crc, "num_train": len(train)}
        splits = {s: torch.from_numpy(f[s][...]) for s in ("valid", "test") if s in f}
    if len(train) == 0:
        raise io.ArtifactError(f"{data_path}: field 'train' is empty")
    if "test" not in splits:
        raise io.ArtifactError(f"{data_path}: missing field 'test' (needed for the teacher's test metric)")
    hp = common.config_dict(cfg)
    common.seed_everything(cfg.seed)  # the same initial weights however run() is called
    model = teachers.build(kind, info, hp).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    log.info("%s teacher, %d parameters, %d train examples, %d positions x %d dims", kind,
             sum(p.numel() for p in model.parameters()), len(train), model.num_positions, model.embedding_dim)

    ckpt_path = Path(ckpt_dir) / "last.pt"
    job = job_key(kind, cfg, info_ckpt)
    state = _resume_state(ckpt_path, job)
    start, step, history, spent, stopped = 0, 0, [], 0.0, False
    best = None  # {"epoch", "loss", "state_dict"} of the best validation epoch so far (select: best)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start, step, history, spent = state["epoch"], state["step"], list(state["history"]), state["seconds"]
        stopped = bool(state.get("stopped", False))
        best = state.get("best")
        log.info("resumed from %s at epoch %d (%.1f s trained so far)", ckpt_path, start, spent)
    elif hasattr(model, "prepare"):
        model.prepare(train)

    bs = min(cfg.batch_size, len(train))
    per_epoch = len(train) // bs  # the last partial batch is dropped
    total = per_epoch * cfg.epochs
    cap = cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
    t0 = time.perf_counter() - spent
    for epoch in range(start, cfg.epochs if not stopped else start):
        model.train()
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        sums, n = {}, 0
        bar = Progress(per_epoch, f"epoch {epoch + 1}/{cfg.epochs}: batch", log)  # tqdm or log lines
        for b in range(per_epoch):
            x = train[perm[b * bs:(b + 1) * bs]].to(device)
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step, total)
            loss, logs = model.loss(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step, n = step + 1, n + 1
            for k, v in {"loss": loss.item(), **logs}.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(loss=sums["loss"] / n)
            if time.perf_counter() - t0 > cap:
                stopped = True
                log.warning("max_minutes=%g reached during epoch %d (batch %d/%d); stopping",
                            cfg.max_minutes, epoch + 1, b + 1, per_epoch)
                break
        bar.close()
        model.eval()
        row = {"epoch": epoch + 1, **{f"train_{k}": v / max(n, 1) for k, v in sums.items()}}
        if "valid" in splits and len(splits["valid"]):
            with torch.no_grad():
                valid = model.evaluate(_batches(splits["valid"], 2 * bs, device, cfg.valid_max))
            row.update({f"valid_{k}": v for k, v in valid.items()})
        row.update(seconds=time.perf_counter() - t0, partial=stopped)
        history.append(row)
        loss = next((row[f"valid_{k}"] for k in VALID_LOSS_KEYS if f"valid_{k}" in row), None)
        if cfg.select == "best" and loss is not None and (best is None or loss < best["loss"]):
            best = {"epoch": epoch + 1, "loss": loss,
                    "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        log.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                 " ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
        io.save_checkpoint(ckpt_path, {
            "kind": kind, "config": hp, "data_info": info_ckpt, "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch + 1, "step": step,
            "history": history, "seconds": time.perf_counter() - t0, "stopped": stopped, "job": job,
            "best": best})
        if stopped:
            break
    done = history[-1]["epoch"] if history else 0
    selected = done
    if cfg.select == "best":
        if best is None:
            log.warning("select=best but no validation loss was measured (no 'valid' split in %s, or "
                        "valid_max scored nothing); teacher.pt holds the last epoch", data_path)
        else:
            model.load_state_dict(best["state_dict"])
            selected = best["epoch"]
            log.info("select=best: epoch %d of %d (validation loss %.4g)", selected, done, best["loss"])

    model.eval()
    log.info("scoring the test split (%d examples)", len(splits["test"]))
    with torch.no_grad():
        fit = _batches(train, 2 * bs, device) if kind == "vqvae" else None
        test = model.evaluate(_batches(splits["test"], 2 * bs, device), fit)
    seconds = time.perf_counter() - t0
    io.save_checkpoint(out_path, {
        "kind": kind, "config": hp, "data_info": info, "state_dict": model.state_dict(), "epoch": selected,
        "num_positions": model.num_positions, "embedding_dim": model.embedding_dim, "test": test})
    metrics = {"kind": kind, "test": test, "seconds": seconds, "epochs_done": done, "selected_epoch": selected,
               "stopped_by_time": stopped,
               "num_params": sum(p.numel() for p in model.parameters()), "history": history}
    if info["kind"] == "image":
        metrics["teacher_test_bpd"] = test.get("bpd")  # vqvae: bound (fitted prior); mae: None
    else:
        metrics["teacher_test_perplexity"] = test.get("perplexity")  # lm; mlm: None
    io.write_json(metrics_path, metrics)
    if ckpt_path.exists():  # the job is done: nothing to resume
        ckpt_path.unlink()
    log.info("test %s; %.1f s", " ".join(f"{k} {v:.4g}" for k, v in test.items()), seconds)
    return metrics


def main(argv=None):
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="data.h5 (lvd.data)")
    p.add_argument("--out", required=True, help="teacher.pt to write")
    p.add_argument("--metrics", required=True, help="teacher_metrics.json to write")
    p.add_argument("--ckpt-dir", required=True, help="folder for per-epoch checkpoints (resume)")
    args = p.parse_args(argv)
    cfg = common.load_config(Config, args.config)
    device = common.setup(args, seed=cfg.seed)
    run(cfg, args.data, args.out, args.metrics, args.ckpt_dir, device=device)


if __name__ == "__main__":
    main()
