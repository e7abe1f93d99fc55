"""The prepare_data stage: CLI, config checks, artifact stamp, atomic writes."""

import json

import numpy as np
import pytest

from lvd import io
from lvd.data import DataError, data_info, load_split
from lvd.data import text as text_data
from lvd.stages import prepare_data
from lvd.stages.prepare_data import Config, check_config, run


def test_cli_digits(tmp_path):
    out, log = tmp_path / "r" / "data.h5", tmp_path / "logs" / "prepare.log"
    cfg = {"dataset": "digits", "max_train": 100, "max_test": 40, "seed": 2}
    prepare_data.main(["--config", json.dumps(cfg), "--out", str(out), "--log", str(log), "--device", "cpu"])
    info = data_info(out)
    assert info["kind"] == "image" and info["dataset"] == "digits" and info["patch_size"] == 4
    assert json.loads(info["config"])["max_train"] == 100 and info["writer"].endswith("prepare_data")
    assert info["seconds"] > 0
    assert [len(load_split(out, s)) for s in ("train", "valid", "test")] == [90, 10, 40]
    text = log.read_text()
    assert "train: 90 images" in text and "values 0..16" in text and "wrote" in text


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown key\(s\) \['datset'\]"):
        prepare_data.main(["--config", '{"datset": "digits"}', "--out", str(tmp_path / "d.h5")])
    with pytest.raises(SystemExit, match=r"prepare_data: .*nowhere: directory not found"):
        prepare_data.main(["--config", json.dumps({"dataset": "wikitext2", "path": str(tmp_path / "nowhere")}),
                           "--out", str(tmp_path / "d.h5"), "--device", "cpu"])
    assert not (tmp_path / "d.h5").exists()


@pytest.mark.parametrize("field, value, message", [
    ("dataset", "cifar", r"data.dataset='cifar': expected one of"),
    ("valid_fraction", 0.0, r"data.valid_fraction=0.0: expected a number strictly between 0 and 1"),
    ("test_fraction", 1.0, r"data.test_fraction=1.0"),
    ("patch_size", 0, r"data.patch_size=0: expected an integer >= 1"),
    ("max_train", -1, r"data.max_train=-1"),
    ("seq_len", 2.5, r"data.seq_len=2.5: expected an integer"),
    ("stride", 0, r"data.stride=0"),
    ("num_cats", 300, r"data.num_cats=300: expected 2..256"),
])
def test_config_errors(tmp_path, field, value, message):
    cfg = Config(**{field: value})
    with pytest.raises(DataError, match=message):
        run(cfg, tmp_path / "d.h5")
    assert not (tmp_path / "d.h5").exists()


def test_default_config_is_valid():
    check_config(Config())


def test_failure_mid_write_leaves_no_file(tmp_path, monkeypatch):
    d = tmp_path / "wt"
    d.mkdir()
    for split in ("train", "valid", "test"):
        (d / f"{split}.txt").write_text(" a b c d e f \n" * 5)
    out = tmp_path / "data.h5"
    calls = []

    def failing(f, name, *args, **kwargs):
        calls.append(name)
        if name == "valid":  # train already written into the temporary file
            raise RuntimeError("disk full")
        return real(f, name, *args, **kwargs)

    real = text_data.write_windows
    monkeypatch.setattr(text_data, "write_windows", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        run(Config(dataset="wikitext2", path=str(d), seq_len=4), out)
    assert calls == ["train", "valid"]
    assert list(tmp_path.iterdir()) == [d]  # neither data.h5 nor a temporary file

    # an existing artifact survives a failed rewrite untouched
    monkeypatch.setattr(text_data, "write_windows", real)
    run(Config(dataset="wikitext2", path=str(d), seq_len=4), out)
    before = out.read_bytes()
    monkeypatch.setattr(text_data, "write_windows", failing)
    with pytest.raises(RuntimeError):
        run(Config(dataset="wikitext2", path=str(d), seq_len=2), out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5", "wt"]
    with io.open_artifact(out, "lvd.data") as f:
        assert f.attrs["seq_len"] == 4
        np.testing.assert_array_equal(f["train"][0], [0, 1, 2, 3])


def test_ycbcr_converts_colour_arrays_and_records_it(tmp_path):
    """data.color: ycbcr on an RGB array: BT.709 by hand for a few pixels, attr color, lossy."""
    from lvd.data import color

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(20, 4, 4, 3), dtype=np.uint8)
    imgs[0, 0, 0] = [255, 0, 0]
    imgs[0, 0, 1] = [0, 0, 255]
    src = tmp_path / "rgb.npz"
    np.savez(src, train=imgs[:16], test=imgs[16:])
    out = tmp_path / "data.h5"
    run(Config(dataset="array", path=str(src), patch_size=2, num_cats=256, color="ycbcr", max_test=4), out)
    with io.open_artifact(out, "lvd.data") as f:
        assert f.attrs["color"] == "ycbcr"
        got = np.concatenate([f["train"][()], f["valid"][()]])
    # red: Y = 0.2126*255 = 54.2 -> 54, Cb = (0 - 54.213)/1.8556 + 128 = 98.8 -> 99, Cr = (255 - 54.213)/1.5748 + 128 = 255.5 -> 255
    # blue: Y = 18.4 -> 18, Cb = (255 - 18.411)/1.8556 + 128 = 255.5 -> 255, Cr = (0 - 18.411)/1.5748 + 128 = 116.3 -> 116
    assert color.rgb_to_ycbcr(np.array([[255, 0, 0], [0, 0, 255]], np.uint8)).tolist() == [[54, 99, 255], [18, 255, 116]]
    assert sorted(map(tuple, got.reshape(-1, 3))) == sorted(map(tuple, color.rgb_to_ycbcr(imgs[:16]).reshape(-1, 3)))
    back = color.ycbcr_to_rgb(color.rgb_to_ycbcr(imgs))
    assert np.abs(back.astype(int) - imgs).max() <= 3      # close, not exact: the transform is lossy
    with pytest.raises(DataError, match="data.color"):
        check_config(Config(dataset="digits", color="ycbcr"))
    with pytest.raises(DataError, match="data.color"):
        check_config(Config(dataset="array", color="lab"))
    grey = tmp_path / "grey.npz"
    np.savez(grey, train=imgs[:16, :, :, :1], test=imgs[16:, :, :, :1])
    with pytest.raises(DataError, match="3 channels"):
        run(Config(dataset="array", path=str(grey), patch_size=2, num_cats=256, color="ycbcr"), tmp_path / "g.h5")


def test_figures_show_ycbcr_images_in_rgb(tmp_path):
    """plots.to_rgb(color="ycbcr") converts back to RGB for viewing (pure red stays red, up to
    the 8-bit rounding); without it the YCbCr triple would be drawn as if it were RGB."""
    from lvd.data import color
    from lvd import plots
    red = color.rgb_to_ycbcr(np.array([[[[255, 0, 0]]]], np.uint8))
    shown = plots.to_rgb(red, 256, color="ycbcr")[0, 0, 0]
    np.testing.assert_allclose(shown, [1.0, 0.0, 0.0], atol=2 / 255)
    assert not np.allclose(plots.to_rgb(red, 256)[0, 0, 0], [1.0, 0.0, 0.0], atol=0.1)
    plots.samples_figure(tmp_path / "s.png", [("x", np.repeat(red, 4, 0))], 256, color="ycbcr")
    assert (tmp_path / "s.png").stat().st_size > 0


def test_growing_figure_draws_clusters_and_their_mean(tmp_path):
    from lvd import plots
    curves = np.array([[-10.0, -9.0, -8.5], [-12.0, np.nan, -11.0]])
    plots.growing_figure(tmp_path / "g.png", [("LVD", curves, np.array([10, 30]))])
    assert (tmp_path / "g.png").stat().st_size > 0
    from lvd.stages.evaluate import growing_means
    got = growing_means({"growing_curves": curves.tolist(), "group_sizes": [10, 30]})
    np.testing.assert_allclose(got, [(-100 - 360) / 40, -9.0, (-85 - 330) / 40])
