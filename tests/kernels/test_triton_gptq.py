"""Triton GPTQ kernels against the torch reference: the interpreter on CPU, the real thing on a GPU."""
from __future__ import annotations

import pytest
import torch

from kernels import reference, triton_gptq

# (M, K, N, bits, group_size, act_order, sym): K and N off the block sizes, partial last groups,
# every bit width, decode (M <= 16) and prefill (M = 77) tiles, split-K and not
CASES = [
    (1, 200, 72, 4, -1, False, True),
    (1, 256, 80, 4, 32, True, False),
    (1, 320, 40, 8, 128, False, False),
    (1, 128, 48, 2, 32, True, True),
    (3, 320, 72, 4, 128, True, False),
    (3, 192, 36, 8, -1, False, True),
    (16, 256, 96, 2, 64, False, False),
    (16, 224, 72, 4, 32, False, True),
    (77, 160, 56, 4, -1, True, True),
    (77, 256, 72, 4, 128, True, False),
    (77, 96, 36, 8, 32, True, False),
]


def _run(gptq, case, dtype, device, zero_offset=1):
    M, K, N, bits, group_size, act_order, sym = case
    t = gptq.make(K, N, bits, group_size, act_order, sym, zero_offset=zero_offset)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1)).to(dtype)
    ref = reference.gptq_matmul(x, t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits, t["bias"],
                                zero_offset)
    g = K if group_size == -1 else group_size
    t = {k: v.to(device) for k, v in t.items()}
    qweight, zeros, perm = triton_gptq.prepare(t["qweight"], t["qzeros"], t["g_idx"], bits, g, zero_offset)
    y = triton_gptq.gptq_matmul(x.to(device), qweight, zeros, t["scales"], bits, g, t["bias"], perm)
    assert y.dtype == dtype and y.shape == (M, N)
    gptq.assert_close(y.cpu(), ref, dtype)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "M{}-K{}-N{}-b{}-g{}-act{}-sym{}".format(*c))
def test_interpreter_matches_reference(gptq, interpreter, case):
    if not interpreter:
        return
    _run(gptq, case, torch.float32, "cpu")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_interpreter_half_inputs(gptq, interpreter, dtype):
    if not interpreter:
        return
    # half inputs are computed in fp32 under the interpreter and returned in their own dtype
    _run(gptq, (3, 128, 40, 4, 32, True, False), dtype, "cpu")


def test_interpreter_gptq_v2_zeros(gptq, interpreter):
    if not interpreter:
        return
    _run(gptq, (1, 128, 40, 4, 64, False, False), torch.float32, "cpu", zero_offset=0)


def test_leading_dims_and_tuned_cache(gptq, interpreter):
    if not interpreter:
        return
    t = gptq.make(64, 32, 4, -1, False, True)
    qweight, zeros, perm = triton_gptq.prepare(t["qweight"], t["qzeros"], t["g_idx"], 4, 64)
    x = torch.randn(2, 1, 64)
    y = triton_gptq.gptq_matmul(x, qweight, zeros, t["scales"], 4, 64, None, perm)
    ref = reference.gptq_matmul(x, t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 4)
    gptq.assert_close(y, ref, torch.float32)
    assert any(key[1:3] == (64, 32) for key in triton_gptq.tuned_configs())


def test_prepare_rejects_irregular_groups(gptq):
    t = gptq.make(64, 32, 4, 32, False, True)
    g_idx = t["g_idx"].clone()
    g_idx[:40] = 0     # 40 rows in group 0: not a GPTQ pattern
    g_idx[40:] = 1
    with pytest.raises(ValueError, match="group pattern"):
        triton_gptq.prepare(t["qweight"], t["qzeros"], g_idx, 4, 32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES + [(1, 6144, 6400, 4, -1, True, True),
                                  (512, 6144, 6144, 4, 128, True, False)], ids=lambda c: "M{}-K{}-N{}-b{}-g{}-act{}-sym{}".format(*c))
def test_gpu_matches_reference(gptq, case, dtype):
    _run(gptq, case, dtype, "cuda")
