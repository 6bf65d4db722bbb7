"""QuantLinear: a GPTQ layer's tensors plus one kernel, chosen once at load from a table of backends."""
from __future__ import annotations

import torch
from torch import nn

from kernels import reference
from backend.errors import UserError


class BaseQuantLinear(nn.Module):
    """Holds qweight/qzeros/scales/g_idx/bias in AutoGPTQ's layout; subclasses supply the kernel.

    Lifecycle: construct (shapes only, usually on "meta") → tensors assigned by the loader →
    `post_init()` once (a backend's one-time repack) → `forward`.
    """

    NAME = "base"
    SUPPORTED_BITS: tuple[int, ...] = ()
    SUPPORTED_DEVICES: tuple[str, ...] = ()          # device types: "cpu", "cuda"
    SUPPORTED_DTYPES: tuple[torch.dtype, ...] = ()   # activation dtypes
    SUPPORTS_ACT_ORDER = True                         # g_idx that is not k // group_size
    SUPPORTS_ASYM = True

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int,
                 bias: bool = True, zero_offset: int = 1, device=None,
                 scales_dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.zero_offset = bits, zero_offset
        self.group_size = in_features if group_size == -1 else group_size
        groups = -(-in_features // self.group_size)
        self.register_buffer("qweight", torch.empty(
            reference.packed_length(in_features, bits), out_features, dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.empty(
            groups, reference.packed_length(out_features, bits), dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.empty(groups, out_features, dtype=scales_dtype, device=device))
        self.register_buffer("g_idx", torch.empty(in_features, dtype=torch.int32, device=device))
        if bias:
            self.register_buffer("bias", torch.empty(out_features, dtype=scales_dtype, device=device))
        else:
            self.bias = None

    @classmethod
    def validate(cls, *, bits: int, group_size: int, desc_act: bool, sym: bool, in_features: int,
                 out_features: int, device: torch.device, dtype: torch.dtype) -> str | None:
        """None when this backend can serve the layer, else the reason it cannot."""
        if bits not in cls.SUPPORTED_BITS:
            return f"{bits}-bit weights (supports {cls.SUPPORTED_BITS})"
        if device.type not in cls.SUPPORTED_DEVICES:
            return f"device {device.type} (supports {', '.join(cls.SUPPORTED_DEVICES)})"
        if dtype not in cls.SUPPORTED_DTYPES:
            return f"dtype {dtype} (supports {', '.join(str(d) for d in cls.SUPPORTED_DTYPES)})"
        if desc_act and group_size != -1 and group_size < in_features and not cls.SUPPORTS_ACT_ORDER:
            return "act-order with groups"
        if not sym and not cls.SUPPORTS_ASYM:
            return "asymmetric quantization"
        return cls.validate_extra(bits=bits, group_size=group_size, in_features=in_features,
                                  out_features=out_features, device=device, dtype=dtype)

    @classmethod
    def validate_extra(cls, **layer) -> str | None:
        return None

    def post_init(self) -> None:
        """One-time work after the tensors are in place (repacking for fast kernels)."""

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, backend={self.NAME}")


class TorchQuantLinear(BaseQuantLinear):
    """The reference: dequantize then matmul; runs on any device and dtype, every bit width."""

    NAME = "torch"
    SUPPORTED_BITS = reference.SUPPORTED_BITS
    SUPPORTED_DEVICES = ("cpu", "cuda", "mps", "xpu")
    SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., K] -> [..., N]
        return reference.gptq_matmul(x, self.qweight, self.qzeros, self.scales, self.g_idx, self.bits,
                                     self.bias, self.zero_offset)


def registered_backends() -> list[type[BaseQuantLinear]]:
    """Backends from fastest to slowest; `auto` takes the first that validates."""
    from backend import qlinear_backends
    return qlinear_backends.BACKENDS


class KernelSelectionError(UserError, ValueError):
    pass


def select_backend(kernel: str, **layer) -> type[BaseQuantLinear]:
    """Walk the table; a forced `kernel` that cannot serve the layer fails with why and what can."""
    backends = registered_backends()
    names = [b.NAME for b in backends]
    reasons = {b.NAME: b.validate(**layer) for b in backends}
    usable = [n for n in names if reasons[n] is None]
    if kernel == "auto":
        for b in backends:
            if reasons[b.NAME] is None:
                return b
        raise KernelSelectionError(f"no kernel can serve this layer: {reasons}")
    if kernel not in names:
        raise KernelSelectionError(f"unknown kernel {kernel!r}; choose auto or one of {', '.join(names)}")
    if reasons[kernel] is not None:
        raise KernelSelectionError(f"kernel {kernel!r} cannot serve this checkpoint: it does not support "
                                   f"{reasons[kernel]}; kernels that can: {', '.join(usable) or 'none'}")
    return next(b for b in backends if b.NAME == kernel)
