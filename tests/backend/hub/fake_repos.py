"""Repos the local Hub stand-in serves to the hub tests, and helpers to fetch them and look at the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from backend import hub

REPO, GATED, TOKEN = "TheBloke/starcoder-GPTQ", "bigcode/gated-GPTQ", "hf_test_secret"
WEIGHTS = "model.safetensors"


def _model_files(seed: int, basename: str = "model") -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    k, n = 512, 256  # one GPTQ-shaped 4-bit layer, ~300 KB in all
    tensors = {"h.0.mlp.c_fc.qweight": rng.integers(-2**31, 2**31, (k // 8, n), dtype=np.int32),
               "h.0.mlp.c_fc.qzeros": np.full((1, n // 8), 0x77777777, dtype=np.int32),
               "h.0.mlp.c_fc.scales": rng.random((1, n)).astype(np.float16),
               "h.0.mlp.c_fc.g_idx": np.zeros(k, dtype=np.int32),
               "wte.weight": rng.random((256, 256)).astype(np.float16)}
    quant = {"bits": 4, "group_size": -1, "desc_act": True, "sym": True, "model_file_base_name": basename}
    return {
        f"{basename}.safetensors": save(tensors),
        "config.json": json.dumps({"model_type": "gpt_bigcode", "quantization_config": quant}).encode(),
        "quantize_config.json": json.dumps(quant).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "seed": seed}).encode(),
        "tokenizer_config.json": b'{"model_max_length": 8192}',
        "special_tokens_map.json": b'{"eos_token": "<|endoftext|>"}',
        "merges.txt": b"#version: 0.2\n",
        "README.md": b"# test model\n",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "pytorch_model.bin": b"pickle, never fetched while safetensors exist",
        "modeling_custom.py": b"raise SystemExit('remote code must not be fetched by default')\n",
    }


MAIN, V2 = _model_files(0), _model_files(1, "gptq_model-4bit--1g")
EXPECTED_MAIN = {n for n in MAIN if not n.endswith((".bin", ".py")) and n != ".gitattributes"}


def fetch(server, models: Path, repo: str = REPO, **kwargs) -> hub.DownloadResult:
    return hub.download(repo, models, endpoint=server.url, backoff=0.01, **kwargs)


def loadable(models: Path) -> list[str]:
    """What a model list would show: every non-hidden folder."""
    return sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if models.exists() else []


def staged(models: Path) -> list[str]:
    """What a download left aside for a resume (the per-folder lock files stay by design)."""
    folder = models / hub.STAGING_DIR
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".lock") if folder.exists() else []
