"""The GPTQ algorithm (Frantar et al., as AutoGPTQ runs it) and round-to-nearest for one linear layer."""
from __future__ import annotations

import dataclasses
import math

import torch

from kernels.reference import pack

# fp16's smallest normal number: a scale below it would lose precision once stored as fp16
_MIN_SCALE = 2.0 ** -14


@dataclasses.dataclass
class QuantizedLayer:
    """Integer codes and their grid for one layer, in the checkpoint's orientation (K rows, N columns)."""
    q: torch.Tensor        # [K, N] int32 codes in [0, 2**bits)
    zeros: torch.Tensor    # [G, N] int32 zero points (the real zero, before v1's minus one)
    scales: torch.Tensor   # [G, N] fp16
    g_idx: torch.Tensor    # [K] int32 group of each input row
    bits: int

    def dequantize(self) -> torch.Tensor:
        """The fake-quantized weight W: [K, N] fp32, bit-identical to kernels.reference.dequantize."""
        g = self.g_idx.long()
        return (self.q - self.zeros[g]).to(torch.float32) * self.scales[g].to(torch.float32)

    def pack(self, checkpoint_format: str = "gptq") -> dict[str, torch.Tensor]:
        """qweight / qzeros / scales / g_idx in AutoGPTQ's (v1) or GPTQModel's (v2) layout."""
        # v1 stores zero - 1, an old off-by-one AutoGPTQ kept for compatibility
        offset = 1 if checkpoint_format == "gptq" else 0
        if checkpoint_format not in ("gptq", "gptq_v2"):
            raise ValueError(f"checkpoint_format {checkpoint_format!r}: use 'gptq' or 'gptq_v2'")
        stored = self.zeros - offset
        if int(stored.min()) < 0:
            raise ValueError("a zero point of 0 cannot be stored in the v1 ('gptq') layout")
        return {"qweight": pack(self.q, self.bits, dim=0),
                "qzeros": pack(stored, self.bits, dim=1),
                "scales": self.scales.contiguous(),
                "g_idx": self.g_idx.to(torch.int32).contiguous()}


def find_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row min/max grid of AutoGPTQ's Quantizer for w: [R, C]; returns scale, zero: [R] fp32.

    The scale is rounded to fp16 here, not at packing time, so the codes chosen during GPTQ are the
    ones a reader dequantizes with and the packed layer reproduces the fake-quantized one exactly.
    """
    maxq = 2 ** bits - 1
    zero_t = torch.zeros(w.shape[0], device=w.device)
    xmin = torch.minimum(w.min(1).values, zero_t)
    xmax = torch.maximum(w.max(1).values, zero_t)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -1.0, xmin)
    xmax = torch.where(empty, 1.0, xmax)
    scale = ((xmax - xmin) / maxq).clamp_min(_MIN_SCALE).half().float()
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        # v1 files store zero - 1 and a zero of 0 has no portable encoding there (AutoGPTQ's packer
        # ORs a -1 over the neighbouring zeros; readers differ on masking), so the grid starts at 1
        zero = torch.round(-xmin / scale).clamp(1, maxq)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes clamp(round(w / scale) + zero) as float; shapes broadcast."""
    return torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int = -1, sym: bool = True) -> QuantizedLayer:
    """Round-to-nearest on the same grid as GPTQ; weight: [N, K] as nn.Linear stores it."""
    w = weight.detach().float()
    rows, columns = w.shape
    gs = columns if group_size == -1 else group_size
    q = torch.empty_like(w)
    scales, zeros = [], []
    for start in range(0, columns, gs):
        block = w[:, start:start + gs]
        scale, zero = find_params(block, bits, sym)
        q[:, start:start + gs] = quantize_codes(block, scale[:, None], zero[:, None], bits)
        scales.append(scale)
        zeros.append(zero)
    g_idx = torch.arange(columns, dtype=torch.int32) // gs
    return _layer(q, torch.stack(scales), torch.stack(zeros), g_idx, bits)


def _layer(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor,
           bits: int) -> QuantizedLayer:
    # q: [N, K] codes as float; scales/zeros: [G, N]
    return QuantizedLayer(q=q.t().to(torch.int32).contiguous(), zeros=zeros.to(torch.int32),
                          scales=scales.half(), g_idx=g_idx.to(torch.int32), bits=bits)


class GPTQ:
    """Accumulates H = 2/n · Σ XᵀX over calibration inputs of one layer, then quantizes its weight."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self.columns = in_features
        self.H = torch.zeros(in_features, in_features, device=device, dtype=torch.float32)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        """inp: [B, S, K] or [B, K]; each leading-dim row counts as one sample, as in AutoGPTQ."""
        count = inp.shape[0] if inp.dim() > 1 else 1
        x = inp.reshape(-1, inp.shape[-1]).float()
        # running mean keeps H's scale independent of how many samples were seen
        self.H *= self.nsamples / (self.nsamples + count)
        self.nsamples += count
        x = math.sqrt(2 / self.nsamples) * x
        self.H += x.t() @ x

    def quantize(self, weight: torch.Tensor, bits: int, group_size: int = -1, sym: bool = True,
                 desc_act: bool = False, damp_percent: float = 0.01,
                 blocksize: int = 128) -> QuantizedLayer:
        """GPTQ on weight: [N, K] (nn.Linear layout); consumes the accumulated Hessian."""
        W = weight.detach().float().clone()
        H = self.H
        self.H = None
        columns = W.shape[1]
        if columns != self.columns:
            raise ValueError(f"weight has {columns} input features, the Hessian {self.columns}")
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        if group_size == -1:
            scale, zero = find_params(W, bits, sym)
        perm = None
        if desc_act:
            # the columns with the largest activations go first, while most of the others can
            # still absorb their error
            perm = torch.argsort(torch.diag(H), descending=True)
            W = W[:, perm]
            H = H[perm][:, perm]

        damp = damp_percent * torch.mean(torch.diag(H))
        idx = torch.arange(columns, device=W.device)
        H[idx, idx] += damp
        Hinv = _inverse_cholesky_upper(H)

        Q = torch.zeros_like(W)
        scales, zeros = [], []
        for i1 in range(0, columns, blocksize):
            i2 = min(i1 + blocksize, columns)
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            for i in range(i2 - i1):
                col = i1 + i
                if group_size != -1 and col % group_size == 0:
                    # AutoGPTQ takes a group's grid from W, which holds the updates of earlier
                    # blocks but not yet those made inside the current one; kept for parity
                    scale, zero = find_params(W[:, col:col + group_size], bits, sym)
                    scales.append(scale)
                    zeros.append(zero)
                w = W1[:, i]
                d = Hinv1[i, i]
                q = quantize_codes(w, scale, zero, bits)
                Q1[:, i] = q
                err = (w - scale * (q - zero)) / d
                # lazy batch: spread the error inside the block now, over later blocks once below
                W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
                Err1[:, i] = err
            Q[:, i1:i2] = Q1
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

        if group_size == -1:
            scales, zeros = [scale], [zero]
        gs = columns if group_size == -1 else group_size
        # groups are formed over the processing order; g_idx maps each original row to its group
        g_idx = torch.arange(columns, dtype=torch.int32) // gs
        if perm is not None:
            invperm = torch.argsort(perm)
            Q = Q[:, invperm]
            g_idx = g_idx[invperm.cpu()]
        return _layer(Q, torch.stack(scales), torch.stack(zeros), g_idx, bits)


def _inverse_cholesky_upper(H: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H⁻¹, the form GPTQ's column-by-column updates need."""
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)
