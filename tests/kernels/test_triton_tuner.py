"""The Triton tuner: a tile that does not fit is skipped, any other error (a CUDA fault) surfaces."""
from __future__ import annotations

import pytest
import torch
from triton.runtime.errors import OutOfResources

from kernels import reference, triton_gptq

K, N, BITS = 128, 40, 4
GOOD, BIG, FAULTY = (triton_gptq.Config(1, 32, 32), triton_gptq.Config(1, 256, 128),
                     triton_gptq.Config(1, 64, 64))


def _timer(fn) -> float:
    fn()       # what do_bench does first on a GPU: run the tile; its errors reach the tuner
    return 1.0


@pytest.fixture
def layer(gptq):
    t = gptq.make(K, N, BITS, -1, False, True)
    qweight, zeros, _ = triton_gptq.prepare(t["qweight"], t["qzeros"], t["g_idx"], BITS, K)
    x = torch.randn(1, K, generator=torch.Generator().manual_seed(0))
    ref = reference.gptq_matmul(x, t["qweight"], t["qzeros"], t["scales"], t["g_idx"], BITS)
    return x, qweight, zeros, t["scales"], ref


def _runner(layer, fail: dict):
    x, qweight, zeros, scales, _ = layer

    def run(cfg):
        if cfg in fail:
            raise fail[cfg]
        return triton_gptq._launch(cfg, x, qweight, scales, zeros, None, BITS, K, torch.float32)
    return run


def test_a_tile_that_does_not_fit_is_skipped(gptq, interpreter, layer):
    if not interpreter:
        return
    run = _runner(layer, {BIG: OutOfResources(131072, 101376, "shared memory")})
    assert triton_gptq.fastest([BIG, GOOD], run, "test", timer=_timer) == GOOD
    gptq.assert_close(run(GOOD), layer[-1], torch.float32)


def test_a_cuda_fault_is_raised_not_skipped(interpreter, layer):
    if not interpreter:
        return
    fault = RuntimeError("CUDA error: an illegal memory access was encountered")
    run = _runner(layer, {FAULTY: fault})
    with pytest.raises(RuntimeError, match="illegal memory access"):
        triton_gptq.fastest([GOOD, FAULTY], run, "test", timer=_timer)


def test_when_no_tile_fits_the_error_says_why(interpreter, layer):
    if not interpreter:
        return
    run = _runner(layer, {BIG: OutOfResources(131072, 101376, "shared memory"),
                          GOOD: OutOfResources(70000, 65536, "shared memory")})
    with pytest.raises(RuntimeError, match=r"none of the 2 Triton tiles fit for M=1.*OutOfResources.*131072"):
        triton_gptq.fastest([BIG, GOOD], run, "M=1, K=128", timer=_timer)
