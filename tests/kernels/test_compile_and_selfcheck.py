"""Every QuantLinear backend traces without a graph break, and the load-time self-check passes Triton."""
from __future__ import annotations

import pytest
import torch

from backend import selfcheck
from backend.loader import from_quantized
from backend.qlinear import CpuInt4QuantLinear, LayerSpec, TorchQuantLinear, TritonQuantLinear
from tests.helpers.checkpoints import tiny_config, write_checkpoint


def _spec(bits: int, group_size: int, act_order: bool, dtype: torch.dtype) -> LayerSpec:
    return LayerSpec(bits=bits, group_size=group_size, desc_act=act_order, sym=False, in_features=128,
                     out_features=64, device=torch.device("cpu"), dtype=dtype)


def _graph_breaks(layer, x) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(layer)(x).graph_break_count


@pytest.mark.parametrize("cls,dtype", [(TorchQuantLinear, torch.float32), (CpuInt4QuantLinear, torch.bfloat16)],
                         ids=["torch", "cpu_int4"])
@pytest.mark.parametrize("bits,group_size,act_order", [(4, -1, True), (4, 32, True), (3, 32, True)])
def test_cpu_backends_trace_without_graph_breaks(gptq, cls, dtype, bits, group_size, act_order):
    spec = _spec(bits, group_size, act_order, dtype)
    if cls.validate(spec) is not None:
        pytest.skip(f"{cls.NAME} does not serve {bits}-bit")
    t = gptq.make(128, 64, bits, group_size, act_order, False)
    layer = gptq.build(cls, dict(t), spec)
    assert _graph_breaks(layer, torch.randn(1, 128).to(dtype)) == 0


def test_triton_backend_traces_without_graph_breaks(gptq, interpreter):
    if not interpreter:
        return
    t = gptq.make(128, 64, 4, 32, True, False)
    layer = gptq.build(TritonQuantLinear, dict(t), _spec(4, 32, True, torch.float32))
    x = torch.randn(1, 128)
    assert _graph_breaks(layer, x) == 0
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))


def test_self_check_keeps_the_triton_kernel_under_the_interpreter(tmp_path, interpreter):
    if not interpreter:
        return
    write_checkpoint(tmp_path, bits=4, group_size=32, desc_act=True, sym=False, config=tiny_config())
    model = from_quantized(tmp_path, kernel="triton", torch_dtype="float32", compile="off")
    assert model.selfcheck_notes == []
    assert set(model.kernel_report.values()) == {"triton"}


def test_a_wrong_triton_kernel_gives_way_to_the_next_backend(tmp_path, interpreter, monkeypatch):
    if not interpreter:
        return
    right = TritonQuantLinear.forward
    monkeypatch.setattr(TritonQuantLinear, "forward", lambda self, x: right(self, x) * 1.1)
    write_checkpoint(tmp_path, bits=4, group_size=32, desc_act=True, sym=False, config=tiny_config())
    model = from_quantized(tmp_path, kernel="triton", torch_dtype="float32", compile="off")
    assert set(model.kernel_report.values()) == {"torch"}
    assert all("triton: relative error" in note for note in model.selfcheck_notes)


def test_the_check_slices_whole_zero_point_words():
    # 3-bit zeros pack 32 values in 3 words: the checked columns end on a word boundary for every width
    for bits in (2, 3, 4, 8):
        assert selfcheck.MAX_COLUMNS * bits % 32 == 0
