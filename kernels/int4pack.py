"""Exact conversion of GPTQ 4-bit layers to PyTorch's packed-int4 matmuls (CPU and CUDA tinygemm)."""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from kernels import reference

GROUP_SIZES = (32, 64, 128, 256)
# tinygemm packs k in tiles of 16 with 2/4/8 tiles back to back; 8 gives 16-byte loads
CUDA_INNER_K_TILES = (8, 4, 2)
# CPU without bf16 dot-product instructions: from this many rows (a prompt's tokens) a layer is dequantized a
# slice at a time and multiplied in fp32, which such a CPU runs near its peak, where the packed-int4 op
# reaches a third to a half of it; dequantizing costs about as much as 100-250 rows of the op, so below
# this the op wins. With avx512_bf16 the op is the faster at every size (both measured side by side:
# bench/prefill.py), so there the path stays off (`dense_prefill`).
DENSE_MIN_ROWS = 256
DENSE_SLICE = 1 << 22          # weights dequantized at a time (16 MB in fp32), so a big layer needs no big buffer
DENSE_PREFILL: bool | None = None       # None: decided by the CPU (`dense_prefill`); benchmarks and tests force it


@functools.cache
def _cpu_has_bf16_dot() -> bool:
    cpu = torch.cpu
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported",
                                                                        "_is_amx_tile_supported"))


def dense_prefill() -> bool:
    """Whether prompts of DENSE_MIN_ROWS rows or more take the dense fp32 path on this CPU."""
    return (not _cpu_has_bf16_dot()) if DENSE_PREFILL is None else DENSE_PREFILL


def pack_group_size(in_features: int, group_size: int) -> int | None:
    """The op's group size for a GPTQ layer, or None when it cannot be expressed.

    Group -1 (one group over K) becomes the largest supported size dividing K, its scale repeated.
    """
    if group_size >= in_features:
        return next((g for g in reversed(GROUP_SIZES) if in_features % g == 0), None)
    if group_size in GROUP_SIZES and in_features % group_size == 0:
        return group_size
    return None


def unsupported_reason(in_features: int, out_features: int, group_size: int, device_type: str) -> str | None:
    """Why this layer shape cannot use the packed-int4 op on `device_type`, or None."""
    if pack_group_size(in_features, group_size) is None:
        return (f"group size {group_size} with in_features {in_features} (needs a group of "
                f"{'/'.join(map(str, GROUP_SIZES))} dividing in_features)")
    if device_type == "cpu" and out_features % 16:
        return f"out_features {out_features} (the CPU int4 op needs a multiple of 16)"
    if device_type == "cuda":
        if out_features % 8:
            return f"out_features {out_features} (tinygemm needs a multiple of 8)"
        if in_features % (16 * CUDA_INNER_K_TILES[-1]):
            return f"in_features {in_features} (tinygemm needs a multiple of 32)"
    return None


def _nibbles_nk(qweight: torch.Tensor) -> torch.Tensor:
    """4-bit qweight [K/8, N] → the values as int32 [N, K] (the layout both int4 ops start from).

    Works on bytes: each little-endian word's byte j holds rows 2j (low nibble) and 2j+1 (high),
    so two uint8 ops replace eight int32 shifts (2x faster at load; same values as reference.unpack).
    """
    N = qweight.shape[1]
    b = qweight.t().contiguous().view(torch.uint8)                              # [N, K/2]
    return torch.stack([b & 15, b >> 4], dim=-1).reshape(N, -1).to(torch.int32)


class Packed(NamedTuple):
    packed: torch.Tensor                  # the op's layout
    scale_and_zeros: torch.Tensor         # [G', N, 2] in the activations' dtype
    op_group: int
    perm: torch.Tensor | None             # [K] int32: x's columns in the packed order (act-order), or None
    unpackable: bool                      # CPU: `unpack_cpu` reads `packed` back exactly (the dense path may run)


def _unpack_blocks(flat: torch.Tensor, K: int, start: int, stop: int, N: int, block: int) -> torch.Tensor:
    full = min(stop, N - N % block)
    parts = []
    if start < full:
        b = flat[start * K // 2:full * K // 2].view(-1, K, block // 2)
        parts.append(torch.cat([b & 15, b >> 4], dim=2).transpose(1, 2).reshape(-1, K))
    if stop > full:
        b = flat[full * K // 2:stop * K // 2].view(K, -1)
        parts.append(torch.stack([b & 15, b >> 4], dim=2).reshape(K, -1).t())
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@functools.cache
def cpu_block() -> int | None:
    """The row block of the CPU op's packed layout on this build and CPU (64 or 32), or None if neither.

    The layout is the op's private one, as torch 2.13 writes it: blocks of `block` rows as [K, block/2]
    bytes, row j in the low nibble and row j + block/2 in the high one; a last, shorter block as
    [K, rows/2] bytes, even rows low and odd rows high. The block is 64 where torch dispatches to its
    AVX-512 kernels and 32 with AVX2; found once by packing a probe and reading it back.
    """
    q = torch.randint(0, 16, (80, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1).view(torch.uint8).reshape(-1)
    for block in (64, 32):
        try:
            if torch.equal(_unpack_blocks(packed, 64, 0, 80, 80, block), q.to(torch.uint8)):
                return block
        except RuntimeError:      # a layout of another size
            continue
    return None


def unpack_cpu(packed: torch.Tensor, N: int, K: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Rows start:stop (multiples of 64, or N) of the CPU op's packed weight as uint8 values [rows, K].

    The layout is `cpu_block`'s; `convert` also checks each layer shape against its weights at load (once
    per shape), so a build or CPU that packs differently only loses the dense path.
    """
    block = cpu_block()
    if block is None:
        raise RuntimeError("this torch build's packed-int4 CPU layout is not one unpack_cpu reads")
    return _unpack_blocks(packed.view(torch.uint8).reshape(-1), K, start, N if stop is None else stop, N, block)


_LAYOUTS: dict[tuple[int, int], bool] = {}


def _layout_read_back(N: int, K: int, packed: torch.Tensor, q_nk: torch.Tensor) -> bool:
    """Whether unpack_cpu reads this layer back exactly; checked once per shape (the layout depends on
    the shape and the build, not the values), so a 15B model's load does not unpack every layer."""
    if (N, K) not in _LAYOUTS:
        try:
            _LAYOUTS[N, K] = torch.equal(unpack_cpu(packed, N, K), q_nk.to(torch.uint8))
        except RuntimeError:      # a layout unpack_cpu does not read
            _LAYOUTS[N, K] = False
    return _LAYOUTS[N, K]


def convert(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
            group_size: int, zero_offset: int, dtype: torch.dtype) -> Packed:
    """GPTQ 4-bit → the op's packed weight, scale_and_zeros [G', N, 2] in `dtype`, op group size, perm.

    The op computes w = (q - 8) * scale + zero_f; GPTQ's w = scale * (q - z), so zero_f = scale * (8 - z).
    With act-order the rows are sorted by group here and `perm` must gather x's columns at run time.
    """
    K, N = g_idx.shape[0], qweight.shape[1]
    op_group = pack_group_size(K, group_size)
    reason = unsupported_reason(K, N, group_size, qweight.device.type)
    if reason is not None or op_group is None:
        raise ValueError(f"packed int4 cannot represent this layer: {reason}")
    q_nk = _nibbles_nk(qweight)                                               # [N, K]
    z = reference.unpack_zeros(qzeros, 4, N, zero_offset).to(torch.float32)   # [G, N]
    g = g_idx.long()
    perm = None
    if bool((g[1:] < g[:-1]).any()):
        perm = torch.argsort(g, stable=True)
        q_nk, g = q_nk.index_select(1, perm), g[perm]
    if not torch.equal(g, torch.arange(K, device=g.device) // group_size):
        raise ValueError("g_idx is not a GPTQ group pattern; use the torch kernel")
    s = scales.to(torch.float32)
    if group_size >= K:
        s = s.expand(K // op_group, N)
        z = z.expand(K // op_group, N)
    zero_f = s * (8 - z)
    scale_and_zeros = torch.stack([s, zero_f], dim=-1).to(dtype).contiguous()   # [G', N, 2]
    if qweight.device.type == "cuda":
        # tinygemm takes two k values per byte, the even one in the high nibble
        q_u8 = ((q_nk[:, ::2] << 4) | q_nk[:, 1::2]).to(torch.uint8)
        tiles = next(t for t in CUDA_INNER_K_TILES if K % (16 * t) == 0)
        packed = torch.ops.aten._convert_weight_to_int4pack(q_u8.contiguous(), tiles)
        unpackable = False
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q_nk.to(torch.int32), 1)
        unpackable = _layout_read_back(N, K, packed, q_nk)
    return Packed(packed, scale_and_zeros, op_group, perm.to(torch.int32) if perm is not None else None, unpackable)


def dequantize_cpu(packed: torch.Tensor, scale_and_zeros: torch.Tensor, op_group: int, K: int,
                   start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Rows start:stop of W (the op's packed order along K) in fp32 [rows, K]; rows as unpack_cpu takes them."""
    N = scale_and_zeros.shape[1]
    stop = N if stop is None else stop
    q = unpack_cpu(packed, N, K, start, stop).view(stop - start, K // op_group, op_group)
    sz = scale_and_zeros[:, start:stop].float().transpose(0, 1).unsqueeze(2)           # [rows, G', 1, 2]
    # w = (q - 8) * scale + zero = q * scale + (zero - 8 * scale): one fused pass over the fp32 weights
    w = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    torch.addcmul(sz[..., 1] - 8 * sz[..., 0], q.float(), sz[..., 0], out=w)
    return w.view(stop - start, K)


def _dense_cpu(x2: torch.Tensor, packed: torch.Tensor, scale_and_zeros: torch.Tensor, op_group: int) -> torch.Tensor:
    """x2 [M, K] @ W.T in fp32 from W dequantized a slice of rows at a time -> [M, N] fp32."""
    M, K = x2.shape
    N = scale_and_zeros.shape[1]
    xf = x2.float()
    step = max(64, DENSE_SLICE // K // 64 * 64)      # whole blocks of either layout
    if N <= step:
        return xf @ dequantize_cpu(packed, scale_and_zeros, op_group, K).t()
    out = torch.empty(M, N, dtype=torch.float32, device=x2.device)
    for start in range(0, N, step):
        stop = min(N, start + step)
        out[:, start:stop] = xf @ dequantize_cpu(packed, scale_and_zeros, op_group, K, start, stop).t()
    return out


def int4pack_matmul(x: torch.Tensor, packed: torch.Tensor, scale_and_zeros: torch.Tensor,
                    op_group: int, bias: torch.Tensor | None = None,
                    perm: torch.Tensor | None = None, unpackable: bool = False) -> torch.Tensor:
    """y = x @ W + bias with W from `convert`; x: [..., K] in scale_and_zeros' dtype -> [..., N].

    On a CPU without bf16 dot products (`dense_prefill`), `unpackable` layers multiply DENSE_MIN_ROWS rows or
    more (a prompt) in fp32 from dequantized slices.
    """
    K = x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)                                                       # [M, K]
    if perm is not None:
        x2 = x2.index_select(1, perm)
    x2 = x2.contiguous()
    if x2.device.type == "cuda":
        y = torch.ops.aten._weight_int4pack_mm(x2, packed, op_group, scale_and_zeros)
    elif unpackable and x2.shape[0] >= DENSE_MIN_ROWS and dense_prefill():
        y = _dense_cpu(x2, packed, scale_and_zeros, op_group).to(x.dtype)
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, op_group, scale_and_zeros)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, y.shape[-1])
