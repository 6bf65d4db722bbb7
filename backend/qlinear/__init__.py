"""The table of QuantLinear backends, fastest first, and `select_backend`, which walks it."""
from __future__ import annotations

from backend.errors import UserError
from backend.qlinear.base import BaseQuantLinear, LayerSpec, RepackState
from backend.qlinear.int4 import CpuInt4QuantLinear, CudaInt4QuantLinear
from backend.qlinear.torch_ref import TorchQuantLinear
from backend.qlinear.triton import TritonQuantLinear

# cpu_int4 precedes triton so that TRITON_INTERPRET=1 never makes the interpreter serve a CPU
# model; triton precedes cuda_int4 because it also serves fp16 and, tiled, prefill.
BACKENDS: tuple[type[BaseQuantLinear], ...] = (CpuInt4QuantLinear, TritonQuantLinear, CudaInt4QuantLinear,
                                               TorchQuantLinear)


class KernelSelectionError(UserError, ValueError):
    """No backend (or not the one asked for) can serve a layer; the message says why and which can."""


def registered_backends() -> list[type[BaseQuantLinear]]:
    """Backends from fastest to slowest; `auto` takes the first that validates."""
    return list(BACKENDS)


def select_backend(kernel: str, spec: LayerSpec) -> type[BaseQuantLinear]:
    """Walk the table; a forced `kernel` that cannot serve the layer fails with why and what can."""
    reasons = {b.NAME: b.validate(spec) for b in BACKENDS}
    usable = [name for name, reason in reasons.items() if reason is None]
    if kernel == "auto":
        if usable:
            return _by_name(usable[0])
        raise KernelSelectionError(f"no kernel can serve this layer: {reasons}")
    if kernel not in reasons:
        raise KernelSelectionError(f"unknown kernel {kernel!r}; choose auto or one of {', '.join(reasons)}")
    if reasons[kernel] is not None:
        raise KernelSelectionError(f"kernel {kernel!r} cannot serve this checkpoint: it does not support "
                                   f"{reasons[kernel]}; kernels that can: {', '.join(usable) or 'none'}")
    return _by_name(kernel)


def _by_name(name: str) -> type[BaseQuantLinear]:
    return next(b for b in BACKENDS if b.NAME == name)


__all__ = ["BACKENDS", "BaseQuantLinear", "CpuInt4QuantLinear", "CudaInt4QuantLinear", "KernelSelectionError",
           "LayerSpec", "RepackState", "TorchQuantLinear", "TritonQuantLinear", "registered_backends",
           "select_backend"]
