"""Shared fixtures of the PC engine tests; the brute-force references live in pc_bruteforce.py."""

from __future__ import annotations

import pytest
import torch

from lvd.pc import _fused, kernels
from pc_bruteforce import tree_circuit


@pytest.fixture(autouse=True)
def one_thread(request):
    """Tiny circuits run on one intra-op thread: on a shared 2-core machine two threads spend
    most of their time waiting for each other (measured: 0.2 s -> 1-10 s for a small EM run at
    load 8). The timing test (marked slow) keeps torch's default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def small_tree():
    """A 5-node tree (root 2, depth 3: 2 -> {0, 3}, 0 -> 1, 3 -> 4), 3 states, 3 values."""
    return tree_circuit([2, 0, -1, 2, 3], K=3, C=3, seed=1)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])]


@pytest.fixture(params=DEVICES)
def device(request):
    """The engine's device: every test taking it runs on the CPU and, marked ``gpu`` and
    skipped without CUDA, on CUDA (``pytest -m gpu`` runs the CUDA half alone)."""
    return torch.device(request.param)


@pytest.fixture(autouse=True, params=["fused", "torch"])
def engine_path(request, monkeypatch):
    """Every engine test runs twice on the CPU: with the fused CPU kernels (lvd.pc._fused, the
    default there) and on the torch path (what CUDA, float64 and installs without numba run).
    CUDA tests run once (the kernels are CPU-only). The fused variant forces the kernel mode
    ``compiled`` (fused kernels, and the compiled products wherever they serve the call), so
    the fast paths are tested whatever lvd.pc.kernels would measure here; the torch variant
    forces ``torch``."""
    if request.param == "torch":
        spec = getattr(request.node, "callspec", None)
        if spec is not None and str(spec.params.get("device", "cpu")).startswith("cuda"):
            pytest.skip("CUDA runs the torch path in the 'fused' variant already")
        monkeypatch.setattr(_fused, "ENABLED", False)
        mode = "torch"
    elif not _fused.ENABLED:
        pytest.skip("the fused CPU kernels are off (numba missing)")
    else:
        mode = "compiled"
    with kernels.forced(mode):
        yield request.param
