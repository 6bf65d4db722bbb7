"""Quantize a GPTBigCode model block by block (GPTQ or RTN) and save it in AutoGPTQ's file layout."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from backend.quant_config import QuantConfig
from quantizer.gptq import GPTQ, QuantizedLayer, rtn_quantize

log = logging.getLogger(__name__)

# AutoGPTQ's inside_layer_modules for gpt_bigcode; with true_sequential each group sees the
# outputs of the groups before it already quantized
SEQUENTIAL_GROUPS: tuple[tuple[str, ...], ...] = (("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",),
                                                 ("mlp.c_proj",))
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json")


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the first block is needed."""


def quantized_module_names(model: nn.Module) -> list[str]:
    """Full names of the linears a GPTQ StarCoder checkpoint stores quantized, in block order."""
    return [f"transformer.h.{i}.{sub}" for i in range(len(model.transformer.h))
            for group in SEQUENTIAL_GROUPS for sub in group]


def sample_calibration(token_ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """`nsamples` random windows of `seqlen` tokens from a 1-D token stream -> [nsamples, seqlen]."""
    if token_ids.numel() <= seqlen:
        raise ValueError(f"calibration text has {token_ids.numel()} tokens; need more than {seqlen}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, token_ids.numel() - seqlen, (nsamples,), generator=gen)
    return torch.stack([token_ids[s:s + seqlen] for s in starts.tolist()])


@torch.no_grad()
def _capture_block_inputs(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[tuple[tuple, dict]]:
    # the first block's (args, kwargs) per batch: embeddings plus whatever mask the model built
    captured: list[tuple[tuple, dict]] = []

    def hook(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    handle = model.transformer.h[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(input_ids=ids, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _run_block(block: nn.Module, inputs: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
    outputs = []
    for args, kwargs in inputs:
        out = block(*args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        outputs.append(((hidden,) + tuple(args[1:]), kwargs))
    return outputs


def _set_fake_quantized(module: nn.Linear, layer: QuantizedLayer) -> None:
    # later blocks must see this layer as a reader will: its dequantized weight
    module.weight.data = layer.dequantize().t().to(module.weight.dtype).contiguous()


@torch.no_grad()
def quantize_model(model: nn.Module, calib_ids: torch.Tensor | Sequence[torch.Tensor] | None,
                   cfg: QuantConfig, method: str = "gptq", damp_percent: float = 0.01,
                   true_sequential: bool = True, batch_size: int = 8,
                   blocksize: int = 128) -> dict[str, QuantizedLayer]:
    """Quantize every attn/mlp linear of a GPTBigCodeForCausalLM in place.

    Each quantized module's weight is replaced by its fake-quantized value (so the model then
    computes what a reader of the checkpoint computes); returns {module name: QuantizedLayer}.
    calib_ids: [n, S] token ids (or a list of [S_i] tensors); unused by "rtn".
    """
    if method not in ("gptq", "rtn"):
        raise ValueError(f"method {method!r}: use 'gptq' or 'rtn'")
    modules = dict(model.named_modules())
    for name in quantized_module_names(model):
        cfg.check_layer(name, modules[name].in_features)
    if method == "rtn":
        result = {}
        for name in quantized_module_names(model):
            result[name] = rtn_quantize(modules[name].weight, cfg.bits, cfg.group_size, cfg.sym)
            _set_fake_quantized(modules[name], result[name])
        return result

    if calib_ids is None or len(calib_ids) == 0:
        raise ValueError("GPTQ needs calibration token ids")
    device = next(model.parameters()).device
    rows = [t.reshape(1, -1) for t in calib_ids] if not torch.is_tensor(calib_ids) else list(calib_ids[:, None])
    batches = _batch(rows, batch_size, device)
    was_training = model.training
    model.eval()
    inputs = _capture_block_inputs(model, batches)
    groups = SEQUENTIAL_GROUPS if true_sequential else (tuple(s for g in SEQUENTIAL_GROUPS for s in g),)
    result: dict[str, QuantizedLayer] = {}
    for i, block in enumerate(model.transformer.h):
        for group in groups:
            subs = {sub: block.get_submodule(sub) for sub in group}
            gptqs = {sub: GPTQ(m.in_features, device) for sub, m in subs.items()}
            handles = [m.register_forward_hook(lambda _m, inp, _out, g=gptqs[sub]: g.add_batch(inp[0]))
                       for sub, m in subs.items()]
            try:
                _run_block(block, inputs)
            finally:
                for h in handles:
                    h.remove()
            for sub, m in subs.items():
                name = f"transformer.h.{i}.{sub}"
                result[name] = gptqs[sub].quantize(m.weight, cfg.bits, cfg.group_size, cfg.sym,
                                                   cfg.desc_act, damp_percent, blocksize)
                _set_fake_quantized(m, result[name])
                log.info("quantized %s (%d calibration rows)", name, gptqs[sub].nsamples)
        # the next block is calibrated on what this already-quantized block outputs
        inputs = _run_block(block, inputs)
    model.train(was_training)
    return result


def _batch(rows: list[torch.Tensor], batch_size: int, device) -> list[torch.Tensor]:
    # only rows of equal length share a batch, so no padding (and no mask) is ever needed
    by_len: dict[int, list[torch.Tensor]] = {}
    for r in rows:
        by_len.setdefault(r.shape[-1], []).append(r)
    out = []
    for same in by_len.values():
        for j in range(0, len(same), batch_size):
            out.append(torch.cat(same[j:j + batch_size]).long().to(device))
    return out


def checkpoint_tensors(model: nn.Module, layers: dict[str, QuantizedLayer],
                       checkpoint_format: str = "gptq") -> dict[str, torch.Tensor]:
    """The checkpoint's state dict: packed quantized layers, every other tensor in fp16."""
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if module in layers and leaf == "weight":
            for part, t in layers[module].pack(checkpoint_format).items():
                tensors[f"{module}.{part}"] = t
        elif value.is_floating_point():
            tensors[key] = value.detach().to(torch.float16).contiguous()
        else:
            tensors[key] = value.detach().contiguous()
    lm_head = getattr(model, "lm_head", None)
    if lm_head is not None and lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr():
        # tied: the reader takes lm_head from wte, and safetensors refuses shared storage anyway
        tensors.pop("lm_head.weight", None)
    return {k: v.cpu() for k, v in tensors.items()}


def quantize_config_dict(cfg: QuantConfig, damp_percent: float, true_sequential: bool = True,
                         model_name_or_path: str | None = None) -> dict[str, Any]:
    """quantize_config.json with the keys (and order) of TheBloke's files."""
    out: dict[str, Any] = {"bits": cfg.bits, "group_size": cfg.group_size, "damp_percent": damp_percent,
                           "desc_act": cfg.desc_act, "sym": cfg.sym, "true_sequential": true_sequential,
                           "model_name_or_path": model_name_or_path,
                           "model_file_base_name": cfg.model_file_base_name or "model",
                           "quant_method": "gptq"}
    if cfg.checkpoint_format != "gptq":
        out["checkpoint_format"] = cfg.checkpoint_format
    return out


def save_quantized(out_dir: str | Path, model: nn.Module, layers: dict[str, QuantizedLayer],
                   cfg: QuantConfig, damp_percent: float = 0.01, true_sequential: bool = True,
                   model_name_or_path: str | None = None, tokenizer: Any = None) -> Path:
    """Write model.safetensors, quantize_config.json, config.json (+ quantization_config),
    generation_config.json and the tokenizer (an object with save_pretrained, or a folder)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = cfg.model_file_base_name or "model"
    save_file(checkpoint_tensors(model, layers, cfg.checkpoint_format), str(out / f"{base}.safetensors"),
              metadata={"format": "pt"})
    qcfg = quantize_config_dict(cfg, damp_percent, true_sequential, model_name_or_path)
    _write_json(out / "quantize_config.json", qcfg)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    config["dtype"] = "float16"
    config.pop("_name_or_path", None)
    config["quantization_config"] = qcfg
    _write_json(out / "config.json", config)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(out)
    if isinstance(tokenizer, (str, Path)):
        for name in TOKENIZER_FILES:
            if (Path(tokenizer) / name).is_file():
                shutil.copy2(Path(tokenizer) / name, out / name)
    elif tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
