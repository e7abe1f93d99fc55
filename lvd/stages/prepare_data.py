"""prepare_data: read the dataset named in the config and write data.h5 (format lvd.data).

Image sources (attr kind = "image"): digits (scikit-learn's bundled 8x8 digits, 17 grey
levels, no download), fashion_mnist and mnist (idx files), array (the user's .npz / .h5),
cifar10, imagenet32 and imagenet64 (the files as distributed, lvd.data.photos).
Writes train, valid, test as uint8 [N, H, W, Ch] and, with ``crop`` > 0, ``crop_origins/<split>``
(int32 [N, 3]: image index in its split, row, column of every crop; lvd.data.images).
The protocol is stamped in root attributes: ``color`` (rgb | ycbcr | ycocg_r, lvd.data.color:
every likelihood downstream is in that space), ``lossless`` (whether that space is a bijection
of the RGB values, so that bpd compares with RGB's), ``crop``, ``crop_train``, ``crop_eval``,
``crops_per_image``, ``image_height`` / ``image_width`` (before cropping) and ``protocol``
(one sentence saying all of it, for reports).

Text source (attr kind = "text"): wikitext2 (a directory holding train/valid/test files).
Writes the int32 token streams train_tokens, valid_tokens, test_tokens, the int32 windows
train, valid, test [N, seq_len], and vocab (utf-8 strings in id order).

    python -m lvd.stages.prepare_data --config '{"dataset": "digits"}' --out results/x/data.h5
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from lvd import io
from lvd.data import SPLITS, DataError, color
from lvd.data import images as image_data
from lvd.data import text as text_data
from lvd.stages import common

log = logging.getLogger("lvd.prepare_data")

IMAGE_SOURCES = ("digits", "fashion_mnist", "mnist", "array", "cifar10", "imagenet32", "imagenet64")
COLOUR_SOURCES = ("array", "cifar10", "imagenet32", "imagenet64")   # 3-channel RGB (array: when it has 3)
TEXT_SOURCES = ("wikitext2",)
WRITER = "lvd.stages.prepare_data"  # not __name__, which is "__main__" under python -m


@dataclass(frozen=True)
class Config:
    dataset: str = "digits"       # one of IMAGE_SOURCES (images) or TEXT_SOURCES
    path: str = ""                # directory or file; "" = the source's default (see notes/data.md)
    patch_size: int = 4           # images: H and W must be divisible by it
    num_cats: int = 0             # images: grey levels; 0 = source default (digits 17, others 256)
    valid_fraction: float = 0.1   # images: share of train carved out as valid
    test_fraction: float = 0.2    # digits only: share of all images carved out as test
    max_train: int = 0            # images: subsample train to this many (before valid); 0 = all
    max_test: int = 0             # images: subsample test (and a given valid) to this many; 0 = all
    seq_len: int = 32             # text: window length
    stride: int = 1               # text: step between window starts (1 = every window)
    max_tokens: int = 0           # text: cut every split's stream to this many tokens; 0 = all
    seed: int = 0                 # splits and subsampling
    color: str = "rgb"            # images with 3 channels: rgb | ycbcr (lossy) | ycocg_r (lossless)
    crop: int = 0                 # images: 0 = whole images; S = S x S crops (patch_size divides S)
    crop_train: str = "random"    # crops of train: random (seeded, drawn here) | topleft
    crop_eval: str = "topleft"    # crops of valid and test: topleft | random (one seeded crop per image)
    crops_per_image: int = 1      # random train crops per training image (each one example)


def check_config(cfg: Config) -> None:
    """Raise DataError naming the field of ``data`` that is out of range."""
    def bad(field: str, expected: str):
        raise DataError(f"data.{field}={getattr(cfg, field)!r}: expected {expected}")

    if cfg.dataset not in IMAGE_SOURCES + TEXT_SOURCES:
        bad("dataset", f"one of {list(IMAGE_SOURCES + TEXT_SOURCES)}")
    minimum = {"patch_size": 1, "num_cats": 0, "max_train": 0, "max_test": 0, "seq_len": 1, "stride": 1,
               "max_tokens": 0, "seed": 0, "crop": 0, "crops_per_image": 1}
    for field, lo in minimum.items():
        value = getattr(cfg, field)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
            bad(field, f"an integer >= {lo}")
    for field in ("valid_fraction", "test_fraction"):
        value = getattr(cfg, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            bad(field, "a number strictly between 0 and 1")
    if cfg.color not in color.COLORS:
        bad("color", f"one of {list(color.COLORS)}")
    if cfg.color != "rgb" and cfg.dataset not in COLOUR_SOURCES:
        bad("color", f"'rgb' unless dataset is one of {list(COLOUR_SOURCES)} (RGB images)")
    if cfg.dataset in TEXT_SOURCES and cfg.num_cats:
        bad("num_cats", "0 for text (the vocabulary size sets num_cats)")
    for field in ("crop_train", "crop_eval"):
        if getattr(cfg, field) not in image_data.CROP_MODES:
            bad(field, f"one of {list(image_data.CROP_MODES)}")
    if cfg.crop and cfg.dataset in TEXT_SOURCES:
        bad("crop", "0 for text")
    if cfg.crop and cfg.crop % cfg.patch_size:
        bad("crop", f"a multiple of data.patch_size={cfg.patch_size} (the crop is cut into patches)")
    if cfg.crops_per_image > 1 and not (cfg.crop and cfg.crop_train == "random"):
        bad("crops_per_image", "1 unless data.crop > 0 and data.crop_train is 'random'")


def run(cfg: Config, out: str | Path, device: str = "cpu") -> dict:
    """Read ``cfg.dataset`` and write ``out`` (data.h5); returns a summary (sizes, seconds)."""
    check_config(cfg)
    start = time.perf_counter()
    if cfg.dataset in TEXT_SOURCES:
        summary = _run_text(cfg, Path(out), start)
    else:
        summary = _run_images(cfg, Path(out), start)
    log.info("wrote %s (%s, %s) in %.1f s", out, summary["kind"],
             ", ".join(f"{s} {n}" for s, n in summary["sizes"].items()), summary["seconds"])
    return summary


def protocol(attrs: dict, cfg: Config) -> str:
    """One sentence naming the data protocol: dataset, crops of train and of evaluation, colour."""
    h, w = attrs["image_height"], attrs["image_width"]
    if cfg.crop:
        per = f"{cfg.crops_per_image} " if cfg.crop_train == "random" else ""
        train = f"{per}{cfg.crop_train} {cfg.crop}x{cfg.crop} crop(s) per image"
        ev = f"{'the top-left' if cfg.crop_eval == 'topleft' else 'one seeded random'} {cfg.crop}x{cfg.crop} crop"
        shape = f"train: {train}; valid and test: {ev} of the {h}x{w} images"
    else:
        shape = f"whole {h}x{w} images"
    return f"{cfg.dataset}, {shape}, {color.DESCRIPTIONS[cfg.color]}"


def _run_images(cfg: Config, out: Path, start: float) -> dict:
    splits, attrs, origins = image_data.prepare_images(
        cfg.dataset, cfg.path, patch_size=cfg.patch_size, num_cats=cfg.num_cats,
        valid_fraction=cfg.valid_fraction, test_fraction=cfg.test_fraction,
        max_train=cfg.max_train, max_test=cfg.max_test, seed=cfg.seed, crop=cfg.crop,
        crop_train=cfg.crop_train, crop_eval=cfg.crop_eval, crops_per_image=cfg.crops_per_image)
    if cfg.color != "rgb":   # every split, so the test bpd is in that space (recorded)
        if attrs["channels"] != 3 or attrs["num_cats"] != 256:
            raise DataError(f"data.color={cfg.color} needs 3 channels of 256 levels, {cfg.path} has "
                            f"{attrs['channels']} channel(s) of {attrs['num_cats']} levels")
        splits = {s: color.from_rgb(x, cfg.color) for s, x in splits.items()}
        log.info("colour: RGB -> %s", color.DESCRIPTIONS[cfg.color])
    attrs.update(color=cfg.color, lossless=color.LOSSLESS[cfg.color], crop=cfg.crop, crop_train=cfg.crop_train,
                 crop_eval=cfg.crop_eval, crops_per_image=cfg.crops_per_image, protocol=protocol(attrs, cfg))
    log.info("protocol: %s", attrs["protocol"])
    with io.create(out, "lvd.data", WRITER, common.config_dict(cfg), kind="image", **attrs) as f:
        for s in SPLITS:
            x = splits[s]  # uint8 [N, H, W, Ch]
            f.create_dataset(s, data=x, chunks=(min(len(x), 1024), *x.shape[1:]))
            log.info("%s: %d images %s, values %d..%d", s, len(x), x.shape[1:], x.min(), x.max())
        for s, o in origins.items():
            f.create_dataset(f"crop_origins/{s}", data=o)   # int32 [N, 3]: image, row, column
        seconds = time.perf_counter() - start
        f.attrs["seconds"] = seconds
    return {"kind": "image", "dataset": cfg.dataset, "sizes": {s: len(splits[s]) for s in SPLITS},
            "num_cats": attrs["num_cats"], "shape": [attrs["height"], attrs["width"], attrs["channels"]],
            "protocol": attrs["protocol"], "seconds": seconds}


def _run_text(cfg: Config, out: Path, start: float) -> dict:
    corpus = text_data.read_corpus(cfg.path or text_data.WIKITEXT2_DIR, cfg.max_tokens)
    sizes = {s: text_data.count_windows(len(corpus.streams[s]), cfg.seq_len, cfg.stride) for s in SPLITS}
    for s in SPLITS:  # fail before anything is written
        if sizes[s] == 0:
            raise DataError(f"{corpus.files[s]}: {len(corpus.streams[s])} tokens, fewer than "
                            f"data.seq_len={cfg.seq_len}: no window fits")
    vocab_size = len(corpus.vocab)
    index = {t: i for i, t in enumerate(corpus.vocab)}
    attrs = {"dataset": cfg.dataset, "source": str(Path(corpus.files["train"]).parent),
             "vocab_size": vocab_size, "num_cats": vocab_size, "seq_len": cfg.seq_len, "stride": cfg.stride,
             "eos_id": index.get(text_data.EOS, -1), "unk_id": index.get(text_data.UNK, -1),
             **{f"num_tokens_{s}": len(corpus.streams[s]) for s in SPLITS}}
    with io.create(out, "lvd.data", WRITER, common.config_dict(cfg), kind="text", **attrs) as f:
        f.create_dataset("vocab", data=np.array(corpus.vocab, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        for s in SPLITS:
            stream = corpus.streams[s]  # int32 [num_tokens]
            f.create_dataset(f"{s}_tokens", data=stream)
            text_data.write_windows(f, s, stream, cfg.seq_len, cfg.stride)
            log.info("%s: %d tokens -> %d windows of %d (stride %d)", s, len(stream), sizes[s],
                     cfg.seq_len, cfg.stride)
        seconds = time.perf_counter() - start
        f.attrs["seconds"] = seconds
    return {"kind": "text", "dataset": cfg.dataset, "sizes": sizes, "num_cats": vocab_size,
            "num_tokens": {s: len(corpus.streams[s]) for s in SPLITS},
            "unknown": corpus.unknown, "seconds": seconds}


def main(argv=None):
    p = common.parser(__doc__)
    p.add_argument("--out", required=True, help="data.h5 to write")
    args = p.parse_args(argv)
    cfg = common.load_config(Config, args.config)
    device = common.setup(args, seed=cfg.seed)
    try:
        run(cfg, args.out, device=device)
    except DataError as e:
        log.error("%s", e)
        raise SystemExit(f"prepare_data: {e}") from e


if __name__ == "__main__":
    main()
