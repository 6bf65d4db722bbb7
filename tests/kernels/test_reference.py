"""The torch reference: bit packing against AutoGPTQ's own loop, and the matmul against a dense weight."""
import pytest
import torch

from kernels import reference
from tests.helpers.checkpoints import autogptq_pack_rows, quantize_layer


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip(bits):
    gen = torch.Generator().manual_seed(bits)
    values = torch.randint(0, 2 ** bits, (96, 7), generator=gen)
    packed = reference.pack(values, bits)
    assert packed.dtype == torch.int32 and packed.shape == (96 * bits // 32, 7)
    assert torch.equal(reference.unpack(packed, bits, 96), values.int())
    columns = reference.pack(values.T.contiguous(), bits, dim=1)
    assert torch.equal(reference.unpack(columns, bits, 96, dim=1), values.T.int())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_matches_autogptq_loop(bits):
    values = torch.randint(0, 2 ** bits, (64, 5), generator=torch.Generator().manual_seed(0))
    expected = torch.from_numpy(autogptq_pack_rows(values.numpy(), bits))
    assert torch.equal(reference.pack(values, bits), expected)


def test_sym_4bit_zero_word_is_0x77777777():
    packed = reference.pack(torch.full((1, 8), 7), 4, dim=1)
    assert packed.item() & 0xFFFFFFFF == 0x77777777


def test_pack_rejects_out_of_range_values_and_partial_words():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        reference.pack(torch.tensor([[16]] * 8), 4)
    with pytest.raises(ValueError, match="whole 32-bit words"):
        reference.pack(torch.zeros(12, 1, dtype=torch.int64), 4)


@pytest.mark.parametrize("m", [1, 7, 128])
@pytest.mark.parametrize("bits,group_size,desc_act,sym,fmt", [
    (4, -1, True, True, "gptq"), (4, 32, True, False, "gptq"), (4, 128, False, True, "gptq_v2"),
    (3, 32, False, False, "gptq"), (2, 32, True, True, "gptq_v2"), (8, -1, False, False, "gptq"),
])
def test_reference_matmul_matches_dense_weight(m, bits, group_size, desc_act, sym, fmt):
    k, n = 256, 96   # N·bits must fill whole words for the zero points
    gen = torch.Generator().manual_seed(m)
    tensors, weight = quantize_layer(k, n, bits, group_size, desc_act, sym, fmt, gen)   # weight: [N, K]
    x = torch.randn(m, k, generator=gen)
    bias = torch.randn(n, generator=gen)
    y = reference.gptq_matmul(x, tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors["g_idx"],
                              bits, bias, zero_offset=1 if fmt == "gptq" else 0)
    torch.testing.assert_close(y, x @ weight.T + bias, rtol=1e-5, atol=1e-5)


def test_reference_keeps_activation_dtype_and_leading_dims():
    tensors, weight = quantize_layer(64, 16, 4, -1, False, True, "gptq", torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 64).to(torch.bfloat16)
    y = reference.gptq_matmul(x, tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors["g_idx"], 4)
    assert y.shape == (2, 3, 16) and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), x.float() @ weight.T, rtol=2e-2, atol=2e-2)


def test_v1_zero_point_of_zero_reads_back_as_zero():
    # AutoGPTQ's packer ORs a zero of 0 in as -1 (all ones): nibble 15, read modulo 16 as 0
    stored = torch.tensor([[15, 7, 6, 15, 0, 1, 2, 3]])
    qzeros = reference.pack(stored, 4, dim=1)
    zeros = reference.unpack_zeros(qzeros, 4, 8, zero_offset=1)
    assert zeros.tolist() == [[0, 8, 7, 0, 1, 2, 3, 4]]
    assert reference.unpack_zeros(qzeros, 4, 8, zero_offset=0).tolist() == stored.tolist()
