"""Loader: the real StarCoder config on meta, AutoGPTQ/GPTQModel checkpoints, file resolution, bad inputs."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend import loader
from backend.loader import ModelLoadError, from_quantized
from backend.quant_config import QuantConfig
from tests.helpers.checkpoints import tiny_config, write_checkpoint

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "starcoder-gptq"
STARCODER_SHAPES = {  # layer: (K, N)
    "attn.c_attn": (6144, 6400), "attn.c_proj": (6144, 6144), "mlp.c_fc": (6144, 24576), "mlp.c_proj": (24576, 6144),
}


def test_real_starcoder_config_on_meta_device():
    config = loader.load_model_config(FIXTURE)
    qcfg = QuantConfig.from_dir(FIXTURE)
    model = loader.build_skeleton(config, qcfg, torch.float16)
    state = model.state_dict()
    assert config.n_layer == 40
    for i in range(40):
        for layer, (k, n) in STARCODER_SHAPES.items():
            prefix = f"transformer.h.{i}.{layer}"
            assert state[f"{prefix}.qweight"].shape == (k // 8, n) and state[f"{prefix}.qweight"].dtype == torch.int32
            assert state[f"{prefix}.qzeros"].shape == (1, n // 8)
            assert state[f"{prefix}.scales"].shape == (1, n) and state[f"{prefix}.scales"].dtype == torch.float16
            assert state[f"{prefix}.g_idx"].shape == (k,)
            assert state[f"{prefix}.bias"].shape == (n,)
    assert state["transformer.wte.weight"].shape == (49152, 6144)
    assert state["transformer.wpe.weight"].shape == (8192, 6144)
    # files.tsv: model.safetensors is 8.91 GB (4-bit layers + fp16 embeddings, norms and its own lm_head)
    estimate = loader.estimate_memory(model, separate_head=True)
    assert 8.8e9 < estimate.total_bytes < 9.0e9
    assert 7.5e9 < estimate.quantized_bytes < 7.7e9
    # a head equal to the embedding is shared once loaded: 49152 × 6144 fp16 less
    shared = loader.estimate_memory(model, separate_head=False)
    assert estimate.total_bytes - shared.total_bytes == 49152 * 6144 * 2


CASES = [  # AutoGPTQ writes v1 ("gptq"); GPTQModel writes v2 and its own keys
    dict(bits=4, group_size=-1, desc_act=True, sym=True, fmt="gptq"),     # TheBloke's recipe
    dict(bits=4, group_size=32, desc_act=True, sym=False, fmt="gptq"),
    dict(bits=4, group_size=32, desc_act=False, sym=True, fmt="gptq"),
    dict(bits=4, group_size=-1, desc_act=False, sym=False, fmt="gptq"),
    dict(bits=4, group_size=-1, desc_act=True, sym=True, fmt="gptq_v2"),
    dict(bits=4, group_size=32, desc_act=True, sym=False, fmt="gptq_v2"),
    dict(bits=3, group_size=32, desc_act=False, sym=False, fmt="gptq"),
    dict(bits=2, group_size=32, desc_act=True, sym=True, fmt="gptq_v2"),
    dict(bits=8, group_size=-1, desc_act=False, sym=True, fmt="gptq"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_checkpoints_give_the_dense_models_logits(tmp_path, case):
    dense = write_checkpoint(tmp_path, **case)
    model = from_quantized(tmp_path, torch_dtype=torch.float32, kernel="torch")
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-4)


def test_model_card_call_and_generate(tmp_path):
    write_checkpoint(tmp_path, weights_name="gptq_model-4bit--1g.safetensors")
    model = from_quantized(tmp_path, model_basename="gptq_model-4bit--1g", use_safetensors=True,
                           trust_remote_code=False, device="cpu", use_triton=False, quantize_config=None)
    assert model.weights_files == ["gptq_model-4bit--1g.safetensors"]
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, do_sample=False)
    assert out.shape[1] >= 4 and torch.equal(out[0, :3], torch.tensor([1, 2, 3]))
    assert model.dtype == torch.bfloat16   # CPU default: the packed-int4 CPU kernel's fast dtype


def test_lm_head_optional_and_shared_when_equal(tmp_path):
    write_checkpoint(tmp_path / "with", with_lm_head=True)
    write_checkpoint(tmp_path / "without", with_lm_head=False)
    for name in ("with", "without"):
        model = from_quantized(tmp_path / name, torch_dtype=torch.float32)
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_untied_head_is_kept(tmp_path):
    write_checkpoint(tmp_path, config=tiny_config(tie_word_embeddings=False))
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"].float()).half()
    save_file(state, str(path))
    model = from_quantized(tmp_path, torch_dtype=torch.float32)
    torch.testing.assert_close(model.lm_head.weight, state["lm_head.weight"].float())


def test_bf16_non_quantized_tensors_and_quantization_config_in_config_json(tmp_path):
    write_checkpoint(tmp_path, quantize_config_in="config.json")
    path = tmp_path / "model.safetensors"
    state = {k: (v.bfloat16() if v.dtype == torch.float16 and not k.endswith("scales") else v)
             for k, v in load_file(path).items()}
    save_file(state, str(path))
    model = from_quantized(tmp_path, torch_dtype="float32")
    assert model.transformer.wte.weight.dtype == torch.float32


def test_weights_resolution_order(tmp_path):
    write_checkpoint(tmp_path)
    qcfg = QuantConfig.from_dir(tmp_path)
    assert loader.resolve_weights(tmp_path, None, qcfg) == [tmp_path / "model.safetensors"]
    shutil.copy(tmp_path / "model.safetensors", tmp_path / "other.safetensors")
    assert loader.resolve_weights(tmp_path, "other", qcfg) == [tmp_path / "other.safetensors"]
    (tmp_path / "model.safetensors").unlink()
    nameless = QuantConfig(bits=4)
    assert loader.resolve_weights(tmp_path, None, nameless) == [tmp_path / "other.safetensors"]
    shutil.copy(tmp_path / "other.safetensors", tmp_path / "third.safetensors")
    with pytest.raises(ModelLoadError, match="several .safetensors.*model_basename"):
        loader.resolve_weights(tmp_path, None, nameless)


def test_sharded_checkpoint(tmp_path):
    dense = write_checkpoint(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, str(tmp_path / name))
        weight_map.update({k: name for k in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    qcfg = json.loads((tmp_path / "quantize_config.json").read_text())
    qcfg["model_file_base_name"] = None
    (tmp_path / "quantize_config.json").write_text(json.dumps(qcfg))
    model = from_quantized(tmp_path, torch_dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-4)


def test_pickle_refused_unless_allowed(tmp_path):
    write_checkpoint(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle.*arbitrary code.*allow_pickle"):
        from_quantized(tmp_path)
    with pytest.raises(ModelLoadError, match="use_safetensors=False.*allow_pickle"):
        from_quantized(tmp_path, use_safetensors=False)
    model = from_quantized(tmp_path, allow_pickle=True, torch_dtype=torch.float32)
    assert model.transformer.h[0].attn.c_attn.qweight.dtype == torch.int32


def test_trust_remote_code_refused(tmp_path):
    write_checkpoint(tmp_path)
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        from_quantized(tmp_path, trust_remote_code=True)


def _edit_state(tmp_path, edit):
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, str(path))


@pytest.mark.parametrize("edit,expect", [
    (lambda s: s.pop("transformer.h.1.mlp.c_fc.qweight"), r"missing tensors: transformer\.h\.1\.mlp\.c_fc\.qweight"),
    (lambda s: s.__setitem__("transformer.h.0.extra", torch.zeros(1)), r"unexpected tensors: transformer\.h\.0\.extra"),
    (lambda s: s.__setitem__("transformer.h.0.attn.c_proj.qweight", torch.zeros(4, 64, dtype=torch.int32)),
     r"transformer\.h\.0\.attn\.c_proj\.qweight has shape \(4, 64\) but .* expect \(8, 64\)"),
    (lambda s: s.__setitem__("transformer.h.0.attn.c_proj.qweight", torch.zeros(8, 64)),
     r"qweight is torch\.float32, expected int32"),
])
def test_bad_tensors_are_named(tmp_path, edit, expect):
    write_checkpoint(tmp_path)
    _edit_state(tmp_path, edit)
    with pytest.raises(ModelLoadError, match=expect):
        from_quantized(tmp_path)


def test_mismatched_bits_names_both_shapes(tmp_path):
    write_checkpoint(tmp_path, bits=4)
    qcfg = json.loads((tmp_path / "quantize_config.json").read_text())
    (tmp_path / "quantize_config.json").write_text(json.dumps(dict(qcfg, bits=8)))
    with pytest.raises(ModelLoadError, match=r"has shape \(8, .*expect \(16, .*check bits/group_size"):
        from_quantized(tmp_path)


def test_truncated_file(tmp_path):
    write_checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="download it again"):
        from_quantized(tmp_path)


@pytest.mark.parametrize("content,expect", [
    ("{not json", "not valid JSON"), (json.dumps({"model_type": "llama"}), "model_type is 'llama'.*gpt_bigcode"),
])
def test_bad_config_json(tmp_path, content, expect):
    write_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ModelLoadError, match=expect):
        from_quantized(tmp_path)


def test_missing_pieces(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        from_quantized(tmp_path / "nope")
    write_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights file.*incomplete"):
        from_quantized(tmp_path)
    write_checkpoint(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        from_quantized(tmp_path)


def test_auto_device_map_with_memory_limits(tmp_path):
    dense = write_checkpoint(tmp_path)
    model = from_quantized(tmp_path, device="auto", torch_dtype=torch.float32, max_memory={"cpu": 10**9})
    assert set(model.hf_device_map.values()) == {"cpu"}
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ModelLoadError, match="does not fit in the memory allowed"):
        from_quantized(tmp_path, device="auto", max_memory={"cpu": 1000})


def test_refuses_when_memory_cannot_fit(tmp_path, monkeypatch):
    write_checkpoint(tmp_path)
    monkeypatch.setattr(loader, "_available_bytes", lambda device: 1000)
    with pytest.raises(ModelLoadError, match=r"needs .* GB of weights .* has only 0\.00 GB free"):
        from_quantized(tmp_path)


def test_forced_kernel_that_cannot_serve_says_which_can(tmp_path):
    write_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="unknown kernel 'warp9'"):
        from_quantized(tmp_path, kernel="warp9")


def test_dequantized_twin_matches(tmp_path):
    dense = write_checkpoint(tmp_path, bits=4, group_size=32, desc_act=True, sym=False)
    twin = loader.load_dequantized(tmp_path)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        torch.testing.assert_close(twin(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-4)


def test_demo_model_logits_match_its_dequantized_weights(demo_dir):
    model = from_quantized(demo_dir, torch_dtype=torch.float32, kernel="torch")
    twin = loader.load_dequantized(demo_dir)
    ids = torch.tensor([[1] + list(range(40, 80))])
    with torch.no_grad():
        logits = model(ids).logits
        torch.testing.assert_close(logits, twin(ids).logits, rtol=1e-4, atol=1e-4)
    assert model.quantize_config.to_dict()["bits"] == 4 and model.quantize_config.desc_act
    # a trained model, not noise: its next-token distribution is far from uniform
    assert torch.softmax(logits[0, -1], -1).max() > 5 / logits.shape[-1]
