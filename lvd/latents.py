"""Discrete latents from continuous embeddings: FAISS k-means (L2).

Three modes over embeddings ``emb`` [N, P, D] (N samples, P = num_positions, D = dim), named
as the config's ``latents.mode`` names them:

    position  a separate k-means at every position p over emb[:, p, :]   (LVD)
              -> z [N, P], centroids [P, K, D], sizes [P, K], inertia [P]
    shared    one k-means over all N*P rows, one vocabulary of K states     (text, shared images)
              -> z [N, P], centroids [1, K, D], sizes [1, K], inertia [1]
    clusters  ``shared`` into K / H clusters, each split into sub-clusters   (LVD-PG)
              -> z [N, P], state = cluster * H + head (``clusters`` below)

``emb`` may be a NumPy array or an h5py dataset: rows are read ``chunk_rows`` samples at
a time, converted to float32 chunk by chunk. FAISS trains on at most
``max_points_per_centroid * K`` rows (a seeded random subset; FAISS's own rule, 256 by
default); the final assignment, cluster sizes and inertia always cover every row.

FAISS runs on a GPU when its build sees one (``faiss.get_num_gpus() > 0``) and
``use_gpu`` is "auto"; "never" forces the CPU. ``faiss_device(use_gpu)`` says which.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

log = logging.getLogger("lvd.latents")

# OMP_WAIT_POLICY=PASSIVE (set in lvd/__init__.py, before torch or FAISS load OpenMP) keeps
# multi-threaded FAISS from collapsing on a shared machine: measured on 2 shared cores,
# 2-thread k-means 13.0 s with the default policy after `import torch`, 1.9 s with PASSIVE.

USE_GPU_CHOICES = ("auto", "never")


class KMeansResult(NamedTuple):
    centroids: np.ndarray  # float32 [k, d]
    assign: np.ndarray  # int64 [n]   index of the nearest centroid
    inertia: float  # sum over rows of the squared distance to the assigned centroid
    sizes: np.ndarray  # int64 [k]   rows per cluster (0 = empty cluster)


def load_faiss():
    """Import FAISS (see OMP_WAIT_POLICY above)."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss is a dependency
        raise ImportError("lvd.latents needs FAISS: pip install faiss-cpu (or .[gpu])") from e
    return faiss


def faiss_device(use_gpu: str = "auto", gpu_id: int | None = None) -> str:
    """'gpu:<id>' when FAISS will run on a GPU for this setting, else 'cpu'."""
    if use_gpu not in USE_GPU_CHOICES:
        raise ValueError(f"latents.use_gpu is {use_gpu!r}, expected one of {USE_GPU_CHOICES}")
    faiss = load_faiss()
    num = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu == "never" or num == 0:
        return "cpu"
    gpu_id = 0 if gpu_id is None else gpu_id
    if not 0 <= gpu_id < num:
        raise ValueError(f"FAISS sees {num} GPU(s); GPU {gpu_id} requested")
    return f"gpu:{gpu_id}"


_GPU_RESOURCES: dict = {}   # (id of the faiss module, GPU id) -> its StandardGpuResources


def gpu_resources(gpu_id: int, faiss=None):
    """The one ``faiss.StandardGpuResources`` of this process for GPU ``gpu_id``, made on first
    use and kept: each such object reserves scratch memory on the GPU and a set of streams, so
    one per index (per position of a per-position k-means) would pay that setup every time.
    ``faiss``: the module (default: ``load_faiss()``; a stand-in for tests)."""
    faiss = load_faiss() if faiss is None else faiss
    key = (id(faiss), int(gpu_id))
    if key not in _GPU_RESOURCES:
        _GPU_RESOURCES[key] = faiss.StandardGpuResources()
    return _GPU_RESOURCES[key]


def flat_index(d: int, device: str, faiss=None):
    """An exact L2 index on the CPU or on one GPU (sharing the process's resources for that GPU,
    ``gpu_resources``). ``faiss``: the module (default ``load_faiss()``)."""
    faiss = load_faiss() if faiss is None else faiss
    if device == "cpu":
        return faiss.IndexFlatL2(d)
    res = gpu_resources(int(device.split(":")[1]), faiss)
    cfg = faiss.GpuIndexFlatConfig()
    cfg.device = int(device.split(":")[1])
    index = faiss.GpuIndexFlatL2(res, d, cfg)
    faiss.add_to_referenced_objects(index, res)  # alive as long as the index (cached or not)
    return index


def _as_f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def check_finite(x: np.ndarray, where: str) -> None:
    """ValueError naming ``where`` when x holds NaN or infinite values (FAISS would stop with
    "input contains NaN's or Inf's" and no file name). float16 embeddings overflow to inf."""
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{int(bad.sum())} NaN or infinite values in {where} (first at index {first} "
                         f"of that block); the teacher's embeddings overflowed or are corrupt")


def train(x: np.ndarray, k: int, niter: int = 50, nredo: int = 1, seed: int = 0,
          device: str = "cpu", max_points_per_centroid: int | None = 256) -> np.ndarray:
    """Centroids float32 [k, d] of k-means on ``x`` [n, d] (FAISS Lloyd, best of ``nredo``)."""
    faiss = load_faiss()
    x = _as_f32(x)
    if x.ndim != 2:
        raise ValueError(f"k-means input must be [n, d], got shape {x.shape}")
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means with num_states={k} needs 1 <= num_states <= number of rows ({n})")
    if niter < 1 or nredo < 1:
        raise ValueError(f"k-means needs niter >= 1 and nredo >= 1, got niter={niter}, nredo={nredo}")
    clus = faiss.Clustering(d, k)
    clus.niter = niter
    clus.nredo = nredo
    clus.seed = seed
    clus.verbose = False
    clus.min_points_per_centroid = 1  # FAISS only prints a warning below this; we log our own
    clus.max_points_per_centroid = max_points_per_centroid if max_points_per_centroid else n // k + 1
    if n < 10 * k:
        log.warning("k-means: only %d rows for %d clusters (%.1f per cluster)", n, k, n / k)
    clus.train(x, flat_index(d, device))
    return faiss.vector_float_to_array(clus.centroids).reshape(k, d).astype(np.float32)


class Assigner:
    """Nearest-centroid search over chunks of rows; accumulates sizes and inertia."""

    def __init__(self, centroids: np.ndarray, device: str = "cpu"):
        self.centroids = _as_f32(centroids)
        k, d = self.centroids.shape
        self.index = flat_index(d, device)
        self.index.add(self.centroids)
        self.sizes = np.zeros(k, dtype=np.int64)
        self.inertia = 0.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Assignments int64 [n] of the rows ``x`` [n, d]."""
        x = _as_f32(x)
        _, idx = self.index.search(x, 1)
        a = idx[:, 0].astype(np.int64)
        # exact squared distances in float64 (FAISS's are from the ||x||^2 - 2xc + ||c||^2 expansion)
        diff = x.astype(np.float64) - self.centroids[a].astype(np.float64)
        self.inertia += float(np.einsum("nd,nd->", diff, diff))
        self.sizes += np.bincount(a, minlength=len(self.sizes))
        return a


def kmeans(x: np.ndarray, k: int, niter: int = 50, nredo: int = 1, seed: int = 0,
           use_gpu: str = "auto", max_points_per_centroid: int | None = 256,
           gpu_id: int | None = None) -> KMeansResult:
    """k-means of ``x`` float32 [n, d] into ``k`` clusters; see the module docstring.

    Returns (centroids [k, d], assign [n], inertia, sizes [k]). Empty clusters are
    re-seeded by FAISS during training; any still empty after the final assignment
    show up as zeros in ``sizes`` (and a warning).
    """
    x = _as_f32(x)
    check_finite(x, "the k-means input [rows, dim]")
    device = faiss_device(use_gpu, gpu_id)
    centroids = train(x, k, niter, nredo, seed, device, max_points_per_centroid)
    assigner = Assigner(centroids, device)
    assign = assigner(x)
    _warn_empty(assigner.sizes, "k-means")
    return KMeansResult(centroids, assign, assigner.inertia, assigner.sizes)


def _warn_empty(sizes: np.ndarray, where: str) -> None:
    empty = int((sizes == 0).sum())
    if empty:
        log.warning("%s: %d of %d clusters are empty", where, empty, len(sizes))


def _sample_rows(num_rows: int, k: int, max_points_per_centroid: int | None, seed: int) -> np.ndarray | None:
    """Sorted row indices of the training subset, or None for all rows."""
    if not max_points_per_centroid or num_rows <= k * max_points_per_centroid:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_rows, size=k * max_points_per_centroid, replace=False))


class LatentResult(NamedTuple):
    z: np.ndarray  # int32 [N, P]
    centroids: np.ndarray  # float32 [P or 1, K, D]
    sizes: np.ndarray  # int64 [P or 1, K]
    inertia: np.ndarray  # float64 [P or 1]


def _check_emb(emb, k: int) -> tuple[int, int, int]:
    if len(emb.shape) != 3:
        raise ValueError(f"embeddings must be [N, num_positions, dim], got shape {tuple(emb.shape)}")
    n, p, d = emb.shape
    if n == 0 or p == 0 or d == 0:
        raise ValueError(f"embeddings are empty: shape {tuple(emb.shape)}")
    return n, p, d


def per_position(emb, k: int, niter: int = 50, nredo: int = 1, seed: int = 0, use_gpu: str = "auto",
                 max_points_per_centroid: int | None = 256, gpu_id: int | None = None,
                 chunk_rows: int = 65536) -> LatentResult:
    """A separate k-means at every position of ``emb`` [N, P, D] (array or h5py dataset)."""
    n, p, d = _check_emb(emb, k)
    if k > n:
        raise ValueError(f"num_states={k} exceeds the number of samples per position ({n})")
    device = faiss_device(use_gpu, gpu_id)
    z = np.empty((n, p), dtype=np.int32)
    centroids = np.empty((p, k, d), dtype=np.float32)
    sizes = np.empty((p, k), dtype=np.int64)
    inertia = np.empty(p, dtype=np.float64)
    for pos in range(p):
        x = _as_f32(emb[:, pos, :])  # [N, D]: one position's column (one strided read)
        check_finite(x, f"position {pos} [samples, dim]")
        rows = _sample_rows(n, k, max_points_per_centroid, seed + pos)
        centroids[pos] = train(x if rows is None else x[rows], k, niter, nredo, seed + pos, device, None)
        assigner = Assigner(centroids[pos], device)
        for start in range(0, n, chunk_rows):
            z[start:start + chunk_rows, pos] = assigner(x[start:start + chunk_rows])
        sizes[pos], inertia[pos] = assigner.sizes, assigner.inertia
        _warn_empty(assigner.sizes, f"position {pos}")
        log.info("position %d/%d: inertia %.6g, smallest cluster %d rows", pos + 1, p, inertia[pos],
                 sizes[pos].min())
    return LatentResult(z, centroids, sizes, inertia)


def gather_rows(emb, rows: np.ndarray | None, chunk_rows: int = 8192) -> np.ndarray:
    """float32 rows ``rows`` (sorted; None = all) of emb [N, P, D] viewed as [N*P, D], read in chunks."""
    n, p, d = emb.shape
    parts = []
    for start in range(0, n, chunk_rows):
        block = _as_f32(emb[start:start + chunk_rows])
        check_finite(block, f"samples {start}..{start + len(block) - 1} [sample, position, dim]")
        block = block.reshape(-1, d)  # [chunk*P, D]
        if rows is None:
            parts.append(block)
        else:
            lo, hi = np.searchsorted(rows, [start * p, start * p + len(block)])
            parts.append(block[rows[lo:hi] - start * p])
    return np.concatenate(parts)


def shared(emb, k: int, niter: int = 50, nredo: int = 1, seed: int = 0, use_gpu: str = "auto",
           max_points_per_centroid: int | None = 256, gpu_id: int | None = None,
           chunk_rows: int = 8192) -> LatentResult:
    """One k-means over all N*P rows of ``emb`` [N, P, D]: one vocabulary for every position."""
    n, p, d = _check_emb(emb, k)
    if k > n * p:
        raise ValueError(f"num_states={k} exceeds the number of embedding rows (N*P = {n * p})")
    device = faiss_device(use_gpu, gpu_id)
    rows = _sample_rows(n * p, k, max_points_per_centroid, seed)
    train_x = gather_rows(emb, rows, chunk_rows)  # [n_train, D]
    log.info("shared k-means: training on %d of %d rows", len(train_x), n * p)
    centroids = train(train_x, k, niter, nredo, seed, device, None)
    del train_x
    assigner = Assigner(centroids, device)
    z = np.empty((n, p), dtype=np.int32)
    for start in range(0, n, chunk_rows):
        block = _as_f32(emb[start:start + chunk_rows])  # [chunk, P, D]
        check_finite(block, f"samples {start}..{start + len(block) - 1} [sample, position, dim]")
        z[start:start + len(block)] = assigner(block.reshape(-1, d)).reshape(len(block), p)
        log.info("assigned %d/%d samples", start + len(block), n)
    _warn_empty(assigner.sizes, "shared vocabulary")
    return LatentResult(z, centroids[None], assigner.sizes[None], np.array([assigner.inertia]))


class ClusterResult(NamedTuple):
    z: np.ndarray              # int32 [N, P]: state = cluster * heads_per_cluster + sub-cluster
    centroids: np.ndarray      # float32 [1, num_clusters, D]: the shared vocabulary
    sub_centroids: np.ndarray  # float32 [num_clusters, initial_heads, D] (NaN: sub-cluster unused)
    sizes: np.ndarray          # int64 [1, num_clusters * heads_per_cluster]: rows per state
    inertia: np.ndarray        # float64 [1]: of the shared k-means


def clusters(emb, num_clusters: int, heads_per_cluster: int, initial_heads: int, niter: int = 50,
             nredo: int = 1, seed: int = 0, use_gpu: str = "auto", max_points_per_centroid: int | None = 256,
             gpu_id: int | None = None, chunk_rows: int = 8192) -> ClusterResult:
    """Two-level k-means for LVD-PG's progressive growing (method.md section 3).

    One k-means over all N*P rows into ``num_clusters`` clusters (``shared``), then a k-means of
    each cluster's rows into its ``initial_heads`` sub-clusters (seed + 1 + cluster). Row (n, i)
    gets state z = cluster * heads_per_cluster + sub-cluster: states cluster * H .. + H - 1 belong
    to one cluster, of which only the first ``initial_heads`` are used now; the others are the
    heads growing adds. A cluster with fewer rows than ``initial_heads`` puts them all in
    sub-cluster 0 (logged).
    """
    if not 1 <= initial_heads <= heads_per_cluster:
        raise ValueError(f"initial_heads={initial_heads} must be in [1, heads_per_cluster={heads_per_cluster}]")
    top = shared(emb, num_clusters, niter=niter, nredo=nredo, seed=seed, use_gpu=use_gpu,
                 max_points_per_centroid=max_points_per_centroid, gpu_id=gpu_id, chunk_rows=chunk_rows)
    n, p, d = emb.shape
    device = faiss_device(use_gpu, gpu_id)
    cluster = top.z.reshape(-1).astype(np.int64)                     # [N*P]
    order = np.argsort(cluster, kind="stable")
    bounds = np.searchsorted(cluster[order], np.arange(num_clusters + 1))
    rows_f32 = gather_rows(emb, None, chunk_rows)                    # [N*P, D]
    sub = np.zeros(n * p, dtype=np.int64)
    sub_centroids = np.full((num_clusters, initial_heads, d), np.nan, dtype=np.float32)
    for c in range(num_clusters):
        rows = order[bounds[c]:bounds[c + 1]]
        if len(rows) < initial_heads:
            log.warning("cluster %d has %d rows, fewer than initial_heads=%d: all in sub-cluster 0",
                        c, len(rows), initial_heads)
            if len(rows):
                sub_centroids[c, 0] = rows_f32[rows].mean(0)
            continue
        x = rows_f32[rows]
        pick = _sample_rows(len(x), initial_heads, max_points_per_centroid, seed + 1 + c)
        cents = train(x if pick is None else x[pick], initial_heads, niter, nredo, seed + 1 + c, device, None)
        sub[rows] = Assigner(cents, device)(x)
        sub_centroids[c] = cents
    z = (cluster * heads_per_cluster + sub).reshape(n, p).astype(np.int32)
    sizes = np.bincount(z.reshape(-1), minlength=num_clusters * heads_per_cluster).astype(np.int64)
    log.info("clusters: %d clusters x %d initial heads (of %d); smallest cluster %d rows", num_clusters,
             initial_heads, heads_per_cluster, int(np.diff(bounds).min()))
    return ClusterResult(z, top.centroids, sub_centroids, sizes[None], top.inertia)
