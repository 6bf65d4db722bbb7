"""The GPTQ matmuls as torch.library ops, so torch.compile traces a QuantLinear without a graph break.

PyTorch's packed-int4 matmuls are aten ops already and trace as they are. The Triton path picks
its tile in Python (a tuned table, a first-use jit), which dynamo must not trace into: it runs
behind one opaque op whose fake implementation gives the output's shape and dtype. Autotuning
happens on the op's first eager call, so warm a layer up before capturing a CUDA graph.
"""
from __future__ import annotations

import torch

try:
    from kernels import triton_gptq
except ImportError:  # no triton: the op is never registered and its backend never selected
    triton_gptq = None


def _output_like(x: torch.Tensor, n: int) -> torch.Tensor:
    # x: [..., K] -> [..., N] in x's dtype, as every GPTQ matmul returns
    return x.new_empty(*x.shape[:-1], n)


if triton_gptq is not None:
    @torch.library.custom_op("starcoder::triton_gptq_matmul", mutates_args=())
    def triton_gptq_matmul(x: torch.Tensor, qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor,
                           bits: int, group_size: int, bias: torch.Tensor | None,
                           perm: torch.Tensor | None) -> torch.Tensor:
        """y = x @ W + bias for tensors from triton_gptq.prepare; x: [..., K] -> [..., N]."""
        return triton_gptq.gptq_matmul(x, qweight, zeros, scales, bits, group_size, bias, perm)

    @triton_gptq_matmul.register_fake
    def _(x, qweight, zeros, scales, bits, group_size, bias, perm):
        return _output_like(x, qweight.shape[1])
else:
    triton_gptq_matmul = None
