"""The assign_latents stage: embeddings.h5 in, latents.h5 out (through lvd.io)."""

import json

import h5py
import numpy as np
import pytest

from lvd import io
from lvd.stages import assign_latents as stage


def write_embeddings(path, emb):
    with io.create(path, "lvd.embeddings", "tests", {}) as f:
        f["train"] = emb.astype(np.float16)
        f.attrs["num_positions"], f.attrs["dim"] = emb.shape[1], emb.shape[2]
    return path


def position_blobs(n=120, p=2, d=3, k=3, seed=0):
    """[n, p, d] with k separated blobs at every position (their own layout), and the labels [n, p]."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(p, k, d)) * 8
    labels = rng.integers(0, k, size=(n, p))
    emb = centers[np.arange(p)[None], labels] + rng.normal(size=(n, p, d)) * 0.05
    return emb.astype(np.float32), labels


def same_partition(a, b):
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_cli_per_position_writes_the_latents_artifact(tmp_path):
    emb, labels = position_blobs()
    src = write_embeddings(tmp_path / "embeddings.h5", emb)
    out = tmp_path / "k3" / "latents.h5"
    cfg = {"mode": "position", "num_states": 7, "niter": 15, "nredo": 4}
    stage.main(["--config", json.dumps(cfg), "--embeddings", str(src), "--out", str(out),
                "--num-states", "3", "--device", "cpu", "--threads", "1", "--log", str(tmp_path / "a.log")])
    with io.open_artifact(out, "lvd.latents") as f:
        z, cent, sizes, inertia = f["z"][:], f["centroids"][:], f["cluster_sizes"][:], f["inertia"][:]
        attrs = dict(f.attrs)
        assert json.loads(f.attrs["config"])["num_states"] == 3  # the CLI override is what gets recorded
    assert z.dtype == np.int32 and z.shape == (120, 2)
    assert cent.dtype == np.float32 and cent.shape == (2, 3, 3)
    assert sizes.dtype == np.int64 and sizes.shape == (2, 3) and inertia.shape == (2,)
    assert attrs["mode"] == "position" and attrs["num_states"] == 3 and attrs["faiss_device"] == "cpu"
    assert attrs["device"] == "cpu" and "slurm_job_id" in attrs
    for pos in range(2):
        assert same_partition(z[:, pos], labels[:, pos])
        np.testing.assert_array_equal(sizes[pos], np.bincount(z[:, pos], minlength=3))
        x = emb[:, pos].astype(np.float16).astype(np.float64)  # what the stage read
        assert inertia[pos] == pytest.approx(((x - cent[pos][z[:, pos]]) ** 2).sum(), rel=1e-9)
    assert "wrote" in (tmp_path / "a.log").read_text()


def test_shared_mode_uses_one_vocabulary(tmp_path):
    rng = np.random.default_rng(1)
    n, p, d = 90, 3, 3
    truth = rng.integers(0, 2, size=(n, p))  # position pos has 2 blobs at +-10 along axis pos
    centers = np.concatenate([10 * np.eye(d), -10 * np.eye(d)])  # [6, d]: group g = pos + 3 * blob
    groups = np.arange(p)[None] + 3 * truth  # [n, p]
    emb = (centers[groups] + rng.normal(size=(n, p, d)) * 0.05).astype(np.float32)
    src = write_embeddings(tmp_path / "embeddings.h5", emb)
    out = tmp_path / "latents.h5"
    summary = stage.run(stage.Config(mode="shared", num_states=6, niter=20, nredo=20), str(src), str(out))
    with io.open_artifact(out, "lvd.latents") as f:
        z, cent, sizes = f["z"][:], f["centroids"][:], f["cluster_sizes"][:]
        assert f.attrs["mode"] == "shared" and f["inertia"].shape == (1,)
    assert cent.shape == (1, 6, 3) and sizes.shape == (1, 6) and z.shape == (90, 3)
    assert summary["empty_clusters"] == 0 and sizes.sum() == 270
    # each of the 6 groups is one state of the shared vocabulary, named alike at every position
    assert same_partition(z.reshape(-1), groups.reshape(-1))
    np.testing.assert_allclose(np.sort(cent[0], axis=0), np.sort(centers, axis=0), atol=0.05)


def test_errors_name_the_file_and_the_field(tmp_path):
    emb, _ = position_blobs(n=4)
    src = write_embeddings(tmp_path / "embeddings.h5", emb)
    with pytest.raises(ValueError, match=r"embeddings.h5: field 'train' \(4, 2, 3\): num_states=5 exceeds"):
        stage.run(stage.Config(num_states=5), str(src), str(tmp_path / "out.h5"))
    assert not (tmp_path / "out.h5").exists()
    with pytest.raises(ValueError, match="latents.mode is 'both'"):
        stage.Config(mode="both")
    with pytest.raises(ValueError, match="latents.max_points_per_centroid"):
        stage.Config(max_points_per_centroid=0)
    with pytest.raises(SystemExit, match="unknown key"):
        stage.main(["--config", '{"k": 3}', "--embeddings", str(src), "--out", str(tmp_path / "o.h5")])
    with io.create(tmp_path / "wrong.h5", "lvd.latents", "tests") as f:
        f["z"] = np.zeros((2, 2), np.int32)
    with pytest.raises(io.ArtifactError, match="expected 'lvd.embeddings'"):
        stage.run(stage.Config(), str(tmp_path / "wrong.h5"), str(tmp_path / "o.h5"))
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        io.stamp(f, "lvd.embeddings", "tests")
        f["train"] = np.zeros((4, 3), np.float16)
    with pytest.raises(io.ArtifactError, match="field 'train' has shape"):
        stage.run(stage.Config(), str(tmp_path / "flat.h5"), str(tmp_path / "o.h5"))


def test_cuda_job_with_a_cpu_faiss_build_clusters_on_the_cpu(tmp_path):
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("FAISS sees a GPU here; the GPU path is tested in test_kmeans")
    emb, labels = position_blobs(n=60, p=1)
    src = write_embeddings(tmp_path / "embeddings.h5", emb)
    summary = stage.run(stage.Config(num_states=3, nredo=4), str(src), str(tmp_path / "l.h5"), device="cuda:1")
    assert summary["faiss_device"] == "cpu"
    with io.open_artifact(tmp_path / "l.h5", "lvd.latents") as f:
        assert f.attrs["faiss_device"] == "cpu" and same_partition(f["z"][:, 0], labels[:, 0])


def test_use_gpu_never_claims_no_gpu(tmp_path, monkeypatch, fresh_devices):
    """latents.use_gpu: never with --device auto: no GPU lock is taken even when GPUs exist
    and every one is held by someone else (an old claim would wait, then fail)."""
    import fcntl
    import os

    from lvd import devices

    monkeypatch.setenv("LVD_FAKE_GPUS", "1")
    monkeypatch.setenv("LVD_DEVICE_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("LVD_DEVICE_WAIT_SECONDS", "0.3")
    monkeypatch.setenv("LVD_DEVICE_POLL_SECONDS", "0.1")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    (tmp_path / "locks").mkdir()
    fd = os.open(tmp_path / "locks" / "gpu0.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another job holds the only GPU
    emb, _ = position_blobs(n=60, p=1)
    src = write_embeddings(tmp_path / "embeddings.h5", emb)
    out = tmp_path / "latents.h5"
    try:
        stage.main(["--config", json.dumps({"use_gpu": "never", "niter": 5}), "--embeddings", str(src),
                    "--out", str(out), "--num-states", "3", "--threads", "1"])
        assert devices._claim is None
        with io.open_artifact(out, "lvd.latents") as f:
            assert f.attrs["device"] == "cpu" and f.attrs["faiss_device"] == "cpu"
        with pytest.raises(RuntimeError, match="stay claimed"):  # auto would have waited for it
            stage.main(["--config", json.dumps({"niter": 5}), "--embeddings", str(src),
                        "--out", str(tmp_path / "o2.h5"), "--num-states", "3", "--threads", "1"])
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", ["position", "shared"])
def test_nan_or_inf_embeddings_name_the_file_and_field(tmp_path, mode):
    emb, _ = position_blobs(n=60, p=2)
    emb[7, 1, 2] = np.nan if mode == "position" else np.inf
    src = write_embeddings(tmp_path / "embeddings.h5", emb)
    with pytest.raises(ValueError, match=r"embeddings\.h5: field 'train' \(60, 2, 3\): 1 NaN or infinite values"):
        stage.run(stage.Config(mode=mode, num_states=3), str(src), str(tmp_path / "l.h5"))
    assert not (tmp_path / "l.h5").exists()


def test_clusters_mode_is_a_two_level_kmeans(tmp_path):
    """3 clusters (far apart) of 2 sub-blobs each (close together), shared by 2 positions: the
    shared k-means finds the clusters, the k-means inside each cluster its 2 sub-blobs;
    state = cluster * heads_per_cluster + sub-cluster, with heads 2, 3 of each cluster unused."""
    rng = np.random.default_rng(3)
    n, p, d = 120, 2, 3
    big = 40 * np.eye(d)                                       # cluster centres
    truth_c = rng.integers(0, 3, size=(n, p))
    truth_s = rng.integers(0, 2, size=(n, p))
    emb = big[truth_c] + np.where(truth_s[..., None] == 1, 4.0, -4.0) * np.ones(d) + rng.normal(size=(n, p, d)) * 0.05
    src = write_embeddings(tmp_path / "embeddings.h5", emb)
    out = tmp_path / "latents.h5"
    cfg = stage.Config(mode="clusters", num_states=12, heads_per_cluster=4, initial_heads=2, niter=20, nredo=10)
    stage.run(cfg, str(src), str(out))
    with io.open_artifact(out, "lvd.latents") as f:
        z, cent, sub, sizes = f["z"][:], f["centroids"][:], f["sub_centroids"][:], f["cluster_sizes"][:]
        attrs = dict(f.attrs)
    assert attrs["mode"] == "clusters" and attrs["num_states"] == 12
    assert (attrs["num_clusters"], attrs["heads_per_cluster"], attrs["initial_heads"]) == (3, 4, 2)
    assert cent.shape == (1, 3, 3) and sub.shape == (3, 2, 3) and sizes.shape == (1, 12)
    assert set(np.unique(z % 4)) == {0, 1}                     # only the initial heads are used
    assert same_partition((z // 4).reshape(-1), truth_c.reshape(-1))
    assert same_partition(z.reshape(-1), (truth_c * 2 + truth_s).reshape(-1))
    assert sizes.sum() == n * p and (sizes[0].reshape(3, 4)[:, 2:] == 0).all()


def test_clusters_mode_checks_its_sizes():
    with pytest.raises(ValueError, match="must divide"):
        stage.Config(mode="clusters", num_states=10, heads_per_cluster=4)
    with pytest.raises(ValueError, match="exceeds"):
        stage.Config(mode="clusters", num_states=8, heads_per_cluster=2, initial_heads=3)
