"""The torch reference QuantLinear: dequantize then matmul, the ground truth for every fast backend."""
from __future__ import annotations

import torch

from backend.qlinear.base import BaseQuantLinear
from kernels import reference


class TorchQuantLinear(BaseQuantLinear):
    """Runs on any device and dtype, every bit width; reads the checkpoint layout as stored."""

    NAME = "torch"
    SUPPORTED_BITS = reference.SUPPORTED_BITS
    SUPPORTED_DEVICES = ("cpu", "cuda", "mps", "xpu")
    SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., K] -> [..., N]
        return reference.gptq_matmul(x, self.qweight, self.qzeros, self.scales, self.g_idx, self.bits,
                                     self.bias, self.zero_offset)
