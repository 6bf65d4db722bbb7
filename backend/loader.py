"""Load a GPTQ StarCoder checkpoint: Checkpoint → meta skeleton → QuantLinear swap → safetensors → device."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from accelerate import dispatch_model, infer_auto_device_map
from safetensors import safe_open
from torch import nn
from transformers import AutoTokenizer, GPTBigCodeForCausalLM

from backend import attention, decode, selfcheck
from backend.checkpoint import (QUANTIZED_LAYERS, Checkpoint, MemoryEstimate, ModelLoadError, placement_of,
                                build_skeleton, estimate_memory, has_separate_head, layer_spec, load_model_config,
                                quantized_linears, resolve_weights)
from backend.quant_config import QuantConfig
from kernels.reference import dequantize

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------- loading tensors

def read_tensors(files: list[Path], expected: dict[str, torch.Tensor], placement: dict[str, torch.device],
                    dtype: torch.dtype, qcfg: QuantConfig, tied: bool) -> dict[str, torch.Tensor]:
    """Every expected tensor, checked by name, shape and dtype, on its device; mmap-backed on CPU.

    lm_head.weight may be absent when the config ties it to the input embedding.
    """
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for path in files:
        if path.suffix != ".safetensors":
            # only reached when the caller allowed pickle explicitly
            for key, tensor in torch.load(path, map_location="cpu", weights_only=True).items():
                if key in expected:
                    state[key] = _convert(key, tensor, expected[key], dtype, placement[key], path)
                else:
                    unexpected.append(key)
            continue
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types for truncated headers
            raise ModelLoadError(f"{path}: not a readable safetensors file ({exc}); the download is "
                                 f"probably cut off, download it again.") from None
        with handle:
            for key in handle.keys():
                if key not in expected:
                    unexpected.append(key)
                    continue
                try:
                    tensor = handle.get_tensor(key)
                except Exception as exc:
                    raise ModelLoadError(f"{path}: tensor {key} cannot be read ({exc}); the file is "
                                         f"truncated or corrupt, download it again.") from None
                state[key] = _convert(key, tensor, expected[key], dtype, placement[key], path)
    missing = [k for k in expected if k not in state and not (k == "lm_head.weight" and tied)]
    absent_g_idx = [k for k in missing if k.endswith(".g_idx")]
    for key in absent_g_idx:
        # GPTQ-for-LLaMa checkpoints predate g_idx: rows then map to groups in order
        ref = expected[key]
        size = ref.shape[0]
        group = size if qcfg.group_size == -1 else qcfg.group_size
        state[key] = (torch.arange(size, dtype=torch.int32) // group).to(placement[key])
        missing.remove(key)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {', '.join(missing[:5])}" + (" …" if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected tensors: {', '.join(unexpected[:5])}" + (" …" if len(unexpected) > 5 else ""))
        raise ModelLoadError(f"{', '.join(p.name for p in files)} does not match config.json and "
                             f"quantize_config.json ({'; '.join(parts)}); the files come from different "
                             f"models or the download is incomplete.")
    return state


def _convert(key: str, tensor: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, device: torch.device,
             path: Path) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(ref.shape):
        raise ModelLoadError(f"{path.name}: tensor {key} has shape {tuple(tensor.shape)} but config.json and "
                             f"quantize_config.json expect {tuple(ref.shape)}; check bits/group_size or "
                             f"re-download the matching config.")
    if ref.dtype == torch.int32:
        if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
            raise ModelLoadError(f"{path.name}: tensor {key} is {tensor.dtype}, expected int32 packed GPTQ "
                                 f"data; this is not a GPTQ checkpoint in AutoGPTQ's layout.")
        return tensor.to(device=device, dtype=torch.int32)
    if tensor.dtype not in FLOAT_DTYPES:
        raise ModelLoadError(f"{path.name}: tensor {key} is {tensor.dtype}, expected a float tensor.")
    # scales keep the checkpoint's precision (the kernels read them as stored); the rest computes in `dtype`
    target = tensor.dtype if key.endswith(".scales") else dtype
    return tensor.to(device=device, dtype=target)


# ---------------------------------------------------------------- devices

def resolve_dtype(torch_dtype: Any, device: str) -> torch.dtype:
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    if torch_dtype in (None, "auto"):
        # CPU: bf16 is what the packed-int4 CPU kernel is fast with; GPU: fp16 like the checkpoint
        on_gpu = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        return torch.float16 if on_gpu else torch.bfloat16
    try:
        value = getattr(torch, str(torch_dtype))
    except AttributeError:
        value = None
    if value not in FLOAT_DTYPES:
        raise ValueError(f"torch_dtype {torch_dtype!r} is not supported; use float16, bfloat16 or float32")
    return value


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _device_map(model: nn.Module, device: str, max_memory: dict | None) -> dict[str, str]:
    if device != "auto":
        return {"": device}
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=["GPTBigCodeBlock"])
    if "disk" in device_map.values():
        raise ModelLoadError(f"the model does not fit in the memory allowed (max_memory={max_memory}); raise the "
                             f"limits or free memory (offloading weights to disk is not supported).")
    return device_map


# ---------------------------------------------------------------- public API

def from_quantized(model_dir: str | os.PathLike | Checkpoint, model_basename: str | None = None, use_safetensors: bool = True,
                   trust_remote_code: bool = False, device: str | None = None, device_map: str | None = None,
                   use_triton: bool = False, quantize_config: QuantConfig | dict | None = None,
                   kernel: str = "auto", torch_dtype: Any = "auto", max_memory: dict | None = None,
                   allow_pickle: bool = False, check_memory: bool = True, compile: str = "auto",
                   compile_cache_dir: str | os.PathLike | None = None, **_ignored: Any) -> GPTBigCodeForCausalLM:
    """AutoGPTQ-compatible loader returning a transformers model whose generate()/forward() work.

    `model_dir` may also be a `Checkpoint` already read (the Engine passes the one it inspected).
    `use_triton=True` is AutoGPTQ's way of asking for Triton; it maps to kernel="triton".
    `compile` (auto | on | off): decode through a static cache and a compiled step (backend.decode).
    """
    if trust_remote_code:
        raise ModelLoadError("trust_remote_code=True is not supported: StarCoder needs no remote code, and "
                             "running code from a model repo is refused for safety.")
    if not use_safetensors and not allow_pickle:
        raise ModelLoadError("use_safetensors=False asks for pickle weights, which can run arbitrary code; "
                             "pass allow_pickle=True as well if you trust the source.")
    if use_triton and kernel == "auto":
        kernel = "triton"
    decode.check_setting(compile)
    device = str(device or device_map or "cpu")
    if isinstance(model_dir, Checkpoint):
        ckpt = model_dir
    else:
        qcfg = (quantize_config if isinstance(quantize_config, QuantConfig)
                else QuantConfig.from_dict(quantize_config, "quantize_config argument") if quantize_config else None)
        ckpt = Checkpoint.read(model_dir, model_basename, allow_pickle, qcfg)
    config, qcfg, files = ckpt.config, ckpt.quant, list(ckpt.files)
    dtype = resolve_dtype(torch_dtype, device)

    skeleton = build_skeleton(config, qcfg, dtype)
    estimate = estimate_memory(skeleton, ckpt.separate_head)
    device_map = _device_map(skeleton, device, max_memory)
    if check_memory and device != "auto":
        free = _available_bytes(torch.device(device))
        if free is not None and estimate.total_bytes > free:
            raise ModelLoadError(f"the model needs {estimate.describe()} but {device} has only "
                                 f"{free / 1e9:.2f} GB free; free memory, choose another device, or use "
                                 f"device='auto' to spread it over GPUs and CPU.")

    model = build_skeleton(config, qcfg, dtype, kernel, device_map)
    tied = bool(getattr(config, "tie_word_embeddings", True))
    expected = dict(model.state_dict(keep_vars=True))
    placement = placement_of(expected, device_map)
    state = read_tensors(files, expected, placement, dtype, qcfg, tied)
    head = state.pop("lm_head.weight", None)
    model.load_state_dict(state, strict=False, assign=True)
    wte = model.transformer.wte.weight
    if head is None or (tied and head.device == wte.device and torch.equal(head, wte)):
        # AutoGPTQ writes the tied head as a copy; sharing it saves vocab × hidden of memory
        model.lm_head.weight = wte
    else:
        model.lm_head.weight = nn.Parameter(head, requires_grad=False)
    _materialize_causal_mask(model, placement_of(["transformer.wte.weight"], device_map)["transformer.wte.weight"])
    # before the one-time repack: a fast kernel that disagrees with the reference gives way
    model.selfcheck_notes = selfcheck.verify(model, list(quantized_linears(model)), qcfg, dtype)
    for _, layer in quantized_linears(model):
        layer.post_init()
    model.eval()
    attention.use(model)
    if device == "auto":
        model = dispatch_model(model, device_map=device_map)
    if ckpt.generation_config is not None:
        model.generation_config = ckpt.generation_config
    model.quantize_config = qcfg
    model.memory_estimate = estimate
    model.kernel_report = kernel_report(model)
    model.weights_files = [p.name for p in files]
    model.decode_report = decode.attach(model, compile, compile_cache_dir)
    return model


def _materialize_causal_mask(model: GPTBigCodeForCausalLM, device: torch.device) -> None:
    # GPTBigCode keeps a non-persistent [n_positions, n_positions] mask that no checkpoint holds
    n = model.config.max_position_embeddings
    model.transformer.register_buffer("bias", torch.tril(torch.ones((n, n), dtype=torch.bool, device=device)),
                                      persistent=False)
    leftover = [name for name, buf in model.named_buffers() if buf.device.type == "meta"]
    if leftover:
        raise ModelLoadError(f"internal: buffers left unloaded: {', '.join(leftover)}")


def kernel_report(model: nn.Module) -> dict[str, str]:
    """Backend chosen per layer type, e.g. {"attn.c_attn": "cpu_int4", ...}."""
    report: dict[str, set[str]] = {}
    for name, layer in quantized_linears(model):
        kind = next(k for k in QUANTIZED_LAYERS if name.endswith(k))
        report.setdefault(kind, set()).add(layer.NAME)
    return {k: ", ".join(sorted(v)) for k, v in report.items()}


def load_dequantized(model_dir: str | os.PathLike, torch_dtype: torch.dtype = torch.float32) -> GPTBigCodeForCausalLM:
    """The same checkpoint as a plain transformers model with dense weights (for comparisons)."""
    model = from_quantized(model_dir, kernel="torch", torch_dtype=torch.float32, check_memory=False, compile="off")
    dense = GPTBigCodeForCausalLM(model.config).to(torch_dtype).eval()
    state = {k: v for k, v in model.state_dict().items()
             if not ".".join(k.split(".")[:-1]).endswith(QUANTIZED_LAYERS)}
    for name, layer in quantized_linears(model):
        state[f"{name}.weight"] = dequantize(layer.qweight, layer.qzeros, layer.scales, layer.g_idx, layer.bits,
                                             layer.zero_offset).T
        if layer.bias is not None:
            state[f"{name}.bias"] = layer.bias
    dense.load_state_dict({k: v.to(torch_dtype) for k, v in state.items()}, strict=False)
    if model.lm_head.weight is model.transformer.wte.weight:
        dense.lm_head.weight = dense.transformer.wte.weight
    dense.generation_config = model.generation_config
    return dense


def load_tokenizer(model_dir: str | os.PathLike | Checkpoint):
    """The model folder's own tokenizer; never runs remote code. A Checkpoint saves reading config.json again."""
    config = model_dir.config if isinstance(model_dir, Checkpoint) else None
    model_dir = model_dir.path if isinstance(model_dir, Checkpoint) else model_dir
    try:
        extra = {"config": config} if config is not None else {}
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False, **extra)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir}: the tokenizer cannot be loaded ({exc}); the folder needs "
                             f"tokenizer.json and tokenizer_config.json from the model repo.") from None


__all__ = ["from_quantized", "load_tokenizer", "load_dequantized", "kernel_report", "Checkpoint", "ModelLoadError",
           "MemoryEstimate", "build_skeleton", "estimate_memory", "has_separate_head", "load_model_config",
           "layer_spec", "quantized_linears", "resolve_weights"]
