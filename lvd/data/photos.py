"""The papers' colour benchmarks as distributed: CIFAR-10 (binary version) and downsampled ImageNet.

Each reader takes the directory ``data.path`` names and returns ({"train", "test"}: uint8
[N, S, S, 3] RGB, {split: the files read}); ``lvd.data.images.prepare_images`` carves valid
from train and crops. Every file is checked; a problem raises DataError naming the file, the
field and what was expected.

CIFAR-10, binary version (https://www.cs.toronto.edu/~kriz/cifar.html, cifar-10-binary.tar.gz):
``data_batch_1.bin`` .. ``data_batch_5.bin`` (train) and ``test_batch.bin`` (test), in
``data.path`` or its ``cifar-10-batches-bin/``. Each file is a sequence of 3,073-byte records:
1 label byte (0..9), then 3,072 pixel bytes: the 1,024 red values of the 32x32 image row by
row, then the 1,024 green, then the 1,024 blue. The distributed files hold 10,000 records each.
The pickled Python version is never read (unpickling runs code).

Downsampled ImageNet (Chrabaszcz, Loshchilov and Hutter 2017, image-net.org), S = 32 or 64:
  * npz: ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` (train) and ``val_data.npz``
    (test), in ``data.path`` or its subdirectories one level down (as the two archives unpack).
    Members ``data``: uint8 [N, 3 * S * S], each row the R plane, then G, then B (row-major
    S x S each), and ``labels``: [N] (not used); read with ``np.load(allow_pickle=False)``.
  * PNG: one S x S 8-bit RGB image per file, in ``train/`` and ``valid/`` subdirectories of
    ``data.path`` (also accepted: ``train_SxS/`` and ``valid_SxS/`` as in the PixelRNN
    downsampling's archives, and ``val/``), read in file-name order with Pillow (a dependency
    of matplotlib). Note: the PixelRNN downsampling (van den Oord et al. 2016) and
    Chrabaszcz et al.'s are different image sets; a bpd on one is not a bpd on the other.
When both layouts are present the npz batches are read.
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from lvd.data import DataError

log = logging.getLogger("lvd.data")

CIFAR10_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
CIFAR10_RECORDS = 10_000   # per distributed file
CIFAR10_RECORD = 1 + 3 * 32 * 32
IMAGENET_SIZES = {"imagenet32": 32, "imagenet64": 64}
IMAGENET_TRAIN_BATCHES = 10
NPZ_TRAIN = re.compile(r"train_data_batch_(\d+)\.npz")
NPZ_TEST = "val_data.npz"
Keep = Callable[[int], "np.ndarray | None"]   # number of training images -> bool mask of those to keep


def planes_to_images(rows: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, 3 * S * S] channel-planar rows (R plane, G plane, B plane) -> uint8 [N, S, S, 3]."""
    return np.ascontiguousarray(rows.reshape(len(rows), 3, size, size).transpose(0, 2, 3, 1))


# ----------------------------------------------------------------------------- CIFAR-10
def read_cifar10_file(path: str | Path) -> np.ndarray:
    """The images of one CIFAR-10 binary batch file, uint8 [N, 32, 32, 3]."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise DataError(f"{path}: empty file; expected records of {CIFAR10_RECORD} bytes "
                        f"(1 label byte + 3,072 pixel bytes)")
    n, rest = divmod(raw.size, CIFAR10_RECORD)
    if rest:
        raise DataError(f"{path}: truncated record: {raw.size} bytes is {n} whole record(s) of "
                        f"{CIFAR10_RECORD} bytes (1 label byte + 3,072 pixel bytes) and {rest} bytes over")
    records = raw.reshape(n, CIFAR10_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(f"{path}: record {bad} has label byte {labels[bad]}, expected 0..9 "
                        f"(not a CIFAR-10 binary file, or CIFAR-100's, whose records have 2 label bytes)")
    if n != CIFAR10_RECORDS:
        log.warning("%s: %d records; the distributed files hold %d", path, n, CIFAR10_RECORDS)
    return planes_to_images(records[:, 1:], 32)


def cifar10_dir(directory: str | Path) -> Path:
    """``directory`` or its ``cifar-10-batches-bin/``: the one holding test_batch.bin."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: directory not found (data.path for cifar10; expected the directory of "
                        f"data_batch_1.bin .. data_batch_5.bin and test_batch.bin, the binary version)")
    for cand in (d, d / "cifar-10-batches-bin"):
        if (cand / "test_batch.bin").is_file():
            return cand
    pickled = " (found the pickled Python version, which is not read: use the binary version)" \
        if (d / "data_batch_1").is_file() or (d / "cifar-10-batches-py").is_dir() else ""
    raise DataError(f"{d}: no test_batch.bin here or in cifar-10-batches-bin/; expected CIFAR-10's binary "
                    f"version (cifar-10-binary.tar.gz){pickled}")


def read_cifar10(directory: str | Path, keep: Keep | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """train (data_batch_1..5) and test (test_batch) of CIFAR-10's binary version (``keep``: as
    read_imagenet's)."""
    d = cifar10_dir(directory)
    arrays, files = {}, {}
    for split, names in CIFAR10_FILES.items():
        missing = [name for name in names if not (d / name).is_file()]
        if missing:
            raise DataError(f"{d}: missing {missing}; expected {names} ({split})")
        arrays[split] = np.concatenate([read_cifar10_file(d / name) for name in names])
        if split == "train" and keep is not None:
            mask = keep(len(arrays[split]))
            arrays[split] = arrays[split] if mask is None else arrays[split][mask]
        files[split] = f"{d}/{'{' + ','.join(names) + '}' if len(names) > 1 else names[0]}"
    return arrays, files


# ----------------------------------------------------------------------------- downsampled ImageNet
def read_imagenet_npz(path: str | Path, size: int) -> np.ndarray:
    """The images of one downsampled-ImageNet npz batch, uint8 [N, S, S, 3]."""
    path = Path(path)
    want = f"member 'data' uint8 [N, {3 * size * size}] (3 x {size} x {size}, channel-planar)"
    try:
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):   # a lone .npy array under an .npz name
            raise DataError(f"{path}: one npy array of shape {z.shape}, expected an npz archive with {want} "
                            f"and 'labels' [N]")
        with z:
            for member in ("data", "labels"):
                if member not in z.files:
                    raise DataError(f"{path}: missing member {member!r}; expected {want} and 'labels' [N], "
                                    f"found {sorted(z.files)}")
            data, labels = z["data"], z["labels"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot read as npz without pickle ({e}); expected {want}") from e
    if data.dtype != np.uint8:
        raise DataError(f"{path}: member 'data' has dtype {data.dtype}, expected uint8")
    if data.ndim != 2 or data.shape[1] != 3 * size * size or data.shape[0] == 0:
        hint = ""
        if data.ndim == 2 and data.shape[1] in (3 * 32 * 32, 3 * 64 * 64, 3 * 16 * 16, 3 * 8 * 8):
            side = int(round((data.shape[1] / 3) ** 0.5))
            hint = f" (rows of {side}x{side} images: the wrong data.dataset?)"
        raise DataError(f"{path}: member 'data' has shape {data.shape}, expected [N > 0, {3 * size * size}]"
                        f" (3 x {size} x {size} values per image){hint}")
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: member 'labels' has shape {labels.shape}, expected [{len(data)}] "
                        f"(one per row of 'data')")
    return planes_to_images(data, size)


def _npz_files(d: Path) -> tuple[list[Path], list[Path]]:
    """(train batches in batch order, val_data.npz files) in ``d`` and its subdirectories."""
    dirs = [d] + sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    train, test = {}, []
    for folder in dirs:
        for p in sorted(folder.glob("*.npz")):
            m = NPZ_TRAIN.fullmatch(p.name)
            if m:
                i = int(m.group(1))
                if i in train:
                    raise DataError(f"{d}: two copies of train_data_batch_{i}.npz: {train[i]} and {p}")
                train[i] = p
            elif p.name == NPZ_TEST:
                test.append(p)
    if train:
        want = list(range(1, max(train) + 1))
        missing = [f"train_data_batch_{i}.npz" for i in want if i not in train]
        if missing:
            raise DataError(f"{d}: missing {missing}; expected train_data_batch_1.npz .. "
                            f"train_data_batch_{IMAGENET_TRAIN_BATCHES}.npz")
        if max(train) != IMAGENET_TRAIN_BATCHES:
            log.warning("%s: %d train batches; the distributed data has %d", d, max(train),
                        IMAGENET_TRAIN_BATCHES)
    return [train[i] for i in sorted(train)], test


PNG_DIRS = {"train": ("train", "train_{s}x{s}"), "test": ("valid", "valid_{s}x{s}", "val")}


def read_png(path: Path, size: int) -> np.ndarray:
    """One S x S 8-bit RGB PNG as uint8 [S, S, 3]."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise DataError(f"{path}: a {im.format} image, expected PNG")
            if im.mode != "RGB":
                raise DataError(f"{path}: PNG mode {im.mode!r}, expected 'RGB' (8-bit colour, no alpha)")
            if im.size != (size, size):
                raise DataError(f"{path}: PNG of {im.size[0]}x{im.size[1]} pixels, expected {size}x{size}")
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:   # Pillow's errors for unreadable or truncated files
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot decode as PNG ({e})") from e


def _png_dir(d: Path, split: str, size: int) -> Path | None:
    for name in PNG_DIRS[split]:
        p = d / name.format(s=size)
        if p.is_dir():
            return p
    return None


def npz_rows(path: Path) -> int | None:
    """The number of rows of member ``data`` read from its npy header alone (None if unreadable:
    read_imagenet_npz then reports what is wrong)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("data.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = read(f)[0]
        return int(shape[0]) if shape else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def _read_npz_batches(paths: list[Path], size: int, keep: Keep | None) -> np.ndarray:
    """The train batches joined; with ``keep``, only the kept rows are ever held (one batch at a time)."""
    mask = None
    if keep is not None:
        rows = [npz_rows(p) for p in paths]
        if None not in rows:
            mask = keep(sum(rows))
        else:   # a batch whose header cannot be read: read_imagenet_npz names the problem
            for p, n in zip(paths, rows):
                if n is None:
                    read_imagenet_npz(p, size)
    parts, start = [], 0
    for p in paths:
        x = read_imagenet_npz(p, size)
        n = len(x)
        if mask is not None:
            x = x[mask[start:start + n]]
        start += n
        parts.append(x)
    return np.concatenate(parts)


def read_imagenet(directory: str | Path, dataset: str,
                  keep: Keep | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """train and test of downsampled ImageNet (npz batches, else PNG folders).

    ``keep`` (prepare_images's max_train): called once with the number of training images, it
    returns a bool mask of those to keep (or None: all); for npz batches the number comes from
    the npy headers, so that only the kept rows are held in memory.
    """
    size = IMAGENET_SIZES[dataset]
    d = Path(directory)
    layouts = (f"train_data_batch_1..{IMAGENET_TRAIN_BATCHES}.npz and {NPZ_TEST} (here or one folder down), "
               f"or PNG files in train/ and valid/")
    if not d.is_dir():
        raise DataError(f"{d}: directory not found (data.path for {dataset}; expected {layouts})")
    train, test = _npz_files(d)
    if train or test:
        if not train or len(test) != 1:
            raise DataError(f"{d}: found {len(train)} train batch(es) and {len(test)} {NPZ_TEST}; "
                            f"expected train_data_batch_*.npz and exactly one {NPZ_TEST}")
        arrays = {"train": _read_npz_batches(train, size, keep), "test": read_imagenet_npz(test[0], size)}
        files = {"train": f"{train[0].parent}/train_data_batch_{{1..{len(train)}}}.npz", "test": str(test[0])}
        return arrays, files
    arrays, files = {}, {}
    for split in ("train", "test"):
        folder = _png_dir(d, split, size)
        if folder is None:
            raise DataError(f"{d}: no npz batches and no {'/'.join(PNG_DIRS[split]).format(s=size)} folder "
                            f"of PNG files ({split}); expected {layouts}")
        names = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
        if not names:
            raise DataError(f"{folder}: no .png files ({split} images of {size}x{size})")
        mask = keep(len(names)) if split == "train" and keep is not None else None
        if mask is not None:
            names = [p for p, k in zip(names, mask) if k]
        x = np.empty((len(names), size, size, 3), np.uint8)   # filled in place: never held twice
        for i, p in enumerate(names):
            x[i] = read_png(p, size)
        arrays[split] = x
        files[split] = f"{folder}/*.png ({len(names)} files)"
    return arrays, files


# ----------------------------------------------------------------------------- writers
# The same formats written back: tiny stand-ins for tests and dry runs, or a user's own RGB
# images laid out as one of these datasets.
def images_to_planes(x: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] -> uint8 [N, 3 * S * S] channel-planar rows (``planes_to_images`` undone)."""
    x = np.asarray(x, np.uint8)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), int(np.prod(x.shape[1:]))))


def write_cifar10(directory: str | Path, train: np.ndarray, test: np.ndarray,
                  labels: np.ndarray | None = None) -> Path:
    """CIFAR-10 binary files of uint8 [N, 32, 32, 3] images: train split evenly over 5 batches."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    parts = dict(zip(CIFAR10_FILES["train"], np.array_split(np.asarray(train), 5)))
    parts[CIFAR10_FILES["test"][0]] = np.asarray(test)
    for name, x in parts.items():
        y = np.zeros(len(x), np.uint8) if labels is None else np.asarray(labels[:len(x)], np.uint8)
        (d / name).write_bytes(np.concatenate([y[:, None], images_to_planes(x)], 1).tobytes())
    return d


def write_imagenet_npz(directory: str | Path, train: np.ndarray, test: np.ndarray,
                       batches: int = IMAGENET_TRAIN_BATCHES) -> Path:
    """Downsampled-ImageNet npz batches of uint8 [N, S, S, 3] images (labels 1)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(np.array_split(np.asarray(train), batches), 1):
        np.savez(d / f"train_data_batch_{i}.npz", data=images_to_planes(x), labels=np.ones(len(x), np.int64))
    np.savez(d / NPZ_TEST, data=images_to_planes(test), labels=np.ones(len(test), np.int64))
    return d


def write_imagenet_png(directory: str | Path, train: np.ndarray, test: np.ndarray) -> Path:
    """train/ and valid/ folders of one PNG per uint8 [S, S, 3] image (names in image order)."""
    from PIL import Image

    d = Path(directory)
    for folder, x in (("train", train), ("valid", test)):
        (d / folder).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(np.asarray(x, np.uint8)):
            Image.fromarray(img, "RGB").save(d / folder / f"{i:08d}.png")
    return d
