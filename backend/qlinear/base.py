"""The QuantLinear contract: `LayerSpec` (what a layer is) and `BaseQuantLinear` (its tensors and lifecycle)."""
from __future__ import annotations

import dataclasses
import enum

import torch
from torch import nn

from kernels import reference


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One quantized Linear as the backends see it: checked by `validate`, then built with it."""
    bits: int
    group_size: int                  # as in quantize_config.json: -1 means one group over all of K
    desc_act: bool                   # act-order: g_idx may be a permutation pattern
    sym: bool
    in_features: int                 # K
    out_features: int                # N
    device: torch.device             # where the layer runs (it is built on "meta" first)
    dtype: torch.dtype               # activation dtype
    bias: bool = True
    zero_offset: int = 1             # 1: v1 ("gptq") stores zero - 1; 0: gptq_v2 stores the zero

    @property
    def groups(self) -> int:
        """G: groups along K."""
        return -(-self.in_features // self.effective_group_size)

    @property
    def effective_group_size(self) -> int:
        """g with -1 resolved to K."""
        return self.in_features if self.group_size == -1 else self.group_size


class RepackState(enum.Enum):
    """Where a layer stands in its one-time repack (vLLM's GPTQ layer tracks the same with an enum)."""
    UNUSED = enum.auto()    # the backend reads the checkpoint layout as stored
    PENDING = enum.auto()   # checkpoint tensors in place, repack still to do
    READY = enum.auto()     # repacked: the checkpoint tensors are gone, post_init must not run it again


class BaseQuantLinear(nn.Module):
    """Holds qweight/qzeros/scales/g_idx/bias in AutoGPTQ's layout; subclasses supply the kernel.

    Lifecycle: construct (shapes only, usually on "meta") → tensors assigned by the loader →
    `post_init()` (a backend's one-time repack; later calls do nothing) → `forward`.
    """

    NAME = "base"
    SUPPORTED_BITS: tuple[int, ...] = ()
    SUPPORTED_DEVICES: tuple[str, ...] = ()          # device types: "cpu", "cuda"
    SUPPORTED_DTYPES: tuple[torch.dtype, ...] = ()   # activation dtypes
    SUPPORTS_ACT_ORDER = True                         # g_idx that is not k // group_size
    SUPPORTS_ASYM = True
    REPACKS = False                                   # True: `repack` runs once, from post_init

    def __init__(self, spec: LayerSpec, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.in_features, self.out_features = spec.in_features, spec.out_features
        self.bits, self.zero_offset = spec.bits, spec.zero_offset
        self.group_size = spec.effective_group_size
        self.repack_state = RepackState.PENDING if self.REPACKS else RepackState.UNUSED
        K, N, G = spec.in_features, spec.out_features, spec.groups
        # fp16 placeholders: the loader assigns scales and bias in the dtypes it keeps them in
        self.register_buffer("qweight", torch.empty(
            reference.packed_length(K, spec.bits), N, dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.empty(
            G, reference.packed_length(N, spec.bits), dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.empty(G, N, dtype=torch.float16, device=device))
        self.register_buffer("g_idx", torch.empty(K, dtype=torch.int32, device=device))
        if spec.bias:
            self.register_buffer("bias", torch.empty(N, dtype=torch.float16, device=device))
        else:
            self.bias = None

    @classmethod
    def validate(cls, spec: LayerSpec) -> str | None:
        """None when this backend can serve the layer, else the reason it cannot."""
        if spec.bits not in cls.SUPPORTED_BITS:
            return f"{spec.bits}-bit weights (supports {cls.SUPPORTED_BITS})"
        if spec.device.type not in cls.SUPPORTED_DEVICES:
            return f"device {spec.device.type} (supports {', '.join(cls.SUPPORTED_DEVICES)})"
        if spec.dtype not in cls.SUPPORTED_DTYPES:
            return f"dtype {spec.dtype} (supports {', '.join(str(d) for d in cls.SUPPORTED_DTYPES)})"
        if spec.desc_act and spec.effective_group_size < spec.in_features and not cls.SUPPORTS_ACT_ORDER:
            return "act-order with groups"
        if not spec.sym and not cls.SUPPORTS_ASYM:
            return "asymmetric quantization"
        return cls.validate_extra(spec)

    @classmethod
    def validate_extra(cls, spec: LayerSpec) -> str | None:
        """A backend's own limits beyond the declared tables (shapes, hardware, installed ops)."""
        return None

    def post_init(self) -> None:
        """After the tensors are in place: the backend's one-time repack. Safe to call again."""
        if self.repack_state is RepackState.PENDING:
            self.repack()
            self.repack_state = RepackState.READY

    def repack(self) -> None:
        """Turn the checkpoint tensors into the kernel's layout; runs at most once per layer."""
        raise NotImplementedError(f"{type(self).__name__} sets REPACKS but has no repack()")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, backend={self.NAME}")
