"""Image sources: scikit-learn's digits, idx files (MNIST, Fashion-MNIST), the user's own arrays,
and the colour benchmarks CIFAR-10 and downsampled ImageNet 32x32 / 64x64 (``lvd.data.photos``).

``prepare_images`` returns uint8 arrays [N, H, W, Ch] for the splits train / valid / test,
checked against ``num_cats`` (values in [0, num_cats)) and ``patch_size`` (H and W divisible,
or the crop's side).

Splits (all seeded with one ``numpy.random.default_rng(seed)``, in this order):
  1. digits only: ``test_fraction`` of the 1,797 images becomes test (the rest is train);
  2. ``max_train`` > 0 subsamples train, *before* valid is carved, so a tiny preset gets a
     proportionally tiny valid split;
  3. valid = ``valid_fraction`` of train (skipped when an array file brings its own valid);
     CIFAR-10 and ImageNet bring none: valid is held out of their training images, and their
     test split is the distributed test set (CIFAR-10's test_batch, ImageNet's val_data);
  4. ``max_test`` > 0 subsamples test (and a valid split the array file brought).
Subsampled and carved indices are kept in file order.

Crops (``crop`` = S > 0), after the splits, from a second generator seeded with (seed, 1), so
that the splits are the same images with and without crops: train gets ``crops_per_image``
S x S crops per image (``crop_train`` random: offsets uniform over every position, image-major
order; topleft: the region [0, S) x [0, S)), valid and test one crop per image
(``crop_eval``: topleft, or one seeded random crop). Random crops are drawn once, here: the
static data.h5 holds them, so "random per epoch" becomes ``crops_per_image`` fixed draws.
``crop_origins`` records (image index in its split, row, column) of every crop.
"""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np

from lvd.data import DataError

log = logging.getLogger("lvd.data")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
MNIST_DIR = "data/mnist"
DEFAULT_NUM_CATS = {"digits": 17, "fashion_mnist": 256, "mnist": 256, "array": 256, "cifar10": 256,
                    "imagenet32": 256, "imagenet64": 256}
CROP_MODES = ("random", "topleft")

# idx type byte -> big-endian dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_STEMS = {"train": "train-images", "test": "t10k-images"}


# ----------------------------------------------------------------------------- idx files
def _open_binary(path: Path):
    """The file itself, or its decompressed stream when it starts with the gzip magic."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _read_exact(f, n: int, path: Path, what: str) -> bytes:
    buf = f.read(n)
    if len(buf) < n:
        raise DataError(f"{path}: truncated idx file: expected {n} bytes of {what}, found {len(buf)}")
    return buf


def read_idx(path: str | Path, max_items: int = 0) -> np.ndarray:
    """Parse an idx file (gzip-compressed or not) into a native-endian array.

    Header: two zero bytes, a type byte (0x08 uint8 ... 0x0E float64), the number of
    dimensions, then one big-endian uint32 per dimension. ``max_items`` > 0 reads only the
    first items along dimension 0 (the rest of the file is not read).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected an idx file)")
    try:
        with _open_binary(path) as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in IDX_TYPES or not magic[3]:
                raise DataError(f"{path}: bad idx magic number 0x{magic.hex() or 'empty'}; expected "
                                f"00 00 <type 08/09/0b/0c/0d/0e> <number of dimensions>")
            dtype, ndim = np.dtype(IDX_TYPES[magic[2]]), magic[3]
            dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, "header dimensions"))
            n = min(dims[0], max_items) if max_items > 0 else dims[0]
            item = int(np.prod(dims[1:], dtype=np.int64))
            buf = _read_exact(f, n * item * dtype.itemsize, path, f"data for shape {dims}")
            if n == dims[0] and f.read(1):
                raise DataError(f"{path}: idx file has data beyond the shape {dims} its header declares")
    except (OSError, EOFError) as e:  # unreadable, or a corrupt gzip stream
        raise DataError(f"{path}: cannot read idx file ({e})") from e
    return np.frombuffer(buf, dtype).reshape((n, *dims[1:])).astype(dtype.newbyteorder("="))


def find_idx(directory: str | Path, split: str) -> Path:
    """The images file of ``split`` ("train" or "test") in an MNIST-style directory."""
    d = Path(directory)
    stem = IDX_STEMS[split]
    names = [f"{stem}-idx3-ubyte.gz", f"{stem}-idx3-ubyte", f"{stem}.idx3-ubyte.gz", f"{stem}.idx3-ubyte"]
    for name in names:
        if (d / name).is_file():
            return d / name
    raise DataError(f"{d}: no {split} images; expected one of {names}")


def read_idx_dir(directory: str | Path, dataset: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """train and test images [N, H, W] of an MNIST-style directory, and the files read."""
    d = Path(directory)
    if not d.is_dir():
        hint = " (install it with `apt-get install dataset-fashion-mnist`)" if dataset == "fashion_mnist" else ""
        raise DataError(f"{d}: directory not found (data.path for {dataset}; expected a directory "
                        f"holding train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz){hint}")
    arrays, files = {}, {}
    for split in ("train", "test"):
        path = find_idx(d, split)
        x = read_idx(path)
        if x.ndim != 3:
            raise DataError(f"{path}: idx file has shape {x.shape}, expected 3 dimensions [N, H, W] (images)")
        arrays[split], files[split] = x, str(path)
    return arrays, files


# ----------------------------------------------------------------------------- other sources
def load_digits() -> np.ndarray:
    """scikit-learn's bundled 8x8 digits (1,797 images, grey levels 0..16) as uint8 [N, 8, 8]."""
    from sklearn.datasets import load_digits as _load

    x = _load().images  # float64 [1797, 8, 8], integral values
    if not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() > 16:
        raise DataError("sklearn.datasets.load_digits: expected integral grey levels 0..16")
    return x.astype(np.uint8)


def read_array(path: str | Path) -> dict[str, np.ndarray]:
    """The user's images: ``.npz`` with keys train/test (valid optional), or HDF5 with datasets so named."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (data.path for array; expected an .npz or .h5 file)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                found = {k: z[k] for k in z.files if k in ("train", "valid", "test")}
                others = sorted(set(z.files) - set(found))
        elif suffix in (".h5", ".hdf5", ".hdf"):
            import h5py

            with h5py.File(path, "r") as f:
                found = {k: f[k][()] for k in ("train", "valid", "test")
                         if k in f and isinstance(f[k], h5py.Dataset)}
                others = sorted(set(f) - set(found))
        else:
            raise DataError(f"{path}: unknown file type {suffix!r}; expected .npz or .h5/.hdf5")
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot read ({e}); expected an .npz or HDF5 file of integer images") from e
    for split in ("train", "test"):
        if split not in found:
            raise DataError(f"{path}: missing {split!r}; expected arrays 'train' and 'test' "
                            f"(and optionally 'valid'), found {sorted(found) + others}")
    if others:
        log.info("%s: ignoring %s (only train/valid/test are read)", path, others)
    return found


# ----------------------------------------------------------------------------- checks and splits
def check_images(x: np.ndarray, where: str, num_cats: int, patch_size: int, crop: int = 0) -> np.ndarray:
    """uint8 [N, H, W, Ch] from grey [N, H, W] or colour [N, H, W, Ch] integer images, or DataError.

    crop > 0: the images must hold a crop x crop region (which patch_size divides) instead."""
    if x.dtype.kind not in "uib":
        raise DataError(f"{where}: dtype {x.dtype}, expected integer grey levels (e.g. uint8)")
    if x.ndim == 3:
        x = x[..., None]
    elif x.ndim != 4:
        raise DataError(f"{where}: shape {x.shape}, expected [N, H, W] (grey) or [N, H, W, C] (colour)")
    n, h, w, ch = x.shape
    if x.shape[1] in (1, 3, 4) and ch > 4:
        raise DataError(f"{where}: shape {x.shape} looks channels-first; expected [N, H, W, C]")
    if n == 0:
        raise DataError(f"{where}: empty split (0 images)")
    if crop:
        if crop > h or crop > w:
            raise DataError(f"{where}: image size {h}x{w} is smaller than data.crop={crop}")
    elif h % patch_size or w % patch_size:
        raise DataError(f"{where}: image size {h}x{w} is not divisible by data.patch_size={patch_size}")
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= num_cats:
        bad = int(np.count_nonzero((x < 0) | (x >= num_cats)))
        raise DataError(f"{where}: values in [{lo}, {hi}] ({bad} out of range), expected "
                        f"[0, {num_cats}) (data.num_cats={num_cats})")
    return np.ascontiguousarray(x, dtype=np.uint8)


def _chosen(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """bool [n]: k random rows marked."""
    chosen = np.zeros(n, bool)
    chosen[rng.permutation(n)[:k]] = True
    return chosen


def _take(x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split x into k random rows and the rest, both in their original order."""
    chosen = _chosen(len(x), k, rng)
    return x[chosen], x[~chosen]


def crop_images(x: np.ndarray, size: int, mode: str, per_image: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """size x size crops of uint8 [N, H, W, Ch] images: (uint8 [N * per_image, size, size, Ch],
    int32 [N * per_image, 3] origins (image index, row, column)), image-major.

    mode "topleft": the region [0, size) x [0, size) (per_image must be 1); "random": offsets
    drawn uniformly from 0..H - size and 0..W - size, per_image of them per image.
    """
    n, h, w, _ = x.shape
    if mode == "topleft":
        if per_image != 1:
            raise DataError(f"data.crops_per_image={per_image}: top-left crops are one per image")
        origins = np.zeros((n, 3), np.int32)
        origins[:, 0] = np.arange(n)
        return np.ascontiguousarray(x[:, :size, :size]), origins
    if mode != "random":
        raise DataError(f"crop mode {mode!r}: expected one of {list(CROP_MODES)}")
    index = np.repeat(np.arange(n), per_image)                    # [M]
    rows = rng.integers(0, h - size + 1, size=len(index))         # [M]
    cols = rng.integers(0, w - size + 1, size=len(index))         # [M]
    span = np.arange(size)
    out = np.empty((len(index), size, size, x.shape[3]), np.uint8)
    for s in range(0, len(index), 65536):                         # bounded index arrays
        i, r, c = index[s:s + 65536], rows[s:s + 65536], cols[s:s + 65536]
        out[s:s + len(i)] = x[i[:, None, None], (r[:, None] + span)[:, :, None], (c[:, None] + span)[:, None, :]]
    return out, np.stack([index, rows, cols], 1).astype(np.int32)


def _cap(x: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    return _take(x, cap, rng)[0] if 0 < cap < len(x) else x


def _carve(x: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, rest): round(fraction * N) rows held out, at least one, leaving at least one."""
    k = min(max(1, int(round(fraction * len(x)))), len(x) - 1)
    return _take(x, k, rng)


def prepare_images(dataset: str, path: str, *, patch_size: int, num_cats: int, valid_fraction: float,
                   test_fraction: float, max_train: int, max_test: int, seed: int, crop: int = 0,
                   crop_train: str = "random", crop_eval: str = "topleft",
                   crops_per_image: int = 1) -> tuple[dict[str, np.ndarray], dict, dict[str, np.ndarray]]:
    """Read an image source, split it and crop it.

    Returns ({split: uint8 [N, H, W, Ch]}, attrs, {split: int32 [N, 3] crop origins} (empty
    without crops)). ``path`` "" means the source's default; ``num_cats`` 0 means the source's
    default.
    """
    num_cats = num_cats or DEFAULT_NUM_CATS[dataset]
    if not 2 <= num_cats <= 256:
        raise DataError(f"data.num_cats={num_cats}: expected 2..256 (images are stored as uint8)")
    rng = np.random.default_rng(seed)
    capped: list[int] = []
    if dataset == "digits":
        if path:
            raise DataError(f"data.path={path!r}: digits is bundled with scikit-learn; leave data.path empty")
        where = source = "sklearn.datasets.load_digits"
        x = check_images(load_digits(), where, num_cats, patch_size, crop)
        test, train = _carve(x, test_fraction, rng)
        raw, wheres = {"train": train, "test": test}, {"train": where, "test": where}
    elif dataset in ("fashion_mnist", "mnist"):
        source = path or (FASHION_MNIST_DIR if dataset == "fashion_mnist" else MNIST_DIR)
        raw, wheres = read_idx_dir(source, dataset)
    elif dataset == "array":
        if not path:
            raise DataError("data.path is empty: the array source needs an .npz or .h5 file")
        source = path
        raw = read_array(path)
        wheres = {s: f"{path}: {s!r}" for s in raw}
    elif dataset in ("cifar10", "imagenet32", "imagenet64"):
        from lvd.data import photos

        if not path:
            raise DataError(f"data.path is empty: {dataset} needs the directory of its files as distributed "
                            f"(docs/data.md, 'The papers' benchmarks')")
        source = path
        # max_train is applied while reading (the same rows _cap would keep): only those are held

        def keep(n: int) -> np.ndarray | None:
            capped.append(n)
            return _chosen(n, max_train, rng) if 0 < max_train < n else None

        raw, wheres = photos.read_cifar10(path, keep) if dataset == "cifar10" else \
            photos.read_imagenet(path, dataset, keep)
    else:
        raise DataError(f"data.dataset={dataset!r}: expected one of {sorted(DEFAULT_NUM_CATS)} or wikitext2")

    x = {s: check_images(raw.pop(s), wheres[s], num_cats, patch_size, crop) for s in list(raw)}
    for s in x:
        log.info("read %s %s: %d images %s, values %d..%d", dataset, s, len(x[s]), x[s].shape[1:],
                 x[s].min(), x[s].max())
    shapes = {s: a.shape[1:] for s, a in x.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{source}: splits differ in image shape {shapes}; expected one [H, W, C]")

    if not capped:   # (the photo readers applied max_train already)
        x["train"] = _cap(x["train"], max_train, rng)
    if "valid" in x:
        x["valid"] = _cap(x["valid"], max_test, rng)
    else:
        if len(x["train"]) < 2:
            raise DataError(f"{source}: train has {len(x['train'])} image(s); need 2 or more to carve valid")
        x["valid"], x["train"] = _carve(x["train"], valid_fraction, rng)
    x["test"] = _cap(x["test"], max_test, rng)

    h, w, ch = x["train"].shape[1:]
    attrs = {"height": h, "width": w, "channels": ch, "num_cats": num_cats, "patch_size": patch_size,
             "dataset": dataset, "source": str(source), "image_height": h, "image_width": w}
    origins = {}
    if crop:
        crop_rng = np.random.default_rng([seed, 1])
        for s in ("train", "valid", "test"):
            mode, per = (crop_train, crops_per_image) if s == "train" else (crop_eval, 1)
            x[s], origins[s] = crop_images(x[s], crop, mode, per, crop_rng)
            log.info("%s: %d %s %dx%d crop(s) of %dx%d images", s, len(x[s]), mode, crop, crop, h, w)
        attrs.update(height=crop, width=crop)
    return {s: x[s] for s in ("train", "valid", "test")}, attrs, origins
