"""lvd.latents: FAISS k-means checked against brute force and known blob labels."""

import numpy as np
import pytest

from lvd import latents


def blobs(n_per, k, d, seed=0, spread=0.05, scale=10.0):
    """Well-separated Gaussian blobs: points float32 [n_per*k, d] and their labels [n_per*k]."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * scale
    labels = np.repeat(np.arange(k), n_per)
    x = centers[labels] + rng.normal(size=(len(labels), d)) * spread
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm]


def same_partition(a, b):
    """True when labelings a and b are equal up to renaming the labels (a bijection)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def brute_force(x, centroids):
    d2 = ((x[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)  # [n, k]
    return d2.argmin(1), d2.min(1)


def test_same_partition_helper_is_strict():
    assert same_partition(np.array([0, 0, 1, 2]), np.array([5, 5, 3, 4]))
    assert not same_partition(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    assert not same_partition(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]))


def test_recovers_separated_blobs_exactly():
    x, labels = blobs(n_per=80, k=6, d=8)
    res = latents.kmeans(x, 6, niter=20, nredo=5, seed=1, use_gpu="never")
    assert res.centroids.shape == (6, 8) and res.centroids.dtype == np.float32
    assert res.assign.shape == (480,) and res.sizes.shape == (6,)
    assert same_partition(res.assign, labels)
    assert sorted(res.sizes.tolist()) == [80] * 6
    for c in range(6):  # each centroid is the mean of its blob
        np.testing.assert_allclose(res.centroids[c], x[res.assign == c].mean(0), atol=1e-4)


def test_inertia_and_assignment_match_brute_force():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 5)).astype(np.float32)  # no cluster structure: many near-ties
    res = latents.kmeans(x, 7, niter=10, seed=0, use_gpu="never")
    nearest, d2 = brute_force(x, res.centroids)
    assert (res.assign == nearest).mean() > 0.99  # FAISS's expansion may flip an exact tie
    expected = ((x.astype(np.float64) - res.centroids[res.assign]) ** 2).sum()
    assert res.inertia == pytest.approx(expected, rel=1e-9)
    assert res.inertia == pytest.approx(d2.sum(), rel=1e-5)
    np.testing.assert_array_equal(res.sizes, np.bincount(res.assign, minlength=7))


def test_subsampled_training_still_assigns_every_row():
    x, labels = blobs(n_per=200, k=4, d=3, seed=2)
    res = latents.kmeans(x, 4, niter=20, nredo=5, seed=0, use_gpu="never", max_points_per_centroid=10)
    assert res.sizes.sum() == 800 and same_partition(res.assign, labels)
    assert res.inertia == pytest.approx(brute_force(x, res.centroids)[1].sum(), rel=1e-5)


def test_empty_clusters_show_as_zero_sizes():
    x = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)  # only 3 distinct points, 30 rows
    res = latents.kmeans(x, 5, niter=5, seed=0, use_gpu="never")
    assert res.sizes.sum() == 30
    assert (res.sizes == 0).sum() >= 2
    assert res.inertia < 1e-3  # FAISS nudges split centroids by a relative 1/1024


def test_too_many_clusters_is_a_clear_error():
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"num_states=5 needs 1 <= num_states <= number of rows \(3\)"):
        latents.kmeans(x, 5, use_gpu="never")
    with pytest.raises(ValueError, match="exceeds the number of samples per position"):
        latents.per_position(np.zeros((3, 2, 4), np.float32), 4, use_gpu="never")
    with pytest.raises(ValueError, match="use_gpu"):
        latents.kmeans(x, 2, use_gpu="yes")


def test_per_position_has_its_own_clusters_at_each_position():
    n, p, d, k = 240, 3, 4, 4
    emb = np.empty((n, p, d), np.float32)
    truth = np.empty((n, p), np.int64)
    for pos in range(p):  # a different blob layout and labeling at every position
        emb[:, pos], truth[:, pos] = blobs(n_per=n // k, k=k, d=d, seed=10 + pos)
    res = latents.per_position(emb, k, niter=20, nredo=5, seed=0, use_gpu="never", chunk_rows=50)
    assert res.z.shape == (n, p) and res.z.dtype == np.int32
    assert res.centroids.shape == (p, k, d) and res.sizes.shape == (p, k) and res.inertia.shape == (p,)
    for pos in range(p):
        assert same_partition(res.z[:, pos], truth[:, pos])
        c = res.centroids[pos][res.z[:, pos]]
        assert res.inertia[pos] == pytest.approx(((emb[:, pos] - c.astype(np.float64)) ** 2).sum(), rel=1e-9)
    assert (res.sizes == n // k).all()


def test_shared_vocabulary_is_one_clustering_over_all_positions():
    n, p, d, k = 200, 3, 4, 5
    flat, labels = blobs(n_per=n * p // k, k=k, d=d, seed=4)
    emb = flat.reshape(n, p, d)  # rows of every position come from the same 5 blobs
    res = latents.shared(emb, k, niter=20, nredo=5, seed=0, use_gpu="never", chunk_rows=7,
                         max_points_per_centroid=40)  # 200 of 600 rows train; chunks straddle them
    assert res.z.shape == (n, p) and res.centroids.shape == (1, k, d)
    assert res.sizes.shape == (1, k) and res.inertia.shape == (1,)
    assert same_partition(res.z.reshape(-1), labels)  # one global renaming for all positions
    assert res.sizes.sum() == n * p
    _, d2 = brute_force(flat, res.centroids[0])
    assert res.inertia[0] == pytest.approx(d2.sum(), rel=1e-5)


def test_gather_rows_reads_the_chosen_rows_in_chunks():
    emb = np.arange(11 * 3 * 2, dtype=np.float32).reshape(11, 3, 2)
    rows = np.array([0, 2, 3, 8, 9, 10, 20, 32])
    np.testing.assert_array_equal(latents.gather_rows(emb, rows, chunk_rows=4), emb.reshape(-1, 2)[rows])
    np.testing.assert_array_equal(latents.gather_rows(emb, None, chunk_rows=4), emb.reshape(-1, 2))


@pytest.mark.gpu
def test_gpu_matches_cpu_on_separated_blobs():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        pytest.skip("FAISS sees no GPU (CPU build or no CUDA device)")
    assert latents.faiss_device("auto") == "gpu:0"
    x, labels = blobs(n_per=500, k=8, d=16, seed=5)
    cpu = latents.kmeans(x, 8, niter=20, nredo=5, seed=0, use_gpu="never")
    gpu = latents.kmeans(x, 8, niter=20, nredo=5, seed=0, use_gpu="auto")
    assert same_partition(gpu.assign, cpu.assign) and same_partition(gpu.assign, labels)
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-4)
