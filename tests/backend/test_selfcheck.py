"""The load-time self-check keeps agreeing kernels and moves a wrong one's layer type to the next backend."""
from __future__ import annotations

import pytest
import torch

from backend.loader import from_quantized
from backend.qlinear import CpuInt4QuantLinear


def test_agreeing_kernels_are_kept_on_the_demo_model(demo_dir):
    model = from_quantized(demo_dir, compile="off")
    assert model.selfcheck_notes == []
    assert set(model.kernel_report.values()) == {"cpu_int4"}


@pytest.mark.parametrize("kernel", ["auto", "cpu_int4"])
def test_a_wrong_kernel_moves_its_layer_type_to_the_reference(demo_dir, monkeypatch, kernel):
    right = CpuInt4QuantLinear.forward

    def off_by_a_step(self, x):
        return right(self, x) + 0.5
    monkeypatch.setattr(CpuInt4QuantLinear, "forward", off_by_a_step)
    model = from_quantized(demo_dir, kernel=kernel, compile="off")
    assert set(model.kernel_report.values()) == {"torch"}
    assert len(model.selfcheck_notes) == 4
    assert all("cpu_int4: relative error" in n and "moved to the torch kernel" in n for n in model.selfcheck_notes)
    # the moved layers compute what the reference computes
    dense = from_quantized(demo_dir, kernel="torch", compile="off")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, dense(input_ids=ids).logits)


def test_a_kernel_that_raises_only_on_some_shapes_fails_the_check(demo_dir, monkeypatch):
    right = CpuInt4QuantLinear.forward

    def breaks_on_prefill(self, x):
        if x.reshape(-1, x.shape[-1]).shape[0] > 16:
            raise RuntimeError("launch failed")
        return right(self, x)
    monkeypatch.setattr(CpuInt4QuantLinear, "forward", breaks_on_prefill)
    model = from_quantized(demo_dir, compile="off")
    assert set(model.kernel_report.values()) == {"torch"}
    assert "RuntimeError: launch failed" in model.selfcheck_notes[0]
