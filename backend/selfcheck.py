"""The load-time self-check: each fast QuantLinear backend runs one real layer against the torch reference.

The fast kernels are tested here on CPU and under Triton's interpreter, but a user's GPU is the first
place some of them ever run. Before the one-time repack, one layer of each type is copied into its
chosen backend and fed random inputs; if its output strays from kernels.reference beyond the dtype's
rounding, that layer type moves to the next backend of the table that can serve it (the torch reference
last, which always can). A wrong kernel then costs speed, never wrong code, and the load says so.
"""
from __future__ import annotations

import torch
from torch import nn

from backend.qlinear import BaseQuantLinear, TorchQuantLinear, registered_backends
from kernels import reference

# relative to the largest reference output: a few units of the dtype's rounding (outputs are rounded
# once, sums run in fp32). A misread zero point or group moves outputs by a whole quantization step,
# tens of percent of the largest output.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2}
ROWS = (1, 7, 33)            # decode, small-batch and tiled (prefill) shapes take different kernel paths
MAX_COLUMNS = 256            # the reference dequantizes only these columns: cheap even for 6144 x 24576


def _kind(name: str) -> str:
    return ".".join(name.split(".")[-2:])


def _copy_as(cls: type[BaseQuantLinear], layer: BaseQuantLinear) -> BaseQuantLinear:
    """A `cls` layer holding `layer`'s GPTQ tensors (not yet repacked)."""
    new = cls(layer.spec, device="meta")
    for key in ("qweight", "qzeros", "scales", "g_idx", "bias"):
        if getattr(layer, key, None) is not None:
            setattr(new, key, getattr(layer, key))
    return new


def _reference_columns(x: torch.Tensor, layer: BaseQuantLinear, n: int) -> torch.Tensor:
    # the first n output columns of the reference; zeros are packed along N, n keeps whole words
    words = n * layer.bits // 32
    bias = layer.bias[:n] if layer.bias is not None else None
    return reference.gptq_matmul(x.float(), layer.qweight[:, :n], layer.qzeros[:, :words], layer.scales[:, :n],
                                 layer.g_idx, layer.bits, bias, layer.zero_offset)


def mismatch(cls: type[BaseQuantLinear], layer: BaseQuantLinear, dtype: torch.dtype) -> str | None:
    """None when `cls` computes `layer` like the reference; else what went wrong."""
    try:
        probe = _copy_as(cls, layer)
        probe.post_init()
        n = min(layer.out_features, MAX_COLUMNS)
        gen = torch.Generator(device="cpu").manual_seed(0)
        for rows in ROWS:
            x = torch.randn(rows, layer.in_features, generator=gen).to(device=layer.qweight.device, dtype=dtype)
            got = probe(x)[:, :n].float()
            want = _reference_columns(x, layer, n)
            error = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-6)
            if not error <= TOLERANCE[dtype]:      # `not <=` also catches NaN
                return f"relative error {error:.2g} at {rows} row(s) (tolerance {TOLERANCE[dtype]:g})"
    except Exception as exc:  # a kernel that fails to build or launch on this machine fails the check
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return None


def verify(model: nn.Module, layers: list[tuple[str, BaseQuantLinear]], qcfg, dtype: torch.dtype) -> list[str]:
    """Check one layer per layer type, before `post_init`; swap a failing type to the next backend.

    Returns one note per layer type that moved (empty when every fast kernel agrees with the reference).
    """
    by_kind: dict[str, list[tuple[str, BaseQuantLinear]]] = {}
    for name, layer in layers:
        by_kind.setdefault(_kind(name), []).append((name, layer))
    notes = []
    table = registered_backends()
    for kind, members in by_kind.items():
        first = members[0][1]
        chosen = type(first)
        if chosen is TorchQuantLinear:
            continue
        start = table.index(chosen) if chosen in table else 0
        candidates = [chosen] + [b for b in table[start + 1:] if b.validate(first.spec) is None]
        failures = []
        for cls in candidates:
            problem = None if cls is TorchQuantLinear else mismatch(cls, first, dtype)
            if problem is None:
                break
            failures.append(f"{cls.NAME}: {problem}")
        else:
            cls = TorchQuantLinear
        if cls is chosen:
            continue
        for name, layer in members:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, _copy_as(cls, layer))
        notes.append(f"{kind}: {'; '.join(failures)}; moved to the {cls.NAME} kernel")
    return notes
