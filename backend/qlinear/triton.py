"""The Triton QuantLinear backend: rows sorted by group once at load, fused dequant + matmul per call."""
from __future__ import annotations

import torch

from backend.qlinear.base import BaseQuantLinear, LayerSpec

try:
    from kernels import ops, triton_gptq
except ImportError:  # triton is not installed (e.g. macOS): the backend reports it and is skipped
    ops = triton_gptq = None


class TritonQuantLinear(BaseQuantLinear):
    """2/4/8-bit GPTQ on CUDA in fp16/bf16; on CPU only under TRITON_INTERPRET=1 (fp32 too, for CI)."""

    NAME = "triton"
    SUPPORTED_BITS = (2, 4, 8)
    SUPPORTED_DEVICES = ("cuda", "cpu")
    SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
    REPACKS = True

    @classmethod
    def validate_extra(cls, spec: LayerSpec) -> str | None:
        if triton_gptq is None:
            return "a machine without triton installed"
        if spec.device.type == "cpu" and not triton_gptq.interpreting():
            return "device cpu (Triton runs on CPU only in its interpreter, TRITON_INTERPRET=1)"
        if spec.device.type == "cuda" and spec.dtype == torch.float32:
            return "dtype torch.float32 on cuda (supports torch.float16, torch.bfloat16)"
        g = spec.effective_group_size
        # a K tile (>= 16 rows) must lie inside one group
        if g < spec.in_features and (g < 16 or g & (g - 1)):
            return f"group size {g} (supports -1 or a power of two >= 16)"
        if spec.out_features % (32 // spec.bits):
            return f"out_features {spec.out_features} not packable in {spec.bits}-bit zeros"
        return None

    def repack(self) -> None:
        qweight, zeros, perm = triton_gptq.prepare(self.qweight, self.qzeros, self.g_idx, self.bits,
                                                   self.group_size, self.zero_offset)
        self.qweight = qweight
        self.qzeros = None
        self.register_buffer("zeros", zeros)     # [G, N] uint8 zero points
        self.register_buffer("perm", perm)       # [K] int32 column order of x, or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., K] -> [..., N]
        # through the registered op, so torch.compile traces it without a graph break
        return ops.triton_gptq_matmul(x, self.qweight, self.zeros, self.scales, self.bits,
                                      self.group_size, self.bias, self.perm)
