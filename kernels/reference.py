"""The torch reference for GPTQ: bit packing, dequantization and the matmul (the ground truth)."""
from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 3, 4, 8)
_MASK32 = 0xFFFFFFFF


def _stream_positions(count: int, bits: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    # AutoGPTQ packs every bit width as one little-endian bit stream: value j occupies stream bits
    # [bits*j, bits*j + bits). For 2/4/8 bits no value crosses a word; for 3 bits some do.
    start = torch.arange(count, device=device, dtype=torch.int64) * bits
    return start // 32, start % 32


def packed_length(count: int, bits: int) -> int:
    """Number of int32 words holding `count` values of `bits` bits."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits} is not supported; use one of {SUPPORTED_BITS}")
    if (count * bits) % 32:
        raise ValueError(f"{count} values of {bits} bits do not fill whole 32-bit words")
    return count * bits // 32


def pack(values: torch.Tensor, bits: int, dim: int = 0) -> torch.Tensor:
    """Pack unsigned integers (< 2**bits) along `dim` into int32 words, AutoGPTQ's layout."""
    values = values.movedim(dim, 0).to(torch.int64)
    count = values.shape[0]
    words = torch.zeros((packed_length(count, bits),) + values.shape[1:], dtype=torch.int64,
                        device=values.device)
    mask = (1 << bits) - 1
    if int(values.min()) < 0 or int(values.max()) > mask:
        raise ValueError(f"values must lie in [0, {mask}] for {bits}-bit packing")
    word, offset = _stream_positions(count, bits, values.device)
    view = [-1] + [1] * (values.dim() - 1)
    words.index_add_(0, word, (values << offset.view(view)) & _MASK32)
    spill = offset + bits > 32
    if spill.any():
        idx = spill.nonzero().squeeze(1)
        high = values[idx] >> (32 - offset[idx]).view(view)
        words.index_add_(0, word[idx] + 1, high)
    # int32 words hold uint32 bit patterns
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32).movedim(0, dim).contiguous()


def unpack(words: torch.Tensor, bits: int, count: int, dim: int = 0) -> torch.Tensor:
    """Inverse of `pack`: `count` unsigned values of `bits` bits along `dim`, as int32."""
    if words.movedim(dim, 0).shape[0] != packed_length(count, bits):
        raise ValueError(f"expected {packed_length(count, bits)} packed words along dim {dim} for "
                         f"{count} values of {bits} bits, got {words.movedim(dim, 0).shape[0]}")
    mask = (1 << bits) - 1
    if 32 % bits == 0:
        # no value crosses a word: shift every word by each slot at once (5x faster than gathering);
        # an arithmetic shift of a negative int32 only fills bits that the mask drops
        per = 32 // bits
        shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=words.device)
        if dim in (-1, words.dim() - 1):
            w = words.to(torch.int32)                                            # [..., W]
            values = (w.unsqueeze(-1) >> shifts) & mask                          # [..., W, per]
            return values.reshape(*w.shape[:-1], w.shape[-1] * per)
        w = words.movedim(dim, 0).to(torch.int32)                                # [W, ...]
        values = (w.unsqueeze(1) >> shifts.view(-1, *[1] * (w.dim() - 1))) & mask   # [W, per, ...]
        return values.reshape(w.shape[0] * per, *w.shape[1:]).movedim(0, dim).contiguous()
    words = words.movedim(dim, 0).to(torch.int64) & _MASK32
    word, offset = _stream_positions(count, bits, words.device)
    view = [-1] + [1] * (words.dim() - 1)
    values = words[word] >> offset.view(view)
    # no data-dependent `if spill.any()`: torch.compile traces this path without a graph break
    spill = offset + bits > 32
    nxt = torch.where(spill, word + 1, word)
    values = values | torch.where(spill.view(view), words[nxt] << (32 - offset).view(view), 0)
    return (values & mask).to(torch.int32).movedim(0, dim).contiguous()


def unpack_zeros(qzeros: torch.Tensor, bits: int, out_features: int, zero_offset: int) -> torch.Tensor:
    # gptq (v1) stores zero - 1; gptq_v2 stores the zero itself (zero_offset 1 or 0). AutoGPTQ's v1
    # packer ORs a zero of 0 in as -1, filling its nibble with ones; reading modulo 2**bits gives that
    # zero back as 0, as AutoGPTQ's torch path and GPTQModel's v1→v2 conversion do.
    return (unpack(qzeros, bits, out_features, dim=1) + zero_offset) & ((1 << bits) - 1)


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
               bits: int, zero_offset: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W[k, n] = scales[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n]); returns W: [K, N]."""
    in_features = g_idx.shape[0]
    out_features = scales.shape[1]
    q = unpack(qweight, bits, in_features, dim=0)                     # [K, N]
    z = unpack_zeros(qzeros, bits, out_features, zero_offset)         # [G, N]
    g = g_idx.long()
    w = (q - z[g]).to(torch.float32) * scales[g].to(torch.float32)
    return w.to(dtype)


def gptq_matmul(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                g_idx: torch.Tensor, bits: int, bias: torch.Tensor | None = None,
                zero_offset: int = 1) -> torch.Tensor:
    """y = x @ dequantize(...) + bias, computed in fp32 and returned in x's dtype. x: [..., K]."""
    w = dequantize(qweight, qzeros, scales, g_idx, bits, zero_offset)
    y = x.to(torch.float32) @ w
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


def default_g_idx(in_features: int, group_size: int, device=None) -> torch.Tensor:
    """g_idx of a checkpoint without act-order: row k belongs to group k // group_size."""
    g = in_features if group_size == -1 else group_size
    return torch.arange(in_features, dtype=torch.int32, device=device) // g
