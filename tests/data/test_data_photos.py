"""CIFAR-10 and downsampled-ImageNet readers on tiny files in the exact formats; crops; YCoCg-R."""

import json

import h5py
import numpy as np
import pytest

from lvd.data import DataError, color, data_info, load_split, photos, protocol
from lvd.data.images import crop_images
from lvd.stages.prepare_data import Config, check_config, run


def rgb(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- CIFAR-10
def test_cifar10_record_layout_by_hand(tmp_path):
    """One record written byte by byte: label, 1,024 red, 1,024 green, 1,024 blue, row-major."""
    img = rgb(1, 32)[0]
    record = bytes([7]) + img[..., 0].tobytes() + img[..., 1].tobytes() + img[..., 2].tobytes()
    (tmp_path / "one.bin").write_bytes(record * 2)
    x = photos.read_cifar10_file(tmp_path / "one.bin")
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.uint8
    assert (x[0] == img).all() and (x[1] == img).all()


def test_cifar10_directory(tmp_path):
    train, test = rgb(10, 32, 1), rgb(3, 32, 2)
    photos.write_cifar10(tmp_path / "cifar-10-batches-bin", train, test)
    arrays, files = photos.read_cifar10(tmp_path)    # found one folder down, as the archive unpacks
    assert (arrays["train"] == train).all() and (arrays["test"] == test).all()
    assert "data_batch_1.bin" in files["train"] and files["test"].endswith("test_batch.bin")


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "data_batch_3.bin").write_bytes((d / "data_batch_3.bin").read_bytes()[:-5]),
     r"data_batch_3.bin: truncated record: 6141 bytes is 1 whole record\(s\) of 3073 bytes .* and 3068 bytes over"),
    (lambda d: (d / "data_batch_2.bin").unlink(), r"missing \['data_batch_2.bin'\]"),
    (lambda d: (d / "test_batch.bin").write_bytes(b""), r"test_batch.bin: empty file"),
    (lambda d: (d / "test_batch.bin").write_bytes(bytes([12]) + bytes(3072)),
     r"test_batch.bin: record 0 has label byte 12, expected 0..9"),
    (lambda d: (d / "test_batch.bin").unlink(), r"no test_batch.bin"),
])
def test_cifar10_bad_files(tmp_path, damage, message):
    photos.write_cifar10(tmp_path, rgb(10, 32), rgb(2, 32))
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        photos.read_cifar10(tmp_path)


def test_cifar10_pickled_version_refused(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="pickled Python version, which is not read"):
        photos.read_cifar10(tmp_path)


# ----------------------------------------------------------------------------- ImageNet
def test_imagenet_npz_planes_by_hand(tmp_path):
    img = rgb(1, 32)[0]
    row = np.concatenate([img[..., c].ravel() for c in range(3)])[None]   # R plane, G plane, B plane
    np.savez(tmp_path / "b.npz", data=row, labels=np.array([5]))
    assert (photos.read_imagenet_npz(tmp_path / "b.npz", 32)[0] == img).all()


@pytest.mark.parametrize("dataset, size", [("imagenet32", 32), ("imagenet64", 64)])
def test_imagenet_npz_directory(tmp_path, dataset, size):
    train, test = rgb(23, size, 1), rgb(4, size, 2)
    photos.write_imagenet_npz(tmp_path / "Imagenet_train", train, test[:0], batches=10)
    (tmp_path / "Imagenet_train" / "val_data.npz").unlink()
    photos.write_imagenet_npz(tmp_path / "Imagenet_val", train[:0], test, batches=1)
    (tmp_path / "Imagenet_val" / "train_data_batch_1.npz").unlink()
    arrays, files = photos.read_imagenet(tmp_path, dataset)   # the two archives' folders, one level down
    assert (arrays["train"] == train).all() and (arrays["test"] == test).all()
    assert "train_data_batch_{1..10}.npz" in files["train"] and files["test"].endswith("val_data.npz")


@pytest.mark.parametrize("member, message", [
    (dict(data=np.zeros((3, 3072), np.int64), labels=np.ones(3)), r"batch_1.npz: member 'data' has dtype int64, expected uint8"),
    (dict(data=np.zeros((3, 3000), np.uint8), labels=np.ones(3)), r"member 'data' has shape \(3, 3000\), expected \[N > 0, 3072\]"),
    (dict(data=np.zeros((3, 12288), np.uint8), labels=np.ones(3)), r"rows of 64x64 images: the wrong data.dataset"),
    (dict(data=np.zeros((3, 3072), np.uint8)), r"missing member 'labels'"),
    (dict(images=np.zeros((3, 3072), np.uint8), labels=np.ones(3)), r"missing member 'data'"),
    (dict(data=np.zeros((3, 3072), np.uint8), labels=np.ones(2)), r"member 'labels' has shape \(2,\), expected \[3\]"),
    (dict(data=np.zeros(3, dtype=object), labels=np.ones(3)), r"cannot read as npz without pickle"),
])
def test_imagenet_npz_bad_members(tmp_path, member, message):
    photos.write_imagenet_npz(tmp_path, rgb(4, 32), rgb(2, 32), batches=2)
    np.savez(tmp_path / "train_data_batch_1.npz", **member)
    with pytest.raises(DataError, match=message):
        photos.read_imagenet(tmp_path, "imagenet32")


def test_imagenet_npz_bad_sets(tmp_path):
    photos.write_imagenet_npz(tmp_path, rgb(4, 32), rgb(2, 32), batches=3)
    (tmp_path / "train_data_batch_2.npz").unlink()
    with pytest.raises(DataError, match=r"missing \['train_data_batch_2.npz'\]"):
        photos.read_imagenet(tmp_path, "imagenet32")
    (tmp_path / "train_data_batch_1.npz").write_bytes(b"PK\x03\x04 not really")
    (tmp_path / "train_data_batch_3.npz").unlink()
    with pytest.raises(DataError, match=r"train_data_batch_1.npz: cannot read as npz"):
        photos.read_imagenet(tmp_path, "imagenet32")
    with open(tmp_path / "train_data_batch_1.npz", "wb") as f:
        np.save(f, np.zeros((2, 3072), np.uint8))
    with pytest.raises(DataError, match=r"batch_1.npz: one npy array of shape \(2, 3072\), expected an npz archive"):
        photos.read_imagenet(tmp_path, "imagenet32")
    (tmp_path / "val_data.npz").unlink()
    with pytest.raises(DataError, match=r"exactly one val_data.npz"):
        photos.read_imagenet(tmp_path, "imagenet32")


def test_imagenet_png_directory(tmp_path):
    train, test = rgb(5, 32, 3), rgb(2, 32, 4)
    photos.write_imagenet_png(tmp_path, train, test)
    arrays, files = photos.read_imagenet(tmp_path, "imagenet32")
    assert (arrays["train"] == train).all() and (arrays["test"] == test).all()
    assert "(5 files)" in files["train"]
    with pytest.raises(DataError, match=r"00000000.png: PNG of 32x32 pixels, expected 64x64"):
        photos.read_imagenet(tmp_path, "imagenet64")


def test_imagenet_png_bad_files(tmp_path):
    from PIL import Image

    photos.write_imagenet_png(tmp_path, rgb(3, 32), rgb(2, 32))
    Image.fromarray(rgb(1, 32)[0]).convert("RGBA").save(tmp_path / "train" / "00000001.png")
    with pytest.raises(DataError, match=r"00000001.png: PNG mode 'RGBA', expected 'RGB'"):
        photos.read_imagenet(tmp_path, "imagenet32")
    good = (tmp_path / "valid" / "00000000.png").read_bytes()
    Image.fromarray(rgb(1, 32)[0]).save(tmp_path / "train" / "00000001.png")
    (tmp_path / "train" / "00000002.png").write_bytes(good[:len(good) // 2])
    with pytest.raises(DataError, match=r"00000002.png: cannot decode as PNG"):
        photos.read_imagenet(tmp_path, "imagenet32")
    (tmp_path / "train" / "00000002.png").unlink()
    for p in (tmp_path / "valid").iterdir():
        p.unlink()
    (tmp_path / "valid").rmdir()
    with pytest.raises(DataError, match=r"no npz batches and no valid/valid_32x32/val folder"):
        photos.read_imagenet(tmp_path, "imagenet32")


# ----------------------------------------------------------------------------- crops
def test_crops_are_what_they_claim():
    x = rgb(6, 12, 5)
    top, o = crop_images(x, 4, "topleft", 1, np.random.default_rng(0))
    assert (top == x[:, :4, :4]).all() and (o == np.c_[np.arange(6), np.zeros((6, 2), int)]).all()
    crops, o = crop_images(x, 4, "random", 3, np.random.default_rng(0))
    assert crops.shape == (18, 4, 4, 3) and (o[:, 0] == np.repeat(np.arange(6), 3)).all()
    for c, (i, r, col) in zip(crops, o):
        assert (c == x[i, r:r + 4, col:col + 4]).all()
    assert o[:, 1:].min() >= 0 and o[:, 1:].max() <= 8 and len({(r, c) for _, r, c in o}) > 5
    with pytest.raises(DataError, match="top-left crops are one per image"):
        crop_images(x, 4, "topleft", 2, np.random.default_rng(0))


def test_random_crops_cover_every_offset():
    _, o = crop_images(rgb(1, 5), 4, "random", 400, np.random.default_rng(1))
    assert set(map(tuple, o[:, 1:])) == {(0, 0), (0, 1), (1, 0), (1, 1)}


# ----------------------------------------------------------------------------- YCoCg-R
def test_ycocg_r_is_a_bijection_of_all_colours():
    v = np.arange(2**24, dtype=np.uint32)
    x = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], -1).astype(np.uint8)   # every RGB triple
    y = color.rgb_to_ycocg_r(x)
    assert y.dtype == np.uint8 and (color.ycocg_r_to_rgb(y) == x).all()
    codes = (y[:, 0].astype(np.int64) << 16) | (y[:, 1].astype(np.int64) << 8) | y[:, 2]
    assert (np.bincount(codes, minlength=2**24) == 1).all(), "every code reached exactly once"


def test_ycocg_r_matches_exact_lifting_where_nothing_wraps():
    r, g, b = (np.arange(0, 256, 5)[:, None, None], np.arange(0, 256, 7)[None, :, None],
               np.arange(0, 256, 3)[None, None, :])
    x = np.stack(np.broadcast_arrays(r, g, b), -1).reshape(-1, 3).astype(np.uint8)
    R, G, B = (x[:, i].astype(int) for i in range(3))
    co = R - B
    t = B + (co >> 1)
    cg = G - t
    y = t + (cg >> 1)
    ok = (abs(co) <= 127) & (abs(cg) <= 127)
    got = color.rgb_to_ycocg_r(x).astype(int)
    assert ok.mean() > 0.5
    assert (got[ok] == np.c_[y, co + 128, cg + 128][ok]).all()
    assert color.rgb_to_ycocg_r(np.array([[10, 20, 30]], np.uint8)).tolist() == [[20, 108, 128]]


# ----------------------------------------------------------------------------- prepare_data
def test_prepare_cifar10_with_crops_and_ycocg_r(tmp_path):
    train, test = rgb(20, 32, 7), rgb(5, 32, 8)
    photos.write_cifar10(tmp_path / "c", train, test)
    out = tmp_path / "data.h5"
    cfg = Config(dataset="cifar10", path=str(tmp_path / "c"), crop=16, crops_per_image=2, color="ycocg_r",
                 valid_fraction=0.2, seed=3)
    summary = run(cfg, out)
    info = data_info(out)
    assert summary["sizes"] == {"train": 32, "valid": 4, "test": 5}
    assert (info["height"], info["width"], info["image_height"], info["crop"]) == (16, 16, 32, 16)
    assert info["color"] == "ycocg_r" and info["lossless"] is True and info["crop_eval"] == "topleft"
    assert info["protocol"] == ("cifar10, train: 2 random 16x16 crop(s) per image; valid and test: the "
                                "top-left 16x16 crop of the 32x32 images, lossless YCoCg-R (chroma modulo 256)")
    xt = color.ycocg_r_to_rgb(load_split(out, "test"))
    assert (xt == test[:, :16, :16]).all(), "test: the top-left crops, back in RGB exactly"
    with h5py.File(out, "r") as f:
        o = f["crop_origins/train"][()]
    xtr = color.ycocg_r_to_rgb(load_split(out, "train"))
    assert json.loads(info["config"])["crops_per_image"] == 2
    pool = {img.tobytes() for img in train}
    # every train crop is a window of a training image, valid images are not among them
    src = {i for i, _, _ in o}
    assert len(src) == 16 and all(xtr[j].shape == (16, 16, 3) for j in range(len(o)))
    assert sum(any(img[r:r + 16, c:c + 16].tobytes() == xtr[j].tobytes() for img in train)
               for j, (_, r, c) in enumerate(o)) == len(o)
    assert len(pool) == 20


def test_prepare_splits_do_not_depend_on_crops(tmp_path):
    photos.write_imagenet_npz(tmp_path / "in", rgb(30, 32, 9), rgb(6, 32, 10), batches=3)
    whole, cropped = tmp_path / "a.h5", tmp_path / "b.h5"
    base = dict(dataset="imagenet32", path=str(tmp_path / "in"), max_train=20, max_test=4, seed=1)
    run(Config(**base), whole)
    run(Config(**base, crop=8, crop_eval="random"), cropped)
    with h5py.File(cropped, "r") as f:
        o = {s: f[f"crop_origins/{s}"][()] for s in ("train", "valid", "test")}
    for s in ("train", "valid", "test"):
        a, b = load_split(whole, s), load_split(cropped, s)
        assert len(a) == len(b)
        assert all((b[j] == a[i, r:r + 8, c:c + 8]).all() for j, (i, r, c) in enumerate(o[s]))
    assert data_info(cropped)["protocol"].endswith("one seeded random 8x8 crop of the 32x32 images, RGB")
    p = protocol(cropped)
    assert p == {"dataset": "imagenet32", "color": "rgb", "lossless": True, "crop": 8, "crop_train": "random",
                 "crop_eval": "random", "crops_per_image": 1, "protocol": data_info(cropped)["protocol"]}
    json.dumps(p)   # plain values, ready for metrics.json
    assert protocol(whole)["protocol"] == "imagenet32, whole 32x32 images, RGB"


@pytest.mark.parametrize("fields, message", [
    (dict(dataset="cifar10", crop=6), r"data.crop=6: expected a multiple of data.patch_size=4"),
    (dict(dataset="cifar10", crops_per_image=2), r"data.crops_per_image=2: expected 1 unless data.crop > 0"),
    (dict(dataset="cifar10", crop=8, crop_train="topleft", crops_per_image=2), r"data.crops_per_image=2"),
    (dict(dataset="cifar10", crop_eval="center"), r"data.crop_eval='center': expected one of"),
    (dict(dataset="digits", color="ycocg_r"), r"data.color='ycocg_r': expected 'rgb' unless"),
    (dict(dataset="wikitext2", crop=4), r"data.crop=4: expected 0 for text"),
])
def test_protocol_config_errors(fields, message):
    with pytest.raises(DataError, match=message):
        check_config(Config(**fields))


def test_prepare_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"data.path is empty: imagenet64 needs the directory"):
        run(Config(dataset="imagenet64", patch_size=8), tmp_path / "d.h5")
    with pytest.raises(DataError, match=r"nowhere: directory not found \(data.path for cifar10"):
        run(Config(dataset="cifar10", path=str(tmp_path / "nowhere")), tmp_path / "d.h5")
    photos.write_cifar10(tmp_path / "c", rgb(10, 32), rgb(2, 32))
    with pytest.raises(DataError, match=r"image size 32x32 is smaller than data.crop=64"):
        run(Config(dataset="cifar10", path=str(tmp_path / "c"), crop=64), tmp_path / "d.h5")
    assert not (tmp_path / "d.h5").exists()


def test_protocol_of_a_file_written_before_the_protocol_attributes(tmp_path):
    out = tmp_path / "d.h5"
    run(Config(dataset="digits", max_train=50, max_test=10), out)
    with h5py.File(out, "r+") as f:
        for key in ("color", "lossless", "crop", "crop_train", "crop_eval", "crops_per_image", "protocol"):
            del f.attrs[key]
    assert protocol(out) == {"dataset": "digits", "color": "rgb", "lossless": True, "crop": 0,
                             "crop_train": "random", "crop_eval": "topleft", "crops_per_image": 1,
                             "protocol": "digits, whole 8x8 images, RGB"}


@pytest.mark.parametrize("layout", ["npz", "png", "cifar10"])
def test_max_train_applied_while_reading_keeps_the_same_rows(tmp_path, layout):
    """The photo readers keep max_train's rows as they read (so that ImageNet's other images are
    never held); the splits are those of the same images given as an array file."""
    side = 32
    train, test = rgb(30, side, 11), rgb(6, side, 12)
    write = {"npz": lambda d: photos.write_imagenet_npz(d, train, test, batches=4),
             "png": lambda d: photos.write_imagenet_png(d, train, test),
             "cifar10": lambda d: photos.write_cifar10(d, train, test)}[layout]
    write(tmp_path / "src")
    np.savez(tmp_path / "same.npz", train=train, test=test)
    dataset = "cifar10" if layout == "cifar10" else "imagenet32"
    for max_train in (12, 0):
        a, b = tmp_path / f"a{max_train}.h5", tmp_path / f"b{max_train}.h5"
        run(Config(dataset=dataset, path=str(tmp_path / "src"), max_train=max_train, max_test=4, seed=5), a)
        run(Config(dataset="array", path=str(tmp_path / "same.npz"), max_train=max_train, max_test=4, seed=5), b)
        for s in ("train", "valid", "test"):
            assert (load_split(a, s) == load_split(b, s)).all(), (max_train, s)


def test_npz_rows_from_the_header(tmp_path):
    photos.write_imagenet_npz(tmp_path, rgb(7, 32), rgb(2, 32), batches=2)
    assert [photos.npz_rows(tmp_path / f"train_data_batch_{i}.npz") for i in (1, 2)] == [4, 3]
    np.savez_compressed(tmp_path / "c.npz", data=np.zeros((5, 3072), np.uint8), labels=np.ones(5))
    assert photos.npz_rows(tmp_path / "c.npz") == 5
    (tmp_path / "bad.npz").write_bytes(b"nonsense")
    assert photos.npz_rows(tmp_path / "bad.npz") is None
