"""The k-means benchmark: runs small, prints one JSON line last, compares like with like."""

import json

import numpy as np
import pytest

from lvd import bench_kmeans


def test_blobs_are_seeded_and_clustered():
    a = bench_kmeans.make_blobs(500, 4, 3, seed=7)
    assert a.dtype == np.float32 and a.shape == (500, 4)
    np.testing.assert_array_equal(a, bench_kmeans.make_blobs(500, 4, 3, seed=7))
    assert not np.array_equal(a, bench_kmeans.make_blobs(500, 4, 3, seed=8))


def test_main_prints_one_json_line_last(capsys):
    result = bench_kmeans.main(["--num-points", "3000", "--dim", "8", "--num-clusters", "16",
                                "--niter", "5", "--threads", "1", "--use-gpu", "never"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    printed = json.loads(last)
    assert printed == result
    for key in ("faiss_seconds", "sklearn_seconds", "speedup", "inertia_ratio", "num_points", "dim",
                "num_clusters", "niter", "faiss_device"):
        assert key in printed
    assert printed["faiss_device"] == "cpu" and printed["niter"] <= 5
    assert printed["speedup"] == pytest.approx(printed["sklearn_seconds"] / printed["faiss_seconds"], rel=1e-2)
    # same data, same initial centroids, same number of Lloyd steps: (nearly) the same optimum
    assert printed["inertia_ratio"] == pytest.approx(1.0, abs=1e-3)


def test_inertia_helper_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    c = rng.normal(size=(5, 3)).astype(np.float32)
    d2 = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1).min(1).sum()
    assert bench_kmeans.inertia(x, c) == pytest.approx(d2, rel=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench_kmeans.main(["--num-points", "10", "--num-clusters", "20"])
