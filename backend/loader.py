"""Load a GPTQ StarCoder checkpoint: config → meta skeleton → QuantLinear swap → safetensors → device."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
from safetensors import safe_open
from torch import nn
from transformers import AutoTokenizer, GenerationConfig, GPTBigCodeConfig, GPTBigCodeForCausalLM

from backend import decode, selfcheck
from backend.qlinear import BaseQuantLinear, TorchQuantLinear, select_backend
from backend.quant_config import QuantConfig, QuantConfigError
from kernels.reference import dequantize
from backend.errors import UserError

QUANTIZED_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class ModelLoadError(UserError, RuntimeError):
    """A checkpoint that cannot be loaded; the message names the file or tensor and the fix."""


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    quantized_bytes: int      # qweight/qzeros/scales/g_idx/bias of the QuantLinear layers
    dense_bytes: int          # embeddings, norms, lm_head in the compute dtype

    @property
    def total_bytes(self) -> int:
        return self.quantized_bytes + self.dense_bytes

    def describe(self) -> str:
        gb = 1e9
        return (f"{self.total_bytes / gb:.2f} GB of weights ({self.quantized_bytes / gb:.2f} GB quantized "
                f"+ {self.dense_bytes / gb:.2f} GB dense)")


# ---------------------------------------------------------------- configs and files

def load_model_config(model_dir: Path) -> GPTBigCodeConfig:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; a model folder needs the config.json of its repo "
                             f"(download the whole repo again).")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc}); re-download it.") from None
    if not isinstance(raw, dict) or raw.get("model_type") != "gpt_bigcode":
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        raise ModelLoadError(f"{path}: model_type is {kind!r}; this app loads GPTBigCode (StarCoder) "
                             f"models, whose config says \"model_type\": \"gpt_bigcode\".")
    raw.pop("quantization_config", None)   # transformers would try its own GPTQ integration
    return GPTBigCodeConfig.from_dict(raw)


def resolve_weights(model_dir: Path, model_basename: str | None, qcfg: QuantConfig,
                    allow_pickle: bool = False) -> list[Path]:
    """The weight files, in AutoGPTQ's order of preference; pickle only when explicitly allowed."""
    for base in (model_basename, qcfg.model_file_base_name, "model"):
        if base:
            path = model_dir / (base if base.endswith(".safetensors") else f"{base}.safetensors")
            if path.is_file():
                return [path]
            if model_basename and base == model_basename:
                pickled = [model_dir / f"{base}{s}" for s in PICKLE_SUFFIXES if (model_dir / f"{base}{s}").is_file()]
                if not pickled:
                    raise ModelLoadError(f"{path} does not exist; check model_basename (files here: "
                                         f"{', '.join(sorted(p.name for p in model_dir.iterdir()))}).")
    singles = sorted(model_dir.glob("*.safetensors"))
    if len(singles) == 1:
        return singles
    indexes = sorted(model_dir.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{indexes[0]}: unreadable shard index ({exc}); re-download it.") from None
        shards = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise ModelLoadError(f"{indexes[0].name} lists shards that are missing: {', '.join(missing)}; "
                                 f"finish the download.")
        return shards
    if len(singles) > 1:
        raise ModelLoadError(f"{model_dir} holds several .safetensors files "
                             f"({', '.join(p.name for p in singles)}); pass model_basename to pick one.")
    pickled = sorted(p for s in PICKLE_SUFFIXES for p in model_dir.glob(f"*{s}"))
    if pickled and not allow_pickle:
        raise ModelLoadError(
            f"{model_dir} has only pickle weights ({', '.join(p.name for p in pickled)}). Pickle files can "
            f"run arbitrary code when loaded, so they are refused; use a safetensors download, or allow "
            f"pickle explicitly (allow_pickle=True) if you trust the source.")
    if pickled:
        return pickled[:1]
    raise ModelLoadError(f"no weights file in {model_dir}: expected model.safetensors (or the file named by "
                         f"model_file_base_name); the download is incomplete.")


# ---------------------------------------------------------------- skeleton

def build_skeleton(config: GPTBigCodeConfig, qcfg: QuantConfig, dtype: torch.dtype,
                   layer_class=TorchQuantLinear) -> GPTBigCodeForCausalLM:
    """The model on the meta device with every quantized Linear already a QuantLinear."""
    # buffers on meta too: the 8192² causal-mask buffer is built once, after loading, not per skeleton
    with init_empty_weights(include_buffers=True):
        model = GPTBigCodeForCausalLM(config).to(dtype)
    for name, linear in list(quantized_linears(model)):
        qcfg.check_layer(name, linear.in_features)
        cls = layer_class(name, linear) if not isinstance(layer_class, type) else layer_class
        _set_module(model, name, cls(linear.in_features, linear.out_features, qcfg.bits, qcfg.group_size,
                                     bias=linear.bias is not None, zero_offset=qcfg.zero_offset, device="meta"))
    return model


def quantized_linears(model: nn.Module):
    for name, module in model.named_modules():
        if name.endswith(QUANTIZED_LAYERS) and isinstance(module, (nn.Linear, BaseQuantLinear)):
            yield name, module


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def estimate_memory(model: nn.Module, separate_head: bool = False) -> MemoryEstimate:
    """Bytes of every tensor the loaded model will hold, computed from the meta skeleton.

    `separate_head`: the file carries its own lm_head.weight, which is only shared with the input
    embedding once loading shows the two are equal; before that, count it (an upper bound).
    """
    quant = sum(t.numel() * t.element_size() for _, m in quantized_linears(model)
                for t in m.state_dict().values())
    seen, dense = set(), 0
    for name, p in model.state_dict(keep_vars=True).items():
        if ".".join(name.split(".")[:-1]).endswith(QUANTIZED_LAYERS) or id(p) in seen:
            continue
        seen.add(id(p))
        dense += p.numel() * p.element_size()
    head = model.get_output_embeddings().weight
    if separate_head and head is model.get_input_embeddings().weight:
        dense += head.numel() * head.element_size()
    return MemoryEstimate(quant, dense)


def has_separate_head(files: list[Path]) -> bool:
    """Whether the checkpoint stores lm_head.weight (read from the safetensors headers only)."""
    for path in files:
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as handle:
                    if "lm_head.weight" in handle.keys():
                        return True
            except Exception:  # unreadable headers are reported by the load itself
                return False
    return False


# ---------------------------------------------------------------- loading tensors

def read_checkpoint(files: list[Path], expected: dict[str, torch.Tensor], placement: dict[str, torch.device],
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


def _placement(state_keys, device_map: dict[str, Any]) -> dict[str, torch.device]:
    def lookup(key: str):
        parts = key.split(".")
        for i in range(len(parts), -1, -1):
            prefix = ".".join(parts[:i])
            if prefix in device_map:
                return device_map[prefix]
        raise KeyError(key)
    out = {}
    for key in state_keys:
        dev = lookup(key)
        out[key] = torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    return out


# ---------------------------------------------------------------- public API

def from_quantized(model_dir: str | os.PathLike, model_basename: str | None = None, use_safetensors: bool = True,
                   trust_remote_code: bool = False, device: str | None = None, device_map: str | None = None,
                   use_triton: bool = False, quantize_config: QuantConfig | dict | None = None,
                   kernel: str = "auto", torch_dtype: Any = "auto", max_memory: dict | None = None,
                   allow_pickle: bool = False, check_memory: bool = True, compile: str = "auto",
                   compile_cache_dir: str | os.PathLike | None = None, **_ignored: Any) -> GPTBigCodeForCausalLM:
    """AutoGPTQ-compatible loader returning a transformers model whose generate()/forward() work.

    `use_triton=True` is AutoGPTQ's way of asking for Triton; it maps to kernel="triton".
    `compile` (auto | on | off): decode through a static cache and a compiled step (backend.decode).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model folder {model_dir} does not exist; download the model first.")
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
    qcfg = (quantize_config if isinstance(quantize_config, QuantConfig)
            else QuantConfig.from_dict(quantize_config, "quantize_config argument") if quantize_config
            else QuantConfig.from_dir(model_dir))
    config = load_model_config(model_dir)
    dtype = resolve_dtype(torch_dtype, device)
    files = resolve_weights(model_dir, model_basename, qcfg, allow_pickle)

    skeleton = build_skeleton(config, qcfg, dtype)
    estimate = estimate_memory(skeleton, has_separate_head(files))
    device_map = _device_map(skeleton, device, max_memory)
    if check_memory and device != "auto":
        free = _available_bytes(torch.device(device))
        if free is not None and estimate.total_bytes > free:
            raise ModelLoadError(f"the model needs {estimate.describe()} but {device} has only "
                                 f"{free / 1e9:.2f} GB free; free memory, choose another device, or use "
                                 f"device='auto' to spread it over GPUs and CPU.")

    def choose(name: str, linear: nn.Module):
        dev = _placement([name + ".qweight"], device_map)[name + ".qweight"]
        return select_backend(kernel, bits=qcfg.bits, group_size=qcfg.group_size, desc_act=qcfg.desc_act,
                              sym=qcfg.sym, in_features=linear.in_features, out_features=linear.out_features,
                              device=dev, dtype=dtype)
    model = build_skeleton(config, qcfg, dtype, layer_class=choose)
    tied = bool(getattr(config, "tie_word_embeddings", True))
    expected = dict(model.state_dict(keep_vars=True))
    placement = _placement(expected, device_map)
    state = read_checkpoint(files, expected, placement, dtype, qcfg, tied)
    head = state.pop("lm_head.weight", None)
    model.load_state_dict(state, strict=False, assign=True)
    wte = model.transformer.wte.weight
    if head is None or (tied and head.device == wte.device and torch.equal(head, wte)):
        # AutoGPTQ writes the tied head as a copy; sharing it saves vocab × hidden of memory
        model.lm_head.weight = wte
    else:
        model.lm_head.weight = nn.Parameter(head, requires_grad=False)
    _materialize_causal_mask(model, _placement(["transformer.wte.weight"], device_map)["transformer.wte.weight"])
    # before the one-time repack: a fast kernel that disagrees with the reference gives way
    model.selfcheck_notes = selfcheck.verify(model, list(quantized_linears(model)), qcfg, dtype)
    for _, layer in quantized_linears(model):
        layer.post_init()
    model.eval()
    if device == "auto":
        model = dispatch_model(model, device_map=device_map)
    gen_cfg = model_dir / "generation_config.json"
    if gen_cfg.is_file():
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
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


def load_tokenizer(model_dir: str | os.PathLike):
    """The model folder's own tokenizer; never runs remote code."""
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir}: the tokenizer cannot be loaded ({exc}); the folder needs "
                             f"tokenizer.json and tokenizer_config.json from the model repo.") from None


__all__ = ["from_quantized", "load_tokenizer", "estimate_memory", "has_separate_head", "build_skeleton",
           "ModelLoadError", "MemoryEstimate", "QuantConfigError", "resolve_weights"]
