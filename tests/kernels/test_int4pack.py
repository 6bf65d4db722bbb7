"""GPTQ 4-bit → PyTorch packed-int4 (CPU op for real, CUDA tinygemm on a GPU) against the reference."""
from __future__ import annotations

import pytest
import torch

from kernels import int4pack, reference

# (M, K, N, group_size, act_order, sym): N a multiple of 16 (the op's rule), K off 128 where allowed
CASES = [
    (1, 96, 48, -1, False, True),
    (1, 384, 64, 128, True, False),
    (3, 224, 80, 32, True, True),
    (16, 192, 48, 64, False, False),
    (77, 320, 32, -1, True, False),
    (77, 256, 112, 128, False, True),
]


def _check(gptq, case, dtype, device):
    M, K, N, group_size, act_order, sym = case
    t = gptq.make(K, N, 4, group_size, act_order, sym)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1)).to(dtype)
    ref = reference.gptq_matmul(x, t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 4, t["bias"])
    g = K if group_size == -1 else group_size
    t = {k: v.to(device) for k, v in t.items()}
    packed, scale_and_zeros, op_group, perm, unpackable = int4pack.convert(
        t["qweight"], t["qzeros"], t["scales"], t["g_idx"], g, 1, dtype)
    y = int4pack.int4pack_matmul(x.to(device), packed, scale_and_zeros, op_group, t["bias"].to(dtype), perm,
                                 unpackable)
    assert y.shape == (M, N) and y.dtype == dtype
    gptq.assert_close(y.cpu(), ref, dtype)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "M{}-K{}-N{}-g{}-act{}-sym{}".format(*c))
def test_cpu_bf16_matches_reference(gptq, case):
    _check(gptq, case, torch.bfloat16, "cpu")


def test_cpu_mapping_is_exact_in_fp32(gptq):
    # fp32 scale/zero keep zero_f = scale * (8 - z) exact: only summation order differs
    _check(gptq, (3, 256, 32, 64, True, False), torch.float32, "cpu")


# N with and without a last block of 16 rows; M on both sides of DENSE_MIN_ROWS
DENSE_CASES = [(int4pack.DENSE_MIN_ROWS, 256, 96, 64, True, False), (200, 128, 64, -1, True, True),
               (int4pack.DENSE_MIN_ROWS - 1, 128, 48, 32, False, True)]


@pytest.mark.parametrize("case", DENSE_CASES, ids=lambda c: "M{}-K{}-N{}-g{}-act{}-sym{}".format(*c))
def test_cpu_prompt_rows_dense_path_matches_reference(gptq, case, monkeypatch):
    # the packed layout is read back exactly on this build, so prompts can take the fp32 path (forced on here:
    # by default only a CPU without bf16 dot products takes it)
    monkeypatch.setattr(int4pack, "DENSE_PREFILL", True)
    M, K, N, group_size, act_order, sym = case
    t = gptq.make(K, N, 4, group_size, act_order, sym)
    result = int4pack.convert(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], K if group_size == -1 else group_size,
                              1, torch.bfloat16)
    assert result.unpackable
    _check(gptq, case, torch.bfloat16, "cpu")


def test_cpu_dense_path_agrees_with_the_op_slice_by_slice(gptq, monkeypatch):
    # slices smaller than the layer: each one's rows land in their own columns (N = 112: whole blocks and a last one)
    monkeypatch.setattr(int4pack, "DENSE_SLICE", 64 * 32)
    monkeypatch.setattr(int4pack, "DENSE_PREFILL", True)
    t = gptq.make(64, 112, 4, 32, True, False)
    packed, sz, group, perm, unpackable = int4pack.convert(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 32, 1,
                                                           torch.bfloat16)
    x = torch.randn(int4pack.DENSE_MIN_ROWS, 64, generator=torch.Generator().manual_seed(2)).bfloat16()
    dense = int4pack.int4pack_matmul(x, packed, sz, group, None, perm, unpackable=True).float()
    op = int4pack.int4pack_matmul(x, packed, sz, group, None, perm, unpackable=False).float()
    assert unpackable and dense.shape == (int4pack.DENSE_MIN_ROWS, 112)
    assert (dense - op).abs().max() <= 0.02 * op.abs().max()


def test_dense_prefill_only_on_a_cpu_without_bf16_dot_products(gptq, monkeypatch):
    # with avx512_bf16 the op is faster than the dense path at every size (bench/prefill.py): it is not taken
    t = gptq.make(64, 112, 4, 32, False, True)
    packed, sz, group, perm, unpackable = int4pack.convert(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 32, 1,
                                                           torch.bfloat16)
    x = torch.randn(int4pack.DENSE_MIN_ROWS, 64, generator=torch.Generator().manual_seed(3)).bfloat16()
    calls = []
    dense = int4pack._dense_cpu
    monkeypatch.setattr(int4pack, "_dense_cpu", lambda *a: calls.append(1) or dense(*a))
    for has_bf16_dot, taken in ((True, []), (False, [1])):
        monkeypatch.setattr(int4pack, "_cpu_has_bf16_dot", lambda: has_bf16_dot)
        calls.clear()
        int4pack.int4pack_matmul(x, packed, sz, group, None, perm, unpackable)
        assert unpackable and calls == taken and int4pack.dense_prefill() is not has_bf16_dot


def test_unpack_reads_the_cpu_layout_back():
    # every last-block size of both layouts (blocks of 64 rows with AVX-512, 32 with AVX2), whole and from a block on
    assert int4pack.cpu_block() in (64, 32)
    for N in (32, 48, 64, 80, 96, 112, 128, 176):
        q = torch.randint(0, 16, (N, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(N))
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        assert torch.equal(int4pack.unpack_cpu(packed, N, 64), q.to(torch.uint8))
        if N > 64:
            assert torch.equal(int4pack.unpack_cpu(packed, N, 64, 64, N), q[64:].to(torch.uint8))


def test_unpack_reads_both_layouts():
    # the layout this CPU does not produce, written as torch writes it there, is read back too
    q = torch.randint(0, 16, (112, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(7))
    for block in (64, 32):
        full = 112 - 112 % block
        rows = q[:full].view(-1, block, 64).transpose(1, 2)                    # [blocks, K, block]
        body = (rows[..., :block // 2] | (rows[..., block // 2:] << 4)).reshape(-1)
        tail = q[full:].t()                                                    # [K, rest]
        tail = (tail[:, ::2] | (tail[:, 1::2] << 4)).reshape(-1)
        flat = torch.cat([body, tail]).to(torch.uint8)
        assert torch.equal(int4pack._unpack_blocks(flat, 64, 0, 112, 112, block), q.to(torch.uint8))


def test_group_minus_one_repeats_one_scale():
    assert int4pack.pack_group_size(6144, 6144) == 256
    assert int4pack.pack_group_size(96, 96) == 32
    assert int4pack.pack_group_size(100, 100) is None
    assert int4pack.pack_group_size(6144, 16) is None
    assert "multiple of 16" in int4pack.unsupported_reason(256, 40, 128, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES[1:] + [(1, 6144, 6400, -1, True, True), (512, 6144, 6144, 128, True, False)],
                         ids=lambda c: "M{}-K{}-N{}-g{}-act{}-sym{}".format(*c))
def test_tinygemm_matches_reference(gptq, case):
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("tinygemm needs compute capability 8.0+")
    _check(gptq, case, torch.bfloat16, "cuda")
