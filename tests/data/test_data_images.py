"""Image readers: idx parsing, digits, user arrays, splits, and every bad-input error."""

import gzip
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from lvd.data import DataError, data_info, load_split
from lvd.data.images import check_images, read_idx
from lvd.stages.prepare_data import Config, run

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path, x, type_byte=0x08, gz=False):
    """An idx file written by hand: 00 00 type ndim, big-endian uint32 dims, big-endian data."""
    dtype = {0x08: ">u1", 0x0C: ">i4"}[type_byte]
    raw = bytes([0, 0, type_byte, x.ndim]) + struct.pack(f">{x.ndim}I", *x.shape)
    raw += np.asarray(x).astype(dtype).tobytes()
    Path(path).write_bytes(gzip.compress(raw) if gz else raw)
    return path


def rows(a):
    """Images as a sorted list of byte strings (a multiset, order-free)."""
    return sorted(r.tobytes() for r in a.reshape(len(a), -1))


# ----------------------------------------------------------------------------- idx
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_uint8(tmp_path, gz):
    x = np.random.default_rng(0).integers(0, 256, (5, 4, 6), dtype=np.uint8)
    p = write_idx(tmp_path / "a", x, gz=gz)
    y = read_idx(p)
    assert y.dtype == np.uint8 and y.shape == (5, 4, 6)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(read_idx(p, max_items=2), x[:2])


def test_read_idx_big_endian_int32(tmp_path):
    x = np.array([[1, 256], [65536, -7]])
    y = read_idx(write_idx(tmp_path / "b", x, type_byte=0x0C))
    assert y.dtype == np.int32 and y.dtype.byteorder in "=<|"
    np.testing.assert_array_equal(y, x)


def test_read_idx_bad_magic(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x08\x03\x00\x00" + bytes(16))
    with pytest.raises(DataError, match=r"bad.*magic") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_truncated_and_trailing(tmp_path):
    p = write_idx(tmp_path / "t", np.zeros((3, 2, 2), np.uint8))
    raw = p.read_bytes()
    p.write_bytes(raw[:-1])
    with pytest.raises(DataError, match="truncated") as e:
        read_idx(p)
    assert str(p) in str(e.value)
    p.write_bytes(raw + b"\x00")
    with pytest.raises(DataError, match="beyond"):
        read_idx(p)


def test_read_idx_corrupt_gzip_and_missing(tmp_path):
    p = tmp_path / "c.gz"
    p.write_bytes(b"\x1f\x8b" + b"not really gzip")
    with pytest.raises(DataError, match="cannot read") as e:
        read_idx(p)
    assert str(p) in str(e.value)
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "nope")


def test_mnist_directory_end_to_end(tmp_path):
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (20, 8, 12), dtype=np.uint8)
    test = rng.integers(0, 256, (7, 8, 12), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train, gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test)  # uncompressed is accepted too
    out = tmp_path / "data.h5"
    summary = run(Config(dataset="mnist", path=str(tmp_path), max_train=10, max_test=5, seed=3), out)
    assert summary["sizes"] == {"train": 9, "valid": 1, "test": 5}
    tr, va, te = (load_split(out, s) for s in ("train", "valid", "test"))
    assert tr.shape == (9, 8, 12, 1) and tr.dtype == np.uint8
    # train + valid are 10 distinct images of the original train; test is 5 of the original test
    all_train = set(rows(train))
    assert set(rows(tr)) <= all_train and set(rows(va)) <= all_train
    assert len(set(rows(tr)) | set(rows(va))) == 10
    assert set(rows(te)) <= set(rows(test))
    info = data_info(out)
    assert (info["kind"], info["num_cats"], info["height"], info["width"], info["channels"]) == \
        ("image", 256, 8, 12, 1)


def test_mnist_directory_missing_file(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((4, 4, 4), np.uint8), gz=True)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte") as e:
        run(Config(dataset="mnist", path=str(tmp_path)), tmp_path / "d.h5")
    assert str(tmp_path) in str(e.value)
    assert not (tmp_path / "d.h5").exists()
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        run(Config(dataset="fashion_mnist", path=str(tmp_path / "absent")), tmp_path / "d.h5")


def test_idx_labels_file_is_not_images(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros(10, np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"expected 3 dimensions") as e:
        run(Config(dataset="mnist", path=str(tmp_path)), tmp_path / "d.h5")
    assert "train-images-idx3-ubyte" in str(e.value)


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path):
    labels = read_idx(FASHION / "train-labels-idx1-ubyte.gz", max_items=10)
    np.testing.assert_array_equal(labels, [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])  # published first labels
    x = read_idx(FASHION / "t10k-images-idx3-ubyte.gz", max_items=3)
    assert x.shape == (3, 28, 28) and x.dtype == np.uint8
    summary = run(Config(dataset="fashion_mnist", max_train=200, max_test=30), tmp_path / "d.h5")
    assert summary["sizes"] == {"train": 180, "valid": 20, "test": 30}
    assert summary["shape"] == [28, 28, 1] and summary["num_cats"] == 256


# ----------------------------------------------------------------------------- digits
def test_digits_splits_partition_all_images(tmp_path):
    from sklearn.datasets import load_digits

    ref = load_digits().images.astype(np.uint8)[..., None]
    out = tmp_path / "d.h5"
    s = run(Config(dataset="digits", seed=5), out)
    # 1797 -> test round(0.2 * 1797) = 359; 1438 -> valid round(143.8) = 144; train 1294
    assert s["sizes"] == {"train": 1294, "valid": 144, "test": 359}
    parts = [load_split(out, k) for k in ("train", "valid", "test")]
    assert rows(np.concatenate(parts)) == rows(ref)
    assert data_info(out)["num_cats"] == 17 and parts[0].max() == 16
    # same seed, same split; another seed, another split
    run(Config(dataset="digits", seed=5), tmp_path / "again.h5")
    np.testing.assert_array_equal(load_split(tmp_path / "again.h5", "test"), parts[2])
    run(Config(dataset="digits", seed=6), tmp_path / "other.h5")
    assert not np.array_equal(load_split(tmp_path / "other.h5", "test"), parts[2])


def test_digits_max_train_and_path_rejected(tmp_path):
    s = run(Config(dataset="digits", max_train=50, max_test=20, patch_size=2), tmp_path / "d.h5")
    assert s["sizes"] == {"train": 45, "valid": 5, "test": 20}
    with pytest.raises(DataError, match="data.path"):
        run(Config(dataset="digits", path="x"), tmp_path / "e.h5")
    with pytest.raises(DataError, match="not divisible by data.patch_size=3"):
        run(Config(dataset="digits", patch_size=3), tmp_path / "e.h5")


# ----------------------------------------------------------------------------- user arrays
def test_array_npz_grey(tmp_path):
    rng = np.random.default_rng(2)
    train = rng.integers(0, 4, (30, 4, 8)).astype(np.int64)
    test = rng.integers(0, 4, (6, 4, 8)).astype(np.int16)
    np.savez(tmp_path / "a.npz", train=train, test=test, labels=np.arange(30))
    s = run(Config(dataset="array", path=str(tmp_path / "a.npz"), num_cats=4, valid_fraction=0.2),
            tmp_path / "d.h5")
    assert s["sizes"] == {"train": 24, "valid": 6, "test": 6} and s["num_cats"] == 4
    np.testing.assert_array_equal(load_split(tmp_path / "d.h5", "test"), test[..., None])


def test_array_h5_colour_with_valid(tmp_path):
    rng = np.random.default_rng(3)
    data = {k: rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for k, n in
            (("train", 12), ("valid", 5), ("test", 4))}
    with h5py.File(tmp_path / "a.h5", "w") as f:
        for k, v in data.items():
            f[k] = v
    out = tmp_path / "d.h5"
    s = run(Config(dataset="array", path=str(tmp_path / "a.h5"), max_test=3), out)
    assert s["sizes"] == {"train": 12, "valid": 3, "test": 3} and s["shape"] == [8, 8, 3]
    np.testing.assert_array_equal(load_split(out, "train"), data["train"])  # nothing carved
    assert set(rows(load_split(out, "valid"))) <= set(rows(data["valid"]))


def _npz(tmp_path, **arrays):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    return str(p)


GOOD = np.zeros((4, 4, 4), np.uint8)


@pytest.mark.parametrize("arrays, message", [
    ({"train": GOOD.astype(np.float32), "test": GOOD}, r"'train': dtype float32, expected integer"),
    ({"train": GOOD, "test": GOOD + 7}, r"'test': values in \[7, 7\].*expected \[0, 5\) \(data.num_cats=5\)"),
    ({"train": GOOD.astype(np.int8) - 1, "test": GOOD}, r"'train': values in \[-1, -1\]"),
    ({"train": np.zeros((4, 4, 5), np.uint8), "test": GOOD}, r"'train': image size 4x5 is not divisible"),
    ({"train": GOOD, "test": GOOD[:0]}, r"'test': empty split"),
    ({"train": GOOD}, r"missing 'test'"),
    ({"train": np.zeros((4, 3, 8, 8), np.uint8), "test": GOOD}, r"channels-first"),
    ({"train": np.zeros((4, 4), np.uint8), "test": GOOD}, r"expected \[N, H, W\] \(grey\)"),
    ({"train": GOOD, "test": np.zeros((2, 8, 8), np.uint8)}, r"splits differ in image shape"),
])
def test_array_bad_inputs(tmp_path, arrays, message):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=message) as e:
        run(Config(dataset="array", path=path, num_cats=5, patch_size=2), tmp_path / "d.h5")
    assert path in str(e.value)
    assert not (tmp_path / "d.h5").exists()


def test_array_bad_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        run(Config(dataset="array", path=str(tmp_path / "none.npz")), tmp_path / "d.h5")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"x.csv: unknown file type '.csv'"):
        run(Config(dataset="array", path=str(tmp_path / "x.csv")), tmp_path / "d.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="junk.h5: cannot read"):
        run(Config(dataset="array", path=str(tmp_path / "junk.h5")), tmp_path / "d.h5")
    with pytest.raises(DataError, match="data.path is empty"):
        run(Config(dataset="array"), tmp_path / "d.h5")


def test_check_images_bool_and_shapes():
    x = check_images(np.ones((2, 2, 2), bool), "w", num_cats=2, patch_size=1)
    assert x.dtype == np.uint8 and x.shape == (2, 2, 2, 1) and x.sum() == 8
