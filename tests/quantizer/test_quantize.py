"""Tests for the GPTQ/RTN quantizer: error against RTN, packed layout, exact dequantization, saved files."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from backend.quant_config import QuantConfig
from kernels.reference import default_g_idx, dequantize
from quantizer.gptq import GPTQ, rtn_quantize
from quantizer.quantize import (checkpoint_tensors, quantize_model, quantized_module_names, sample_calibration,
                                save_quantized)
from tests.helpers.checkpoints import tiny_config


def _correlated_inputs(n: int, k: int, seed: int = 0) -> torch.Tensor:
    # a few strong shared directions plus per-feature scales spanning 30x, like real activations
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, k // 4, generator=gen)
    mix = torch.randn(k // 4, k, generator=gen)
    scale = torch.logspace(-0.7, 0.8, k)[torch.randperm(k, generator=gen)]
    return (latent @ mix + 0.3 * torch.randn(n, k, generator=gen)) * scale


def _layer_gptq(weight: torch.Tensor, x: torch.Tensor, **kwargs):
    gptq = GPTQ(weight.shape[1])
    for chunk in x.split(256):
        gptq.add_batch(chunk.unsqueeze(0))
    return gptq.quantize(weight, **kwargs)


@pytest.mark.parametrize("desc_act", [False, True])
@pytest.mark.parametrize("bits,group_size", [(4, -1), (3, 32), (2, 32)])
def test_gptq_output_error_below_rtn(bits: int, group_size: int, desc_act: bool) -> None:
    torch.manual_seed(1)
    weight = torch.randn(96, 128) * 0.05
    x = _correlated_inputs(2048, 128)
    ref = x @ weight.t()
    rtn = rtn_quantize(weight, bits, group_size, sym=True)
    gptq = _layer_gptq(weight, x, bits=bits, group_size=group_size, sym=True, desc_act=desc_act)
    err_rtn = (x @ rtn.dequantize() - ref).pow(2).mean()
    err_gptq = (x @ gptq.dequantize() - ref).pow(2).mean()
    assert err_gptq < 0.7 * err_rtn, (err_gptq, err_rtn)


def test_act_order_helps_at_group_minus_one() -> None:
    torch.manual_seed(2)
    weight = torch.randn(64, 128) * 0.05
    x = _correlated_inputs(2048, 128, seed=3)
    errs = [(x @ _layer_gptq(weight, x, bits=4, desc_act=d).dequantize() - x @ weight.t()).pow(2).mean()
            for d in (False, True)]
    assert errs[1] < errs[0]


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("desc_act", [False, True])
@pytest.mark.parametrize("group_size", [-1, 32])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packed_layout_and_exact_dequantize(bits: int, group_size: int, desc_act: bool, sym: bool,
                                            fmt: str) -> None:
    k, n = 96, 64
    torch.manual_seed(bits * 7 + group_size)
    weight = torch.randn(n, k) * 0.02 + 0.003
    layer = _layer_gptq(weight, _correlated_inputs(512, k), bits=bits, group_size=group_size, sym=sym,
                        desc_act=desc_act, blocksize=40)
    packed = layer.pack(fmt)
    groups = 1 if group_size == -1 else k // group_size
    assert packed["qweight"].shape == (k * bits // 32, n) and packed["qweight"].dtype == torch.int32
    assert packed["qzeros"].shape == (groups, n * bits // 32) and packed["qzeros"].dtype == torch.int32
    assert packed["scales"].shape == (groups, n) and packed["scales"].dtype == torch.float16
    assert packed["g_idx"].shape == (k,) and packed["g_idx"].dtype == torch.int32
    counts = torch.bincount(packed["g_idx"].long(), minlength=groups)
    assert counts.tolist() == [k // groups] * groups
    if not desc_act or group_size == -1:
        assert torch.equal(packed["g_idx"], default_g_idx(k, group_size))
    if sym and bits == 4 and fmt == "gptq":
        assert (packed["qzeros"] == 0x77777777).all()
    zero_offset = 1 if fmt == "gptq" else 0
    w = dequantize(packed["qweight"], packed["qzeros"], packed["scales"], packed["g_idx"], bits, zero_offset)
    assert torch.equal(w, layer.dequantize())
    # the grid is sane: the fake-quantized weight is close to the original
    assert (w.t() - weight).abs().mean() < weight.abs().mean()


def test_act_order_groups_follow_descending_hessian_diagonal() -> None:
    k = 64
    x = _correlated_inputs(512, k, seed=5)
    layer = _layer_gptq(torch.randn(32, k) * 0.02, x, bits=4, group_size=16, desc_act=True)
    order = torch.argsort((x * x).sum(0), descending=True)
    # AutoGPTQ's g_idx[perm[i]] = i // group_size
    assert torch.equal(layer.g_idx[order].long(), torch.arange(k) // 16)


def _tiny_model():
    from transformers import GPTBigCodeForCausalLM

    torch.manual_seed(0)
    return GPTBigCodeForCausalLM(tiny_config()).eval()


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_quantize_model_save_and_read_back(tmp_path, fmt: str) -> None:
    model = _tiny_model()
    ids = sample_calibration(torch.randint(0, 96, (4096,)), nsamples=16, seqlen=32)
    reference = model(ids).logits
    cfg = QuantConfig(bits=4, group_size=32, desc_act=True, sym=True, checkpoint_format=fmt,
                      model_file_base_name="model")
    layers = quantize_model(model, ids, cfg, "gptq", damp_percent=0.01)
    assert sorted(layers) == sorted(quantized_module_names(model))
    out = save_quantized(tmp_path / "q", model, layers, cfg, damp_percent=0.01)

    expected_qc = {"bits": 4, "group_size": 32, "damp_percent": 0.01, "desc_act": True, "sym": True,
                   "true_sequential": True, "model_name_or_path": None, "model_file_base_name": "model",
                   "quant_method": "gptq"}
    if fmt == "gptq_v2":
        expected_qc["checkpoint_format"] = "gptq_v2"
    qc = json.loads((out / "quantize_config.json").read_text())
    assert qc == expected_qc and list(qc) == list(expected_qc)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == expected_qc
    assert config["model_type"] == "gpt_bigcode" and config["architectures"] == ["GPTBigCodeForCausalLM"]
    assert (out / "generation_config.json").is_file()
    read = QuantConfig.from_dir(out)
    assert (read.bits, read.group_size, read.desc_act, read.checkpoint_format) == (4, 32, True, fmt)

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert "lm_head.weight" not in tensors  # tied to wte
    for name in layers:
        assert f"{name}.weight" not in tensors
        assert tensors[f"{name}.bias"].dtype == torch.float16
        w = dequantize(tensors[f"{name}.qweight"], tensors[f"{name}.qzeros"], tensors[f"{name}.scales"],
                       tensors[f"{name}.g_idx"], 4, read.zero_offset)
        assert torch.equal(w.t(), model.get_submodule(name).weight)
    assert tensors["transformer.wte.weight"].dtype == torch.float16

    quantized = model(ids).logits
    assert 0 < (quantized - reference).abs().max() < 0.5 * reference.abs().max()


def test_rtn_model_and_gptq_beats_it() -> None:
    model = _tiny_model()
    ids = sample_calibration(torch.randint(0, 96, (4096,)), nsamples=16, seqlen=32, seed=1)
    reference = model(ids).logits
    cfg = QuantConfig(bits=3, group_size=-1, desc_act=True)
    errors = {}
    for method in ("rtn", "gptq"):
        m = copy.deepcopy(model)
        layers = quantize_model(m, ids, cfg, method)
        assert set(checkpoint_tensors(m, layers)) >= {f"{n}.qweight" for n in layers}
        errors[method] = (m(ids).logits - reference).pow(2).mean()
    assert errors["gptq"] < errors["rtn"]


def test_cli_help() -> None:
    out = subprocess.run([sys.executable, "-m", "quantizer", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--desc-act" in out.stdout
