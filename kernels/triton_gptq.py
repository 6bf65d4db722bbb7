"""Triton GPTQ matmul: a split-K GEMV for decode, a tiled tl.dot GEMM for prefill, and their tuner."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from typing import Callable

import torch
import triton
import triton.language as tl

from kernels import reference

SUPPORTED_BITS = (2, 4, 8)
DECODE_MAX_M = 16


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _gemv_kernel(x_ptr, qw_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr,
                 N, K, group_size, k_per_split,
                 BITS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 ATOMIC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # One row of x. Each program owns BLOCK_N columns and one K slice; a K tile never straddles a
    # group, so y += s * (sum_k x*q - z * sum_k x): the inner loop is shift, mask, convert, FMA.
    PACK: tl.constexpr = 32 // BITS
    BLOCK_KW: tl.constexpr = BLOCK_K // PACK
    MASK: tl.constexpr = (1 << BITS) - 1
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_kw = tl.arange(0, BLOCK_KW)
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        kw = k0 // PACK + offs_kw
        kw_mask = kw < K // PACK
        words = tl.load(qw_ptr + kw[:, None] * N + offs_n[None, :],
                        mask=kw_mask[:, None] & n_mask[None, :], other=0)       # [BLOCK_KW, BLOCK_N]
        dot = tl.zeros([BLOCK_KW, BLOCK_N], dtype=tl.float32)
        xsum = tl.zeros([BLOCK_KW], dtype=tl.float32)
        for j in tl.static_range(PACK):
            xj = tl.load(x_ptr + kw * PACK + j, mask=kw_mask, other=0.0).to(tl.float32)
            qj = ((words >> (j * BITS)) & MASK).to(tl.float32)
            dot += xj[:, None] * qj
            xsum += xj
        g = k0 // group_size
        s = tl.load(scales_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        z = tl.load(zeros_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.float32)
        acc += s * (tl.sum(dot, axis=0) - z * tl.sum(xsum, axis=0))
    if ATOMIC:
        tl.atomic_add(out_ptr + offs_n, acc, mask=n_mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs_n, acc.to(out_ptr.dtype.element_ty), mask=n_mask)


def _gemm_kernel(x_ptr, qw_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr,
                 M, N, K, group_size, k_per_split, stride_xm, stride_om,
                 BITS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # Tiles of x: [BLOCK_M, BLOCK_K] times a weight tile dequantized in registers to x's dtype;
    # one scale/zero row per tile because a K tile never straddles a group.
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    # grouped launch order keeps a band of x rows hot in L2 while sweeping N
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_rows
    pid_n = (pid % width) // group_rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_kw = tl.arange(0, BLOCK_K // PACK)
    shifts = tl.arange(0, PACK) * BITS
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)         # [BLOCK_M, BLOCK_K]
        kw = k0 // PACK + offs_kw
        words = tl.load(qw_ptr + kw[:, None] * N + offs_n[None, :],
                        mask=(kw < K // PACK)[:, None] & n_mask[None, :], other=0)   # [BLOCK_KW, BLOCK_N]
        g = k0 // group_size
        s = tl.load(scales_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        z = tl.load(zeros_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.float32)
        # each word is loaded once and unpacked in registers; row kw*PACK + j is its j-th field
        q = (words[:, None, :] >> shifts[None, :, None]) & MASK                      # [BLOCK_KW, PACK, BLOCK_N]
        q = tl.reshape(q, (BLOCK_K, BLOCK_N)).to(tl.float32)
        w = ((q - z[None, :]) * s[None, :]).to(x.dtype)
        acc = tl.dot(x, w, acc)
    out_offs = offs_m[:, None] * stride_om + offs_n[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if ATOMIC:
        tl.atomic_add(out_ptr + out_offs, acc, mask=out_mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@functools.cache
def _jitted(fn: Callable, interpret: bool):
    # Decorating at first use (not import) lets the interpreter flag be set after this module is
    # imported, e.g. by a test fixture; triton.jit reads TRITON_INTERPRET when it decorates.
    return triton.jit(fn)


@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    group_m: int = 8


_CHOSEN: dict[tuple, Config] = {}


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _split_for(programs: int, k_tiles: int, sms: int, waves: int = 2) -> int:
    # enough programs over N x K to fill every SM `waves` times, never more K slices than K tiles
    return max(1, min(k_tiles, -(-waves * sms // max(programs, 1))))


def _block_k_ok(block_k: int, group_size: int, K: int, bits: int) -> bool:
    # a K tile must sit inside one group (or there is one group) and hold whole packed words
    return block_k % (32 // bits) == 0 and (group_size >= K or group_size % block_k == 0)


def _candidates(M: int, K: int, N: int, bits: int, group_size: int, device: torch.device) -> list[Config]:
    sms = _sm_count(device)
    if interpreting():
        block_k = next(b for b in (64, 32, 16) if _block_k_ok(b, group_size, K, bits))
        tiles = -(-K // block_k)
        split = 2 if tiles >= 4 and M <= DECODE_MAX_M else 1
        block_m = 1 if M == 1 else (16 if M <= DECODE_MAX_M else 32)
        return [Config(block_m, 32 if M == 1 else 64, block_k, split)]
    if M == 1:
        shapes = [(64, 64), (128, 64), (128, 128), (256, 64), (64, 128), (256, 128), (128, 32), (64, 32)]
        out = []
        for bn, bk in shapes:
            if not _block_k_ok(bk, group_size, K, bits):
                continue
            split = _split_for(-(-N // bn), -(-K // bk), sms)
            out += [Config(1, bn, bk, split), Config(1, bn, bk, min(2 * split, -(-K // bk)))]
        return out[:12]
    if M <= DECODE_MAX_M:
        shapes = [(64, 64), (128, 64), (64, 128), (128, 128), (64, 32), (128, 32)]
        return [Config(16, bn, bk, _split_for(-(-N // bn), -(-K // bk), sms), 4, 3)
                for bn, bk in shapes if _block_k_ok(bk, group_size, K, bits)][:6]
    shapes = [(128, 256, 64, 8, 3), (64, 256, 32, 4, 4), (128, 128, 32, 4, 4), (128, 128, 64, 8, 3),
              (64, 128, 32, 4, 4), (128, 64, 32, 4, 4), (64, 64, 64, 4, 4), (32, 64, 32, 4, 5)]
    return [Config(bm, bn, bk, 1, w, s) for bm, bn, bk, w, s in shapes
            if _block_k_ok(bk, group_size, K, bits) and (bm <= 64 or M > 64)]


def _bucket(M: int) -> int:
    if M == 1:
        return 1
    if M <= DECODE_MAX_M:
        return DECODE_MAX_M
    return 1 << (M - 1).bit_length()


def _launch(cfg: Config, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
            zeros: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int,
            out_dtype: torch.dtype) -> torch.Tensor:
    # x: [M, K] contiguous -> [M, N] in out_dtype
    M, K = x.shape
    N = qweight.shape[1]
    tiles = -(-K // cfg.block_k)
    k_per_split = -(-tiles // cfg.split_k) * cfg.block_k
    split = -(-K // k_per_split)
    atomic = split > 1
    out = (torch.zeros if atomic else torch.empty)((M, N), device=x.device,
                                                   dtype=torch.float32 if atomic else out_dtype)
    has_bias = bias is not None and not atomic
    bias_arg = bias if bias is not None else scales
    interp = interpreting()
    if cfg.block_m == 1:
        if M != 1:
            raise ValueError(f"the GEMV tile serves one row, got M={M}")
        _jitted(_gemv_kernel, interp)[(triton.cdiv(N, cfg.block_n), split)](
            x, qweight, scales, zeros, bias_arg, out, N, K, group_size, k_per_split,
            BITS=bits, HAS_BIAS=has_bias, ATOMIC=atomic,
            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)
    else:
        grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n), split)
        _jitted(_gemm_kernel, interp)[grid](
            x, qweight, scales, zeros, bias_arg, out, M, N, K, group_size, k_per_split,
            x.stride(0), out.stride(0),
            BITS=bits, HAS_BIAS=has_bias, ATOMIC=atomic,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if atomic:
        if bias is not None:
            out += bias.to(torch.float32)
        out = out.to(out_dtype)
    return out


def _choose(M: int, K: int, N: int, bits: int, group_size: int, x: torch.Tensor,
            run: Callable[[Config], torch.Tensor]) -> Config:
    # Tuned once per (shape, M bucket, dtype, device) on first use, so loading stays fast.
    key = (_bucket(M), K, N, bits, group_size, x.dtype, str(x.device), interpreting())
    cfg = _CHOSEN.get(key)
    if cfg is not None:
        return cfg
    candidates = _candidates(M, K, N, bits, group_size, x.device)
    if not candidates:
        raise ValueError(f"no Triton tile fits K={K}, group_size={group_size}, bits={bits}")
    if len(candidates) == 1 or x.device.type != "cuda":
        cfg = candidates[0]
    else:
        cfg = fastest(candidates, run, f"M={M}, K={K}, N={N}, bits={bits}, group_size={group_size}")
    _CHOSEN[key] = cfg
    return cfg


def _misfit_errors() -> tuple[type[BaseException], ...]:
    # the errors that mean "this tile does not compile or fit this GPU" (shared memory, registers);
    # anything else (a CUDA fault, a wrong result shape, a bug) must surface, not be skipped
    from triton.compiler import errors as compiler_errors
    from triton.runtime import errors as runtime_errors
    found = [getattr(compiler_errors, "CompilationError", None),
             getattr(runtime_errors, "OutOfResources", None), getattr(runtime_errors, "PTXASError", None)]
    return tuple(e for e in found if e is not None)


def _cuda_time(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=5, rep=20)


def fastest(candidates: list[Config], run: Callable[[Config], torch.Tensor], what: str,
            timer: Callable[[Callable[[], object]], float] = _cuda_time) -> Config:
    """The fastest candidate by `timer`; tiles that do not fit are skipped, any other error is raised."""
    misfit = _misfit_errors()
    timings: dict[Config, float] = {}
    first_misfit: BaseException | None = None
    for c in candidates:
        try:
            timings[c] = timer(lambda: run(c))
        except misfit as exc:
            first_misfit = first_misfit or exc
    if not timings:
        reason = f"; the first failed with {type(first_misfit).__name__}: {first_misfit}" if first_misfit else ""
        raise RuntimeError(f"none of the {len(candidates)} Triton tiles fit for {what}{reason}")
    return min(timings, key=timings.get)


def tuned_configs() -> dict[tuple, Config]:
    """The tile choices made so far, keyed by (M bucket, K, N, bits, group_size, dtype, device)."""
    return dict(_CHOSEN)


def prepare(qweight: torch.Tensor, qzeros: torch.Tensor, g_idx: torch.Tensor, bits: int,
            group_size: int, zero_offset: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One-time repack: returns (qweight with rows sorted by group, zeros: [G, N] uint8 zero points,
    perm to apply to x's columns or None). Raises if g_idx is not a GPTQ group pattern."""
    K, N = g_idx.shape[0], qweight.shape[1]
    zeros = reference.unpack_zeros(qzeros, bits, N, zero_offset).to(torch.uint8)   # [G, N]
    g = g_idx.long()
    perm = None
    if bool((g[1:] < g[:-1]).any()):
        perm = torch.argsort(g, stable=True)
        q = reference.unpack(qweight, bits, K, dim=0)                          # [K, N]
        qweight = reference.pack(q.index_select(0, perm), bits, dim=0)
        g = g[perm]
        perm = perm.to(torch.int32)
    expected = torch.arange(K, device=g.device) // group_size
    if not torch.equal(g, expected):
        raise ValueError("g_idx is not a GPTQ group pattern (each group's rows must be "
                         f"{group_size} consecutive rows once sorted); use the torch kernel")
    return qweight.contiguous(), zeros.contiguous(), perm


def gptq_matmul(x: torch.Tensor, qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor,
                bits: int, group_size: int, bias: torch.Tensor | None = None,
                perm: torch.Tensor | None = None, config: Config | None = None) -> torch.Tensor:
    """y = x @ W + bias for tensors from `prepare`; same result as reference.gptq_matmul. x: [..., K]."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"Triton GPTQ supports {SUPPORTED_BITS} bits, got {bits}")
    K, N = x.shape[-1], qweight.shape[1]
    if qweight.shape[0] * 32 // bits != K:
        raise ValueError(f"x has {K} features but qweight packs {qweight.shape[0] * 32 // bits}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)                                                       # [M, K]
    if perm is not None:
        x2 = x2.index_select(1, perm)
    out_dtype = x.dtype
    if interpreting():
        # the interpreter computes bf16 wrongly (numpy has none): run it in fp32
        x2 = x2.to(torch.float32)
    x2 = x2.contiguous()
    M = x2.shape[0]
    if M == 0:
        return x.new_empty(*lead, N)

    def run(cfg: Config) -> torch.Tensor:
        return _launch(cfg, x2, qweight, scales, zeros, bias, bits, group_size, out_dtype)

    cfg = config or _choose(M, K, N, bits, group_size, x2, run)
    if cfg.block_m == 1 and M > 1:
        cfg = replace(cfg, block_m=16)
    return run(cfg).reshape(*lead, N)
