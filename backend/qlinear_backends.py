"""The table of QuantLinear backends, fastest first; `select_backend` walks it."""
from __future__ import annotations

from backend.qlinear import BaseQuantLinear, TorchQuantLinear
from backend.qlinear_int4 import CpuInt4QuantLinear, CudaInt4QuantLinear
from backend.qlinear_triton import TritonQuantLinear

# cpu_int4 precedes triton so that TRITON_INTERPRET=1 never makes the interpreter serve a CPU
# model; triton precedes cuda_int4 because it also serves fp16 and, tiled, prefill.
BACKENDS: list[type[BaseQuantLinear]] = [CpuInt4QuantLinear, TritonQuantLinear, CudaInt4QuantLinear,
                                         TorchQuantLinear]
