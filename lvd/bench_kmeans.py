"""k-means benchmark: FAISS against scikit-learn on the same seeded Gaussian blobs.

    python -m lvd.bench kmeans --num-points 200000 --dim 64 --num-clusters 256

Both start from the same initial centroids (a seeded random sample of the points) and run
Lloyd iterations on all points: scikit-learn ``KMeans(init=..., n_init=1, algorithm="lloyd",
max_iter=niter, tol=0)``; FAISS then runs exactly as many iterations as scikit-learn did
(it stops early only on unchanged labels). FAISS trains on every point unless
``--max-points-per-centroid`` asks for its subsampling. Times cover fitting plus the final
assignment of every point; both inertias are recomputed the same way (float64, every point).
Progress goes to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

# The OpenMP wait policy in force (lvd/__init__.py sets PASSIVE unless the caller set one).
_OMP_POLICY = os.environ.get("OMP_WAIT_POLICY", "default")

from lvd import latents  # noqa: E402  (after reading the policy it may set)

log = logging.getLogger("lvd.bench.kmeans")


def make_blobs(num_points: int, dim: int, num_clusters: int, seed: int,
               spread: float = 1.0) -> np.ndarray:
    """float32 [num_points, dim]: Gaussian blobs (unit-variance noise around N(0, spread^2 * 4) centers)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_clusters, dim)).astype(np.float32) * (2.0 * spread)
    labels = rng.integers(0, num_clusters, size=num_points)
    x = centers[labels]
    x += rng.standard_normal(size=x.shape, dtype=np.float32)
    return x


def run_sklearn(x: np.ndarray, init: np.ndarray, niter: int, seed: int) -> tuple[np.ndarray, int, float]:
    from sklearn.cluster import KMeans

    start = time.perf_counter()
    km = KMeans(n_clusters=len(init), init=init, n_init=1, max_iter=niter, tol=0.0,
                algorithm="lloyd", random_state=seed).fit(x)
    seconds = time.perf_counter() - start
    return km.cluster_centers_.astype(np.float32), int(km.n_iter_), seconds


def run_faiss(x: np.ndarray, init: np.ndarray, niter: int, seed: int, use_gpu: str,
              max_points_per_centroid: int | None) -> tuple[np.ndarray, str, float]:
    faiss = latents.load_faiss()
    device = latents.faiss_device(use_gpu)
    k, d = init.shape
    start = time.perf_counter()
    clus = faiss.Clustering(d, k)
    clus.niter, clus.seed, clus.verbose = niter, seed, False
    clus.min_points_per_centroid = 1
    clus.max_points_per_centroid = max_points_per_centroid or len(x) // k + 1
    faiss.copy_array_to_vector(np.ascontiguousarray(init, dtype=np.float32).ravel(), clus.centroids)
    index = latents.flat_index(d, device)
    clus.train(x, index)
    centroids = faiss.vector_float_to_array(clus.centroids).reshape(k, d)
    index.search(x, 1)  # the final assignment of every point, as KMeans.fit computes labels_
    seconds = time.perf_counter() - start
    return centroids, device, seconds


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    assigner = latents.Assigner(centroids, "cpu")
    for start in range(0, len(x), 65536):
        assigner(x[start:start + 65536])
    return assigner.inertia


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lvd.bench kmeans", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-points", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--num-clusters", type=int, default=256)
    p.add_argument("--niter", type=int, default=20, help="Lloyd iterations (scikit-learn's max_iter)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--use-gpu", choices=latents.USE_GPU_CHOICES, default="auto",
                   help="FAISS on a GPU when its build sees one (auto) or never")
    p.add_argument("--max-points-per-centroid", type=int, default=None,
                   help="let FAISS subsample to this many points per centroid (default: all points)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: all cores)")
    args = p.parse_args(argv)
    if min(args.num_points, args.dim, args.num_clusters, args.niter) < 1:
        p.error("--num-points, --dim, --num-clusters and --niter must be >= 1")
    if args.num_clusters > args.num_points:
        p.error(f"--num-clusters {args.num_clusters} exceeds --num-points {args.num_points}")
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    threads = args.threads or os.cpu_count() or 1
    faiss = latents.load_faiss()  # first, so that OMP_WAIT_POLICY applies to both libraries
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(threads)
    if _OMP_POLICY == "default" and threads > 1:
        log.warning("torch loaded before OMP_WAIT_POLICY was set: idle OpenMP threads spin, which can "
                    "slow multi-threaded FAISS many times on a busy machine; run with "
                    "OMP_WAIT_POLICY=PASSIVE")
    log.info("data: %d Gaussian-blob points, dim %d, %d clusters, seed %d", args.num_points, args.dim,
             args.num_clusters, args.seed)
    x = make_blobs(args.num_points, args.dim, args.num_clusters, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    init = x[rng.choice(len(x), size=args.num_clusters, replace=False)].copy()  # [k, d] shared init

    log.info("scikit-learn KMeans (lloyd, n_init=1, max_iter=%d, %d threads) ...", args.niter, threads)
    with threadpool_limits(limits=threads):
        sk_centroids, sk_iter, sk_seconds = run_sklearn(x, init, args.niter, args.seed)
    log.info("scikit-learn: %.2f s, %d iterations", sk_seconds, sk_iter)

    log.info("FAISS k-means (%d iterations) ...", sk_iter)
    fa_centroids, device, fa_seconds = run_faiss(x, init, sk_iter, args.seed, args.use_gpu,
                                                 args.max_points_per_centroid)
    log.info("FAISS on %s: %.2f s", device, fa_seconds)

    fa_inertia, sk_inertia = inertia(x, fa_centroids), inertia(x, sk_centroids)
    result = {
        "benchmark": "kmeans", "num_points": args.num_points, "dim": args.dim,
        "num_clusters": args.num_clusters, "niter": sk_iter, "seed": args.seed, "threads": threads,
        "faiss_device": device, "max_points_per_centroid": args.max_points_per_centroid,
        "omp_wait_policy": _OMP_POLICY,
        "faiss_seconds": round(fa_seconds, 6), "sklearn_seconds": round(sk_seconds, 6),
        "speedup": round(sk_seconds / fa_seconds, 3),
        "faiss_inertia": fa_inertia, "sklearn_inertia": sk_inertia,
        "inertia_ratio": round(fa_inertia / sk_inertia, 6),
    }
    log.info("speedup %.2fx, inertia ratio (FAISS / scikit-learn) %.5f", result["speedup"],
             result["inertia_ratio"])
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
