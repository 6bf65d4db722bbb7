"""Read and validate a GPTQ quantization config (quantize_config.json or config.json's block)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any
from backend.errors import UserError

SUPPORTED_BITS = (2, 3, 4, 8)
SUPPORTED_FORMATS = ("gptq", "gptq_v2")
QUANTIZE_CONFIG = "quantize_config.json"
MODEL_CONFIG = "config.json"


class QuantConfigError(UserError, ValueError):
    """A quantization config that cannot be used; the message names the file, key and fix."""


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    bits: int = 4
    group_size: int = -1
    desc_act: bool = False
    sym: bool = True
    checkpoint_format: str = "gptq"
    model_file_base_name: str | None = None
    source: str = "<memory>"

    def __post_init__(self) -> None:
        def fail(key: str, value: Any, supported: str) -> None:
            raise QuantConfigError(f"{self.source}: '{key}' is {value!r}, which is not supported; "
                                   f"{supported}.")
        if isinstance(self.bits, bool) or self.bits not in SUPPORTED_BITS:
            fail("bits", self.bits, f"use one of {', '.join(map(str, SUPPORTED_BITS))}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or not (
                self.group_size == -1 or self.group_size > 0):
            fail("group_size", self.group_size, "use -1 (one group per column) or a positive integer")
        for key in ("desc_act", "sym"):
            if not isinstance(getattr(self, key), bool):
                fail(key, getattr(self, key), "use true or false")
        if self.checkpoint_format not in SUPPORTED_FORMATS:
            fail("checkpoint_format", self.checkpoint_format,
                 f"use one of {', '.join(SUPPORTED_FORMATS)} (AutoGPTQ/GPTQModel layouts)")

    @property
    def zero_offset(self) -> int:
        # AutoGPTQ's v1 layout stores every zero point minus one; GPTQModel's v2 stores it as is
        return 1 if self.checkpoint_format == "gptq" else 0

    def groups(self, in_features: int) -> int:
        """Number of groups along K for a layer with `in_features` inputs."""
        if self.group_size == -1:
            return 1
        return -(-in_features // self.group_size)

    def check_layer(self, name: str, in_features: int) -> None:
        if self.group_size != -1 and in_features % self.group_size:
            raise QuantConfigError(
                f"{self.source}: 'group_size' is {self.group_size}, which does not divide layer "
                f"{name}'s {in_features} input features; the config does not match this checkpoint.")
        if (in_features * self.bits) % 32:
            raise QuantConfigError(
                f"{self.source}: {self.bits}-bit packing needs {name}'s {in_features} input features "
                f"to fill whole 32-bit words; this checkpoint cannot be read with 'bits' {self.bits}.")

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<memory>") -> "QuantConfig":
        if not isinstance(raw, dict):
            raise QuantConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        method = raw.get("quant_method", "gptq")
        if method not in (None, "gptq"):
            raise QuantConfigError(f"{source}: 'quant_method' is {method!r}; only GPTQ checkpoints "
                                   f"('gptq') can be loaded by this app.")
        if "bits" not in raw:
            raise QuantConfigError(f"{source}: the key 'bits' is missing; add it (TheBloke's "
                                   f"StarCoder uses \"bits\": 4).")
        fmt = raw.get("checkpoint_format") or raw.get("format") or "gptq"
        if raw.get("is_marlin_format"):
            raise QuantConfigError(f"{source}: 'is_marlin_format' is true; Marlin-repacked "
                                   f"checkpoints are not supported, use the plain GPTQ files.")
        return cls(bits=raw["bits"], group_size=raw.get("group_size", -1),
                   desc_act=raw.get("desc_act", False), sym=raw.get("sym", True),
                   checkpoint_format=fmt, model_file_base_name=raw.get("model_file_base_name"),
                   source=source)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "QuantConfig":
        """quantize_config.json if present, else config.json's `quantization_config`."""
        model_dir = Path(model_dir)
        path, cfg_path = model_dir / QUANTIZE_CONFIG, model_dir / MODEL_CONFIG
        return cls.from_files(model_dir, read_json(path) if path.is_file() else None,
                              read_json(cfg_path) if cfg_path.is_file() else None)

    @classmethod
    def from_files(cls, model_dir: Path, quantize_config: dict | None, config: dict | None) -> "QuantConfig":
        """The same rule as from_dir, over the two files' contents already read (None: no such file)."""
        if quantize_config is not None:
            return cls.from_dict(quantize_config, str(model_dir / QUANTIZE_CONFIG))
        block = (config or {}).get("quantization_config")
        if block is not None:
            return cls.from_dict(block, f"{model_dir / MODEL_CONFIG} (quantization_config)")
        raise QuantConfigError(
            f"{model_dir}: no {QUANTIZE_CONFIG} and no 'quantization_config' in {MODEL_CONFIG}; "
            f"this is not a GPTQ model folder (download the quantized repo, e.g. TheBloke/starcoder-GPTQ).")

    def to_dict(self) -> dict:
        """The keys AutoGPTQ writes to quantize_config.json."""
        out = {"bits": self.bits, "group_size": self.group_size, "desc_act": self.desc_act,
               "sym": self.sym, "true_sequential": True,
               "model_file_base_name": self.model_file_base_name, "quant_method": "gptq"}
        if self.checkpoint_format != "gptq":
            out["checkpoint_format"] = self.checkpoint_format
        return out


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuantConfigError(f"{path}: not valid JSON ({exc}); re-download the file or fix it "
                               f"by hand.") from None
    if not isinstance(data, dict):
        raise QuantConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
