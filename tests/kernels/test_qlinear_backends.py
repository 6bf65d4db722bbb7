"""Every QuantLinear backend, built the way the loader builds it, against TorchQuantLinear; selection."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from backend.qlinear import (BACKENDS, CpuInt4QuantLinear, KernelSelectionError, LayerSpec, RepackState,
                             TorchQuantLinear, TritonQuantLinear, select_backend)

LAYERS = [  # (M, K, N, bits, group_size, act_order, sym)
    (1, 256, 64, 4, -1, True, True),
    (3, 256, 96, 4, 128, True, False),
    (16, 192, 48, 4, 32, False, True),
    (77, 128, 32, 4, 64, True, False),
]


def _spec(K, N, bits, group_size, act_order, sym, device="cpu", dtype=torch.bfloat16) -> LayerSpec:
    return LayerSpec(bits=bits, group_size=group_size, desc_act=act_order, sym=sym, in_features=K,
                     out_features=N, device=torch.device(device), dtype=dtype)


def _compare(gptq, cls, case, dtype, device="cpu"):
    M, K, N, bits, group_size, act_order, sym = case
    spec = _spec(K, N, bits, group_size, act_order, sym, device, dtype)
    assert cls.validate(spec) is None
    t = gptq.make(K, N, bits, group_size, act_order, sym)
    ref_layer = gptq.build(TorchQuantLinear, dict(t), dataclasses.replace(spec, device=torch.device("cpu")))
    layer = gptq.build(cls, dict(t), spec)
    x = torch.randn(2, M, K, generator=torch.Generator().manual_seed(3)).to(dtype)   # [B, S, K]
    y = layer(x.to(device))
    assert y.shape == (2, M, N) and y.dtype == dtype
    gptq.assert_close(y.cpu(), ref_layer(x), dtype)


@pytest.mark.parametrize("case", LAYERS, ids=lambda c: "M{}-K{}-N{}-b{}-g{}-act{}-sym{}".format(*c))
def test_cpu_int4_layer(gptq, case):
    _compare(gptq, CpuInt4QuantLinear, case, torch.bfloat16)


@pytest.mark.parametrize("case", LAYERS[:2] + [(3, 128, 48, 8, 32, True, False), (1, 128, 32, 2, -1, False, False)],
                         ids=lambda c: "M{}-K{}-N{}-b{}-g{}-act{}-sym{}".format(*c))
def test_triton_layer_interpreted(gptq, interpreter, case):
    if not interpreter:
        return
    _compare(gptq, TritonQuantLinear, case, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", LAYERS, ids=lambda c: "M{}-K{}-N{}-b{}-g{}-act{}-sym{}".format(*c))
def test_every_cuda_backend(gptq, case, dtype):
    M, K, N, bits, group_size, act_order, sym = case
    usable = [b for b in BACKENDS
              if b.validate(_spec(K, N, bits, group_size, act_order, sym, "cuda", dtype)) is None]
    assert TritonQuantLinear in usable
    for cls in usable:
        _compare(gptq, cls, case, dtype, "cuda")


def test_auto_picks_cpu_int4_for_4bit_bf16():
    assert select_backend("auto", _spec(6144, 6144, 4, -1, True, True)) is CpuInt4QuantLinear
    assert select_backend("auto", _spec(6144, 6144, 3, 128, True, True)) is TorchQuantLinear
    assert select_backend("auto", _spec(6144, 6144, 4, 128, False, True,
                                                  dtype=torch.float32)) is TorchQuantLinear


def test_forced_backend_that_cannot_serve_says_why_and_who_can():
    with pytest.raises(KernelSelectionError, match=r"cuda_int4.*device cpu.*can: cpu_int4, torch"):
        select_backend("cuda_int4", _spec(256, 64, 4, 128, True, False))
    with pytest.raises(KernelSelectionError, match=r"cpu_int4.*3-bit.*can: torch"):
        select_backend("cpu_int4", _spec(256, 64, 3, 128, True, False))


def test_triton_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = TritonQuantLinear.validate(_spec(256, 64, 4, 128, True, False))
    assert "TRITON_INTERPRET" in reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert TritonQuantLinear.validate(_spec(256, 64, 4, 128, True, False)) is None
    assert "group size 100" in TritonQuantLinear.validate(_spec(300, 64, 4, 100, False, False))


def test_cpu_int4_refuses_shapes_the_op_cannot_take():
    assert "multiple of 16" in CpuInt4QuantLinear.validate(_spec(256, 40, 4, 128, False, True))
    assert "bfloat16" in CpuInt4QuantLinear.validate(_spec(256, 64, 4, 128, False, True,
                                                                     dtype=torch.float16))


def test_table_keeps_its_order():
    # the order is the auto policy (see backend/qlinear/__init__.py): a reorder changes which kernel serves
    assert [b.NAME for b in BACKENDS] == ["cpu_int4", "triton", "cuda_int4", "torch"]


def _post_init_twice(gptq, cls, dtype):
    M, K, N, bits, group_size, act_order, sym = (3, 256, 64, 4, 128, True, False)
    spec = _spec(K, N, bits, group_size, act_order, sym, "cpu", dtype)
    layer = gptq.build(cls, gptq.make(K, N, bits, group_size, act_order, sym), spec)   # post_init once
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(5)).to(dtype)       # [M, K]
    first = layer(x)
    layer.post_init()
    assert torch.equal(layer(x), first)
    assert layer.repack_state is (RepackState.READY if cls.REPACKS else RepackState.UNUSED)


@pytest.mark.parametrize("cls", [TorchQuantLinear, CpuInt4QuantLinear], ids=lambda c: c.NAME)
def test_post_init_twice_leaves_the_layer_as_it_was(gptq, cls):
    _post_init_twice(gptq, cls, torch.bfloat16)


def test_triton_post_init_twice_leaves_the_layer_as_it_was(gptq, interpreter):
    if not interpreter:
        return
    _post_init_twice(gptq, TritonQuantLinear, torch.float32)
