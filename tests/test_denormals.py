"""Denormal floats flushed to zero (lvd.runtime.configure_process, ``flush_denormals``): the flag
reaches torch's and numba's worker threads, ``LVD_NO_FTZ=1`` keeps denormals, and the engine's
float32 passes (the torch path and the fused kernels, forced with LVD_KERNELS) on tables that
make denormals agree with float64 with the flag and without. Each case runs in a fresh process:
the flag is per thread and inherited by the threads a thread starts (so these tests sit outside
tests/pc, whose fixture runs every test on both paths in this process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from lvd.runtime import configure_process
done = configure_process()
import numpy as np, torch, numba
torch.set_num_threads(2)
x = torch.full((1 << 20,), 1e-30)
y = x * 1e-10                                   # 1e-40: a denormal, or 0 when flushed
@numba.njit(parallel=True)
def mul(a, s):
    out = np.empty_like(a)
    for i in numba.prange(a.size):
        out[i] = a[i] * s
    return out
z = mul(np.full(1 << 20, np.float32(1e-30)), np.float32(1e-10))
print(json.dumps({"done": done, "torch_nonzero": int((y != 0).sum()), "numba_nonzero": int((z != 0).sum())}))
"""


def _probe(extra_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LVD_NO_FTZ"} | extra_env
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_configure_process_flushes_denormals_in_every_thread():
    on = _probe({})
    assert on["done"]["flush_denormal"] is True
    assert on["torch_nonzero"] == 0 and on["numba_nonzero"] == 0      # main and worker threads
    off = _probe({"LVD_NO_FTZ": "1"})
    assert off["done"]["flush_denormal"] is False
    assert off["torch_nonzero"] == 1 << 20 and off["numba_nonzero"] == 1 << 20


ENGINE = """
import json, os, sys
from lvd.runtime import configure_process
configure_process()
import numpy as np, torch
from lvd import pc
torch.set_num_threads(2)
rng = np.random.default_rng(0)
data = torch.from_numpy(rng.integers(0, 16, size=(600, 12)))
c = pc.hclt(data, num_latents=8, num_cats=16, seed=0)
c64 = pc.hclt(data, num_latents=8, num_cats=16, seed=0)
for k, t in c.params.items():                   # log-uniform entries in [1e-24, 1], normalized;
    e = torch.from_numpy(10.0 ** rng.uniform(-24, 0, size=tuple(t.shape)))
    if k == "edges" and os.environ.get("PRUNE"):  # half the edge entries pruned (0), each row's largest kept
        keep = e >= e.amax(-1, keepdim=True)
        e = torch.where(keep | torch.from_numpy(rng.random(tuple(t.shape)) < 0.5), e, torch.zeros(()))
    e = e / e.sum(-1, keepdim=True)
    c.params[k], c64.params[k] = e.float(), e
ll32, ll64 = c.log_likelihood(data[:256]), c64.log_likelihood(data[:256])
pc.em(c, data, epochs=1, batch_size=200, step_size=0.5, pseudocount=0.1)
pc.em(c64, data, epochs=1, batch_size=200, step_size=0.5, pseudocount=0.1)
diff = max(float((c.params[k].double() - c64.params[k]).abs().max()) for k in c.params)
print(json.dumps({"finite": bool(torch.isfinite(ll32).all()), "ll_diff": float((ll32.double() - ll64).abs().max()),
                  "ll_scale": float(ll64.abs().max()), "param_diff": diff,
                  "finite_params": all(bool(torch.isfinite(v).all()) for v in c.params.values())}))
"""


def _engine(flush: bool, path: str, prune: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LVD_NO_FTZ", "LVD_KERNELS", "PRUNE")}
    env |= {"LVD_KERNELS": path} | ({} if flush else {"LVD_NO_FTZ": "1"}) | ({"PRUNE": "1"} if prune else {})
    r = subprocess.run([sys.executable, "-c", ENGINE], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", ["torch", "compiled"])
@pytest.mark.parametrize("flush", [True, False])
def test_float32_passes_on_denormal_making_tables_agree_with_float64(flush, path):
    """Tables with entries down to 1e-24 make denormal products in float32; with denormals
    flushed (and without) the lls and one EM epoch agree with float64 to rounding."""
    got = _engine(flush, path, prune=False)
    assert got["finite"] and got["finite_params"]
    assert got["ll_diff"] <= 1e-5 * max(got["ll_scale"], 1.0)
    assert got["param_diff"] <= 1e-4


@pytest.mark.parametrize("path", ["torch", "compiled"])
def test_pruned_tables_with_denormals_flushed_stay_finite(path):
    """Pruned (zero) edge entries besides entries down to 1e-24: a message can then be a sum of
    denormal products only, which the flag flushes to 0; kernels.U_FLOOR keeps every message
    normal, so the backward's r = a / M never divides 0 by 0 (without it the torch path's EM
    made NaN here). The torch path also agrees with float64; the fused path's lls differ from it
    by several nats on these tables with the flag or without (docs/engine_tests.md)."""
    got = _engine(True, path, prune=True)
    assert got["finite"] and got["finite_params"]
    if path == "torch":
        assert got["ll_diff"] <= 1e-5 * max(got["ll_scale"], 1.0)
        assert got["param_diff"] <= 1e-4
