"""QuantLinear backends on PyTorch's packed-int4 matmuls: CUDA tinygemm (sm80+) and the CPU op."""
from __future__ import annotations

import torch

from backend.qlinear.base import BaseQuantLinear, LayerSpec
from kernels import int4pack


class _Int4PackQuantLinear(BaseQuantLinear):
    """4-bit GPTQ repacked once at load into the op's layout; bf16 activations."""

    SUPPORTED_BITS = (4,)
    SUPPORTED_DTYPES = (torch.bfloat16,)
    REPACKS = True

    @classmethod
    def validate_extra(cls, spec: LayerSpec) -> str | None:
        return int4pack.unsupported_reason(spec.in_features, spec.out_features, spec.effective_group_size,
                                           spec.device.type)

    def repack(self) -> None:
        packed, scale_and_zeros, op_group, perm, unpackable = int4pack.convert(
            self.qweight, self.qzeros, self.scales, self.g_idx, self.group_size, self.zero_offset,
            torch.bfloat16)
        self.op_group_size = op_group
        self.unpackable = unpackable            # CPU: prompts multiply in fp32 from dequantized slices
        self.qweight = self.qzeros = self.scales = None
        self.register_buffer("packed_weight", packed)
        self.register_buffer("scale_and_zeros", scale_and_zeros)   # [G', N, 2] bf16
        self.register_buffer("perm", perm)                           # [K] int32 or None
        if self.bias is not None:
            self.bias = self.bias.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., K] -> [..., N]
        return int4pack.int4pack_matmul(x, self.packed_weight, self.scale_and_zeros, self.op_group_size,
                                        self.bias, self.perm, self.unpackable)


class CudaInt4QuantLinear(_Int4PackQuantLinear):
    """tinygemm (`torch._weight_int4pack_mm`): 4-bit, groups 32-256 or -1, bf16, compute capability 8.0+."""

    NAME = "cuda_int4"
    SUPPORTED_DEVICES = ("cuda",)

    @classmethod
    def validate_extra(cls, spec: LayerSpec) -> str | None:
        if not torch.cuda.is_available():
            return "a machine without CUDA"
        if torch.cuda.get_device_capability(spec.device) < (8, 0):
            return f"compute capability {torch.cuda.get_device_capability(spec.device)} (needs 8.0+)"
        if torch.version.hip is not None:
            return "ROCm (tinygemm's AMD layout differs)"
        return super().validate_extra(spec)


class CpuInt4QuantLinear(_Int4PackQuantLinear):
    """`_weight_int4pack_mm_for_cpu`: 4-bit, groups 32-256 or -1, bf16 activations, N % 16 == 0."""

    NAME = "cpu_int4"
    SUPPORTED_DEVICES = ("cpu",)

    @classmethod
    def validate_extra(cls, spec: LayerSpec) -> str | None:
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            return f"torch {torch.__version__} (needs _weight_int4pack_mm_for_cpu, torch 2.6+)"
        return super().validate_extra(spec)
