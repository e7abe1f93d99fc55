"""The engine on CUDA gives what it gives on the CPU (skipped without CUDA)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lvd import pc
from pc_bruteforce import as_t
from pc_bruteforce_lvd import make_lvd

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_small_circuits_give_the_same_lls_on_cuda_and_cpu():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 3, (64, 6))
    miss = torch.from_numpy(rng.random((64, 6)) < 0.3)
    for cpu in (pc.hclt(X, num_latents=4, num_cats=3, seed=0),
                pc.hmm(seq_len=6, num_latents=4, vocab_size=3, seed=0)):
        gpu = copy.deepcopy(cpu).to("cuda")
        want = cpu.log_likelihood(as_t(X), miss)
        got = gpu.log_likelihood(as_t(X).cuda(), miss.cuda())
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)
        fc, _ = pc.flows(cpu, {"x": as_t(X)})
        fg, _ = pc.flows(gpu, {"x": as_t(X).cuda()})
        for k in fc:
            torch.testing.assert_close(fg[k].cpu(), fc[k], atol=1e-4, rtol=1e-4)
    m = make_lvd("shared", seed=1)
    Xl = as_t(rng.integers(0, 3, (32, 4)))
    want = m.log_likelihood(Xl)
    got = copy.deepcopy(m).to("cuda").log_likelihood(Xl.cuda())
    torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)
