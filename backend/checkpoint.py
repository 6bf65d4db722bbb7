"""A model folder read once: configs, quantize config, weight files, the model's shape and its memory."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from torch import nn
from transformers import GenerationConfig, GPTBigCodeConfig, GPTBigCodeForCausalLM

from backend.errors import UserError
from backend.qlinear import BaseQuantLinear, LayerSpec, select_backend
from backend.quant_config import QUANTIZE_CONFIG, QuantConfig, read_json
from backend.settings import GENERATION_KEYS

QUANTIZED_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
CONFIG_FILES = ("config.json", "quantize_config.json", "generation_config.json")


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

def _read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc}); re-download it.") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(raw).__name__}; re-download it.")
    return raw


def model_config(raw: dict, path: Path) -> GPTBigCodeConfig:
    """config.json's contents as a GPTBigCodeConfig; anything but a GPTBigCode model is refused by name."""
    if raw.get("model_type") != "gpt_bigcode":
        raise ModelLoadError(f"{path}: model_type is {raw.get('model_type')!r}; this app loads GPTBigCode "
                             f"(StarCoder) models, whose config says \"model_type\": \"gpt_bigcode\".")
    raw = {k: v for k, v in raw.items() if k != "quantization_config"}   # transformers would try its own GPTQ
    return GPTBigCodeConfig.from_dict(raw)


def load_model_config(model_dir: Path) -> GPTBigCodeConfig:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; a model folder needs the config.json of its repo "
                             f"(download the whole repo again).")
    return model_config(_read_json(path), path)


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

def build_skeleton(config: GPTBigCodeConfig, qcfg: QuantConfig, dtype: torch.dtype, kernel: str = "torch",
                   device_map: dict[str, Any] | None = None) -> GPTBigCodeForCausalLM:
    """The model on "meta", each quantized Linear already the QuantLinear `kernel` picks for its device."""
    # buffers on meta too: the 8192² causal-mask buffer is built once, after loading, not per skeleton
    with init_empty_weights(include_buffers=True):
        model = GPTBigCodeForCausalLM(config).to(dtype)
    for name, linear in list(quantized_linears(model)):
        qcfg.check_layer(name, linear.in_features)
        # without a device map (shapes and memory only) the torch reference on CPU stands in
        device = placement_of([f"{name}.qweight"], device_map or {"": "cpu"})[f"{name}.qweight"]
        spec = layer_spec(qcfg, linear, device, dtype)
        _set_module(model, name, select_backend(kernel, spec)(spec, device="meta"))
    return model


def layer_spec(qcfg: QuantConfig, linear: nn.Linear, device: torch.device, dtype: torch.dtype) -> LayerSpec:
    """What the backends need to know about one quantized Linear of this checkpoint."""
    return LayerSpec(bits=qcfg.bits, group_size=qcfg.group_size, desc_act=qcfg.desc_act, sym=qcfg.sym,
                     in_features=linear.in_features, out_features=linear.out_features, device=device,
                     dtype=dtype, bias=linear.bias is not None, zero_offset=qcfg.zero_offset)


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
    # buffers kept out of the state dict: GPTBigCode's causal mask is n_positions² booleans (900 MB at 30k)
    for name, b in model.named_buffers():
        if id(b) not in seen and not ".".join(name.split(".")[:-1]).endswith(QUANTIZED_LAYERS):
            seen.add(id(b))
            dense += b.numel() * b.element_size()
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




def placement_of(state_keys, device_map: dict[str, Any]) -> dict[str, torch.device]:
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


# ---------------------------------------------------------------- the folder, read once

def _stamp(model_dir: Path) -> tuple:
    """What changes when any file of the folder changes: names, sizes and modification times."""
    out = []
    for path in sorted(model_dir.iterdir()):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def folder_defaults(generation: dict) -> dict[str, Any]:
    """The settings a model folder suggests for itself, from its generation_config.json."""
    out = {k: v for k, v in generation.items() if k in GENERATION_KEYS}
    if generation.get("do_sample") is False:
        out["temperature"] = 0.0          # transformers' do_sample=False means greedy whatever the temperature
    return out


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Everything about a model folder that can be known without loading its weights."""
    path: Path
    config: GPTBigCodeConfig
    quant: QuantConfig
    files: tuple[Path, ...]
    separate_head: bool
    estimate: MemoryEstimate               # in float16, before a device or dtype is chosen
    generation_config: GenerationConfig | None
    defaults: dict[str, Any]               # settings suggested by generation_config.json
    stamp: tuple

    @classmethod
    def read(cls, model_dir: str | os.PathLike, model_basename: str | None = None, allow_pickle: bool = False,
             quantize_config: QuantConfig | None = None) -> "Checkpoint":
        """Read each config file once, find the weights, and estimate memory on the meta device."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelLoadError(f"model folder {model_dir} does not exist; download the model first.")
        stamp = _stamp(model_dir)
        # a broken quantize_config.json is the quant config's error, named as such
        raw = {name: (read_json if name == QUANTIZE_CONFIG else _read_json)(model_dir / name)
               for name in CONFIG_FILES if (model_dir / name).is_file()}
        if "config.json" not in raw:
            raise ModelLoadError(f"{model_dir / 'config.json'} is missing; a model folder needs the config.json "
                                 f"of its repo (download the whole repo again).")
        qcfg = quantize_config or QuantConfig.from_files(model_dir, raw.get("quantize_config.json"), raw["config.json"])
        config = model_config(raw["config.json"], model_dir / "config.json")
        files = resolve_weights(model_dir, model_basename, qcfg, allow_pickle)
        separate = has_separate_head(files)
        estimate = estimate_memory(build_skeleton(config, qcfg, torch.float16), separate)
        generation = raw.get("generation_config.json")
        gen_cfg = GenerationConfig.from_dict(generation) if generation is not None else None
        return cls(model_dir, config, qcfg, tuple(files), separate, estimate, gen_cfg,
                   folder_defaults(generation or {}), stamp)

    def is_current(self) -> bool:
        """Whether the folder still holds what was read (no file added, removed or changed since)."""
        return self.path.is_dir() and _stamp(self.path) == self.stamp
