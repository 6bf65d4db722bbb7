"""The Triton GPTQ matmul as a registered torch custom op, so torch.compile traces a QuantLinear without a graph break.

PyTorch's packed-int4 matmuls are aten ops already and trace as they are (on CPU inductor calls the op's
tensor-group-size twin from its wrapper, ~1 us more than the op; a Python op of ours cost ~26 us a call,
4 ms a token over StarCoder's 160 layers). The Triton path picks its tile in
Python (a tuned table, a first-use jit), which dynamo must not trace into: it runs behind one opaque op
whose fake implementation gives the output's shape and dtype. Autotuning happens on the op's first
eager call, so warm a layer up before capturing a CUDA graph.
"""
from __future__ import annotations

import torch
from torch import library


@library.custom_op("starcoder::triton_gptq_matmul", mutates_args=())
def triton_gptq_matmul(x: torch.Tensor, qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor,
                       bits: int, group_size: int, bias: torch.Tensor | None,
                       perm: torch.Tensor | None) -> torch.Tensor:
    """y = x @ W + bias for tensors from triton_gptq.prepare; x: [..., K] -> [..., N]."""
    # imported on first use: triton fixes its interpreter mode when imported, and a CPU-only process
    # that never runs this op never needs triton
    from kernels import triton_gptq
    return triton_gptq.gptq_matmul(x, qweight, zeros, scales, bits, group_size, bias, perm)


@triton_gptq_matmul.register_fake
def _(x, qweight, zeros, scales, bits, group_size, bias, perm):
    return x.new_empty(*x.shape[:-1], qweight.shape[1])
