"""Run the trained teacher over the train split and store one embedding per (example, position).

Reads ``data.h5`` (lvd.data) and ``teacher.pt`` (train_teacher). Writes ``embeddings.h5``
(lvd.embeddings): ``train`` float16 [N, num_positions, dim] -- images: one row per patch in
``lvd.pc.patches.patch_index`` order; text: one per window position -- with attributes
``num_positions``, ``dim``, ``teacher_kind``, ``seconds``. Examples are read, embedded and
written one batch at a time into a pre-created chunked dataset, so memory stays at a few
batches whatever N is. Which embedding each teacher gives is documented in lvd.teachers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from lvd import io, teachers
from lvd.stages import common

log = logging.getLogger("lvd.extract_embeddings")


@dataclass(frozen=True)
class Config:
    batch_size: int = 512   # examples per forward pass (and per HDF5 chunk)


def check_teacher(ckpt: dict, info: dict, teacher_path, data_path) -> None:
    """Refuse a teacher of the wrong kind or built for other data, naming both files."""
    kind = ckpt["kind"]
    if teachers.DATA_KIND[kind] != info["kind"]:
        raise io.ArtifactError(
            f"{teacher_path}: teacher kind {kind!r} models {teachers.DATA_KIND[kind]} data, but {data_path} "
            f"has kind {info['kind']!r}; train a {teachers.DEFAULT_KIND[info['kind']]!r} teacher on this data")
    differ = {k: (ckpt["data_info"].get(k), v) for k, v in info.items() if ckpt["data_info"].get(k) != v}
    if differ:
        raise io.ArtifactError(f"{teacher_path}: trained on data with other attributes than {data_path} "
                               f"(field: teacher value, data value): {differ}")


def run(cfg: Config, data_path, teacher_path, out_path, device="cpu") -> dict:
    if cfg.batch_size < 1:
        raise ValueError(f"extract_embeddings config: field 'batch_size' is {cfg.batch_size}, expected >= 1")
    device = torch.device(device)
    model, ckpt = teachers.load(teacher_path)
    t0 = time.perf_counter()
    with io.open_artifact(data_path, "lvd.data") as f:
        info = teachers.read_data_info(f)
        check_teacher(ckpt, info, teacher_path, data_path)
        model.to(device).eval()
        train = f["train"]
        N, P, D = len(train), model.num_positions, model.embedding_dim
        log.info("%s teacher: embedding %d train examples -> [%d, %d, %d] float16 (%.1f MiB)",
                 ckpt["kind"], N, N, P, D, N * P * D * 2 / 2**20)
        with io.create(out_path, "lvd.embeddings", __name__, common.config_dict(cfg), num_positions=P, dim=D,
                       teacher_kind=ckpt["kind"], teacher_epoch=int(ckpt.get("epoch", 0))) as g:
            out = g.create_dataset("train", shape=(N, P, D), dtype=np.float16,
                                   chunks=(max(1, min(cfg.batch_size, N)), P, D))
            last_log = time.perf_counter()
            for i in range(0, N, cfg.batch_size):
                j = min(i + cfg.batch_size, N)
                x = torch.from_numpy(train[i:j]).to(device)
                with torch.no_grad():
                    e = model.embed(x)  # [B, P, D]
                e = e.float().cpu().numpy().astype(np.float16)
                if not np.isfinite(e).all():
                    raise ValueError(f"{teacher_path}: embeddings of train examples {i}..{j - 1} are not finite "
                                     f"in float16 (|value| > 65504 or NaN)")
                out[i:j] = e
                if time.perf_counter() - last_log > 30 or j == N:
                    last_log = time.perf_counter()
                    log.info("%d / %d examples embedded", j, N)
            g.attrs["seconds"] = time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    log.info("wrote %s in %.1f s", out_path, seconds)
    return {"num_examples": N, "num_positions": P, "dim": D, "seconds": seconds}


def main(argv=None):
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="data.h5 (lvd.data)")
    p.add_argument("--teacher", required=True, help="teacher.pt from train_teacher")
    p.add_argument("--out", required=True, help="embeddings.h5 to write")
    args = p.parse_args(argv)
    cfg = common.load_config(Config, args.config)
    device = common.setup(args)
    run(cfg, args.data, args.teacher, args.out, device=device)


if __name__ == "__main__":
    main()
