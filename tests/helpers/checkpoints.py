"""Write small GPTQ checkpoints the way AutoGPTQ (v1) and GPTQModel (v2) lay them out, for loader tests.

The packing here is written independently of kernels/reference.py, after AutoGPTQ's `pack()` loop
(numpy, row by row), so a shared misreading of the format cannot hide in both.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def tiny_config(**overrides) -> GPTBigCodeConfig:
    base = dict(vocab_size=96, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=128,
                multi_query=True, activation_function="gelu_pytorch_tanh", bos_token_id=0, eos_token_id=0,
                tie_word_embeddings=True)
    base.update(overrides)
    return GPTBigCodeConfig(**base)


def autogptq_pack_rows(intweight: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ's loop: values along axis 0 into uint32 words, 3-bit words spanning boundaries."""
    intweight = intweight.astype(np.uint32)
    rows = intweight.shape[0] * bits // 32
    out = np.zeros((rows, intweight.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < rows:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                out[row] |= intweight[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
        else:
            for j in range(i, i + 10):
                out[row] |= intweight[j] << (3 * (j - i))
            i += 10
            out[row] |= intweight[i] << 30
            row += 1
            out[row] |= (intweight[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                out[row] |= intweight[j] << (3 * (j - i) + 1)
            i += 10
            out[row] |= intweight[i] << 31
            row += 1
            out[row] |= (intweight[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                out[row] |= intweight[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
    return out.view(np.int32)


def quantize_layer(in_features: int, out_features: int, bits: int, group_size: int, desc_act: bool, sym: bool,
                   fmt: str, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random GPTQ tensors for one layer and the dense weight [N, K] (nn.Linear layout) they encode."""
    g = in_features if group_size == -1 else group_size
    groups = in_features // g
    maxq = 2 ** bits - 1
    q = torch.randint(0, maxq + 1, (in_features, out_features), generator=gen)
    if sym:
        zeros = torch.full((groups, out_features), (maxq + 1) // 2)
    else:
        zeros = torch.randint(1, maxq + 1, (groups, out_features), generator=gen)
    scales = (torch.rand(groups, out_features, generator=gen) * 0.02 + 0.005).half()
    if desc_act:
        perm = torch.randperm(in_features, generator=gen)
        g_idx = torch.empty(in_features, dtype=torch.int32)
        g_idx[perm] = (torch.arange(in_features) // g).int()
    else:
        g_idx = (torch.arange(in_features) // g).int()
    dense = scales.float()[g_idx.long()] * (q - zeros[g_idx.long()]).float()          # [K, N]
    stored = zeros - 1 if fmt == "gptq" else zeros                                     # v1 stores zero - 1
    tensors = {
        "qweight": torch.from_numpy(autogptq_pack_rows(q.numpy(), bits)),
        "qzeros": torch.from_numpy(autogptq_pack_rows(stored.numpy().T.copy(), bits).T.copy()),
        "scales": scales,
        "g_idx": g_idx,
    }
    return tensors, dense.T.contiguous()


def write_checkpoint(folder: Path, bits: int = 4, group_size: int = -1, desc_act: bool = False,
                     sym: bool = True, fmt: str = "gptq", with_lm_head: bool = True, seed: int = 0,
                     weights_name: str = "model.safetensors", config: GPTBigCodeConfig | None = None,
                     quantize_config_in: str = "quantize_config.json") -> GPTBigCodeForCausalLM:
    """Write a checkpoint to `folder`; return the dense fp32 model it encodes (the expected logits)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = config or tiny_config()
    torch.manual_seed(seed)
    dense_model = GPTBigCodeForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in dense_model.named_modules():
        if not name.endswith(LAYERS):
            continue
        tensors, weight = quantize_layer(module.in_features, module.out_features, bits, group_size, desc_act,
                                         sym, fmt, gen)
        with torch.no_grad():
            module.weight.copy_(weight)
            module.bias.copy_(module.bias.half().float())
        for key, value in tensors.items():
            state[f"{name}.{key}"] = value
        state[f"{name}.bias"] = module.bias.detach().half()
    for name, param in dense_model.named_parameters():
        if name.rsplit(".", 1)[0].endswith(LAYERS):
            continue
        with torch.no_grad():
            param.copy_(param.half().float())
        state[name] = param.detach().half().clone()
    if with_lm_head:
        state["lm_head.weight"] = dense_model.transformer.wte.weight.detach().half().clone()
    else:
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / weights_name), metadata={"format": "pt"})
    qcfg = {"bits": bits, "group_size": group_size, "damp_percent": 0.01, "desc_act": desc_act, "sym": sym,
            "true_sequential": True, "model_name_or_path": None,
            "model_file_base_name": weights_name.removesuffix(".safetensors")}
    if fmt == "gptq_v2":
        # GPTQModel's keys
        qcfg.update({"checkpoint_format": "gptq_v2", "quant_method": "gptq", "pack_dtype": "int32",
                     "meta": {"quantizer": ["gptqmodel:1.0"]}, "static_groups": False, "lm_head": False})
    cfg = config.to_dict()
    if quantize_config_in == "config.json":
        cfg["quantization_config"] = dict(qcfg, quant_method="gptq")
    else:
        (folder / "quantize_config.json").write_text(json.dumps(qcfg, indent=2))
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return dense_model


SPECIAL_TOKENS = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<filename>",
                  "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>",
                  "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<empty_output>", "<commit_before>",
                  "<commit_msg>", "<commit_after>", "<reponame>"]


def write_tokenizer(folder: Path, vocab_size: int = 96) -> None:
    """A byte-level BPE with StarCoder's special tokens at ids 0-18 (vocab_size ≥ 19 + 256 is not needed:
    the byte alphabet is capped by the trainer's limit, so tests stay tiny)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["def f(x):\n    return x + 1\n", "import os\nprint('hi')\n", "class A:\n    pass\n"] * 20
    tok.train_from_iterator(text, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", additional_special_tokens=SPECIAL_TOKENS[1:])
    fast.save_pretrained(str(folder))
