"""train_teacher and extract_embeddings on tiny data.h5 files."""

import contextlib
import json

import h5py
import numpy as np
import pytest
import torch

from lvd import fingerprints, io, teachers
from lvd.stages import extract_embeddings as E
from lvd.stages import train_teacher as T

from teacher_fixtures import write_image_data, write_text_data

TINY = dict(dim=16, latent_dim=8, codebook_size=16, heads=2, batch_size=32, num_mix=2)


def _train(tmp_path, data, name="t", **kw):
    cfg = T.Config(**{**TINY, **kw})
    out, metrics = tmp_path / f"{name}.pt", tmp_path / f"{name}.json"
    m = T.run(cfg, data, out, metrics, tmp_path / f"{name}_ckpt")
    return m, out, metrics


@pytest.mark.parametrize("kind", ["vqvae", "mae"])
def test_image_training_lowers_the_loss(tmp_path, image_data, kind):
    m, out, metrics_path = _train(tmp_path, image_data, kind=kind, epochs=3, lr=5e-3)
    losses = [row["train_loss"] for row in m["history"]]
    assert losses[-1] < losses[0]
    saved = json.loads(metrics_path.read_text())
    assert saved["epochs_done"] == 3 and len(saved["history"]) == 3 and saved["seconds"] > 0
    if kind == "vqvae":
        assert saved["teacher_test_bpd"] == saved["test"]["bpd_fitted_prior"] > saved["test"]["recon_bpd"]
        assert saved["history"][-1]["valid_recon_bpd"] < saved["history"][0]["valid_recon_bpd"]
    else:
        assert saved["teacher_test_bpd"] is None and saved["test"]["masked_bpd"] > 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["kind"] == kind and ckpt["epoch"] == 3 and ckpt["data_info"]["kind"] == "image"


def test_text_training_lowers_the_loss_and_reports_perplexity(tmp_path, text_data):
    m, _, _ = _train(tmp_path, text_data, epochs=3, lr=1e-2)  # kind auto -> lm
    assert m["kind"] == "lm"
    assert m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]
    assert m["history"][-1]["valid_perplexity"] < m["history"][0]["valid_perplexity"]
    assert 1 < m["teacher_test_perplexity"] < 20  # vocab 20: better than uniform after training


class Killed(Exception):
    pass


@contextlib.contextmanager
def _killed_after_saves(monkeypatch, n):
    """The job dies (Killed) right after its n-th checkpoint is written, as a SIGKILL would leave it."""
    save, saves = io.save_checkpoint, []

    def save_then_die(path, state):
        save(path, state)
        saves.append(path)
        if len(saves) == n:
            raise Killed
    monkeypatch.setattr(io, "save_checkpoint", save_then_die)
    try:
        yield
    finally:
        monkeypatch.setattr(io, "save_checkpoint", save)


def _kill_after_first_checkpoint(tmp_path, data, monkeypatch, **kw):
    """Train until the first per-epoch checkpoint is written, then die (a preempted job)."""
    with _killed_after_saves(monkeypatch, 1), pytest.raises(Killed):
        _train(tmp_path, data, **kw)
    assert torch.load(tmp_path / "t_ckpt" / "last.pt", weights_only=True)["epoch"] == 1


def test_a_finished_job_leaves_no_checkpoint_and_a_rerun_retrains(tmp_path, image_data, caplog):
    first, out, _ = _train(tmp_path, image_data, epochs=2)
    assert not (tmp_path / "t_ckpt" / "last.pt").exists()
    with caplog.at_level("INFO", logger="lvd.train_teacher"):  # --forcerun train_teacher
        second, _, _ = _train(tmp_path, image_data, epochs=2)
    assert "resumed" not in caplog.text and "epoch 1/2" in caplog.text and "epoch 2/2" in caplog.text
    assert [r["epoch"] for r in second["history"]] == [1, 2]


@pytest.mark.parametrize("before,after", [(2, 3), (3, 1)])
def test_other_epochs_train_afresh_like_a_fresh_run(tmp_path, image_data, monkeypatch, caplog, before, after):
    _kill_after_first_checkpoint(tmp_path, image_data, monkeypatch, epochs=before)
    with caplog.at_level("INFO", logger="lvd.train_teacher"):
        m, out, _ = _train(tmp_path, image_data, epochs=after)
    assert "starting afresh" in caplog.text and "config fields ['epochs']" in caplog.text
    assert "resumed" not in caplog.text
    _, fresh, _ = _train(tmp_path, image_data, name="fresh", epochs=after)
    a, b = torch.load(out, weights_only=True), torch.load(fresh, weights_only=True)
    assert a["epoch"] == after and m["epochs_done"] == after
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0)


def test_only_the_same_job_resumes(tmp_path, image_data, monkeypatch, caplog):
    _kill_after_first_checkpoint(tmp_path, image_data, monkeypatch, epochs=2)
    with caplog.at_level("INFO", logger="lvd.train_teacher"):  # the same job: resumes
        second, _, _ = _train(tmp_path, image_data, epochs=2)
    assert "resumed from" in caplog.text and "at epoch 1" in caplog.text
    assert [r["epoch"] for r in second["history"]] == [1, 2]
    for change, why in ((dict(lr=1e-3), "config fields ['lr']"), (dict(max_minutes=60.0), "config fields ['max_minutes']")):
        _kill_after_first_checkpoint(tmp_path, image_data, monkeypatch, epochs=2)
        caplog.clear()
        with caplog.at_level("INFO", logger="lvd.train_teacher"):
            _train(tmp_path, image_data, epochs=2, **change)
        assert "starting afresh" in caplog.text and why in caplog.text and "resumed" not in caplog.text
    # other training data of the same shapes
    _kill_after_first_checkpoint(tmp_path, image_data, monkeypatch, epochs=2)
    other = write_image_data(tmp_path / "other.h5", digits=False)
    caplog.clear()
    with caplog.at_level("INFO", logger="lvd.train_teacher"):
        _train(tmp_path, other, epochs=2)
    assert "starting afresh" in caplog.text and "data_info differ" in caplog.text
    # another version of the code
    _kill_after_first_checkpoint(tmp_path, image_data, monkeypatch, epochs=2)
    monkeypatch.setattr(fingerprints, "_CODE_DIGEST", "another-version")
    caplog.clear()
    with caplog.at_level("INFO", logger="lvd.train_teacher"):
        _train(tmp_path, image_data, epochs=2)
    assert "starting afresh" in caplog.text and "code differ" in caplog.text


def test_the_code_digest_covers_the_package_sources():
    d = fingerprints.code_digest()
    assert len(d) == 20 and d == fingerprints.code_digest()


@pytest.mark.parametrize("kind", ["vqvae", "lm"])
def test_killed_run_resumes_to_the_same_model(tmp_path, monkeypatch, kind):
    data = write_image_data(tmp_path / "img.h5") if kind == "vqvae" else write_text_data(tmp_path / "txt.h5")
    _, straight, _ = _train(tmp_path, data, name="a", kind=kind, epochs=2)
    with _killed_after_saves(monkeypatch, 1), pytest.raises(Killed):
        _train(tmp_path, data, name="b", kind=kind, epochs=2)
    assert torch.load(tmp_path / "b_ckpt" / "last.pt", weights_only=True)["epoch"] == 1
    _, resumed, _ = _train(tmp_path, data, name="b", kind=kind, epochs=2)
    assert not (tmp_path / "b_ckpt" / "last.pt").exists()  # the finished job removed it
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    for k in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=0, atol=0)


@pytest.fixture
def scripted_valid_loss(monkeypatch):
    """Replaces the validation nll of the next evaluate() calls by the values put in the list."""
    losses, build = [], teachers.build

    def scripted(*args, **kwargs):
        model = build(*args, **kwargs)
        real = model.evaluate

        def evaluate(batches, fit_batches=None):
            out = real(batches, fit_batches)
            return {**out, "nll": losses.pop(0)} if losses else out
        model.evaluate = evaluate
        return model

    monkeypatch.setattr(teachers, "build", scripted)
    return losses


def _recording_saves(monkeypatch):
    """Every checkpoint's weights by epoch, as train_teacher saves them."""
    seen, save = {}, io.save_checkpoint

    def record(path, state):
        if path.name == "last.pt":
            seen[state["epoch"]] = {k: v.clone() for k, v in state["state_dict"].items()}
        save(path, state)
    monkeypatch.setattr(io, "save_checkpoint", record)
    return seen


def _same_weights(path, weights):
    got = torch.load(path, weights_only=True)["state_dict"]
    assert got.keys() == weights.keys()
    return all(torch.equal(got[k], weights[k]) for k in got)


@pytest.mark.parametrize("select, expected", [("best", 2), ("last", 3)])
def test_select_keeps_the_epoch_of_lowest_validation_loss(tmp_path, text_data, monkeypatch, scripted_valid_loss,
                                                          select, expected):
    scripted_valid_loss[:] = [3.0, 1.0, 2.0]  # epoch 2 is the best on validation
    seen = _recording_saves(monkeypatch)
    m, out, _ = _train(tmp_path, text_data, kind="lm", epochs=3, select=select)
    assert not scripted_valid_loss  # one validation a epoch, then the real test score
    assert (m["epochs_done"], m["selected_epoch"]) == (3, expected)
    assert torch.load(out, weights_only=True)["epoch"] == expected
    assert _same_weights(out, seen[expected]) and not _same_weights(out, seen[5 - expected])
    assert m["test"]["perplexity"] == pytest.approx(np.exp(m["test"]["nll"]))  # the selected model scored


def test_a_resumed_job_selects_like_an_uninterrupted_one(tmp_path, text_data, monkeypatch, scripted_valid_loss):
    scripted_valid_loss[:] = [3.0, 1.0, 2.0]
    _, straight, _ = _train(tmp_path, text_data, name="a", kind="lm", epochs=3, select="best")
    scripted_valid_loss[:] = [3.0, 1.0]
    with _killed_after_saves(monkeypatch, 2), pytest.raises(Killed):
        _train(tmp_path, text_data, name="b", kind="lm", epochs=3, select="best")
    scripted_valid_loss[:] = [2.0]  # epoch 3 is worse than the checkpoint's best, epoch 2
    m, resumed, _ = _train(tmp_path, text_data, name="b", kind="lm", epochs=3, select="best")
    assert m["selected_epoch"] == 2
    assert _same_weights(resumed, torch.load(straight, weights_only=True)["state_dict"])


def test_select_without_validation_keeps_the_last_epoch(tmp_path, text_data, caplog):
    with h5py.File(text_data, "a") as f:
        del f["valid"]
    m, _, _ = _train(tmp_path, text_data, kind="lm", epochs=2, select="best")
    assert m["selected_epoch"] == 2 and "no validation loss" in caplog.text


def test_select_must_be_last_or_best(tmp_path, text_data):
    with pytest.raises(ValueError, match="field 'select' is 'worst'"):
        _train(tmp_path, text_data, kind="lm", epochs=1, select="worst")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, image_data):
    ckpt = tmp_path / "t_ckpt" / "last.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not a torch file")
    with pytest.raises(io.ArtifactError, match="last.pt.*not a loadable checkpoint"):
        _train(tmp_path, image_data, epochs=1)
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(io.ArtifactError, match="teacher.pt"):
        E.run(E.Config(), image_data, bad, tmp_path / "emb.h5")
    io.save_checkpoint(bad, {"kind": "vqvae"})  # loadable, but not a teacher file
    with pytest.raises(io.ArtifactError, match="missing field"):
        E.run(E.Config(), image_data, bad, tmp_path / "emb.h5")


def test_time_cap_stops_training(tmp_path, image_data):
    m, _, _ = _train(tmp_path, image_data, epochs=50, max_minutes=1e-9)
    assert m["stopped_by_time"] and m["epochs_done"] == 1 and m["history"][0]["partial"]


def test_wrong_kind_is_refused(tmp_path, image_data):
    text = write_text_data(tmp_path / "text.h5")
    with pytest.raises(ValueError, match="'lm' is for text data.*'image'"):
        _train(tmp_path, image_data, kind="lm", epochs=1)
    with pytest.raises(ValueError, match="field 'kind'"):
        _train(tmp_path, image_data, kind="gan", epochs=1)
    _, lm, _ = _train(tmp_path, text, name="lm", epochs=1)
    with pytest.raises(io.ArtifactError, match="kind 'lm' models text data.*'image'"):
        E.run(E.Config(), image_data, lm, tmp_path / "emb.h5")
    assert not (tmp_path / "emb.h5").exists()
    other = write_image_data(tmp_path / "other.h5", patch_size=4)
    _, vq, _ = _train(tmp_path, image_data, name="vq", epochs=1)
    with pytest.raises(io.ArtifactError, match="patch_size"):
        E.run(E.Config(), other, vq, tmp_path / "emb.h5")


@pytest.mark.parametrize("kind", ["vqvae", "mae", "lm", "mlm"])
def test_embeddings_file(tmp_path, kind):
    if kind in ("vqvae", "mae"):
        data = write_image_data(tmp_path / "data.h5", n_train=70)
        P = 16
    else:
        data = write_text_data(tmp_path / "data.h5", n_train=70)
        P = 8
    _, teacher, _ = _train(tmp_path, data, kind=kind, epochs=1)
    out = tmp_path / "emb.h5"
    r = E.run(E.Config(batch_size=32), data, teacher, out)  # 32 does not divide 70
    model, _ = teachers.load(teacher)
    D = model.embedding_dim
    with h5py.File(data) as f:
        x = torch.from_numpy(f["train"][...])
    with torch.no_grad():
        expect = model.eval().embed(x).numpy()
    with io.open_artifact(out, "lvd.embeddings") as f:
        emb = io.require(f, "train", ndim=3, dtype_kind="f")
        assert emb.shape == (70, P, D) and emb.dtype == np.float16 and emb.chunks == (32, P, D)
        assert f.attrs["num_positions"] == P and f.attrs["dim"] == D and f.attrs["teacher_kind"] == kind
        np.testing.assert_allclose(emb[...].astype(np.float32), expect, rtol=2e-3, atol=2e-3)
    assert r["num_examples"] == 70


def test_command_lines(tmp_path, image_data):
    cfg = json.dumps({**TINY, "epochs": 1})
    T.main(["--config", cfg, "--data", str(image_data), "--out", str(tmp_path / "t.pt"),
            "--metrics", str(tmp_path / "m.json"), "--ckpt-dir", str(tmp_path / "ck"), "--device", "cpu"])
    E.main(["--config", '{"batch_size": 64}', "--data", str(image_data), "--teacher", str(tmp_path / "t.pt"),
            "--out", str(tmp_path / "e.h5"), "--log", str(tmp_path / "e.log")])
    assert "teacher_test_bpd" in json.loads((tmp_path / "m.json").read_text())
    with io.open_artifact(tmp_path / "e.h5", "lvd.embeddings") as f:
        assert f["train"].shape == (120, 16, 8)
    with pytest.raises(SystemExit, match="unknown key"):
        T.main(["--config", '{"epoch": 1}', "--data", str(image_data), "--out", "x", "--metrics", "y",
                "--ckpt-dir", "z"])


def test_denormals_are_flushed_while_training_and_only_then(tmp_path, image_data, monkeypatch):
    """(the module docstring: a trained VQ-VAE's convolution backward on denormals is 7x slower)
    every training step runs with flushing on, and the process's setting is back afterwards, also
    after an error: off where it was off, on where lvd.runtime had turned it on."""
    seen, real = [], T.teachers.build

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        loss = model.loss
        model.loss = lambda x: seen.append(torch.tensor(1e-40).item() == 0.0) or loss(x)
        return model

    monkeypatch.setattr(T.teachers, "build", build)
    from lvd import runtime
    before = runtime.denormals_flushed()
    runtime.flush_denormals(False)
    _train(tmp_path, image_data, epochs=1)
    assert seen and all(seen)
    assert torch.tensor(1e-40).item() != 0.0
    with pytest.raises(Exception):
        _train(tmp_path, tmp_path / "missing.h5", name="bad")
    assert torch.tensor(1e-40).item() != 0.0
    runtime.flush_denormals(True)
    _train(tmp_path, image_data, epochs=1, name="on")
    assert torch.tensor(1e-40).item() == 0.0 and runtime.denormals_flushed()
    runtime.flush_denormals(before)
