"""Shared fixtures: the demo model's folder and small throwaway GPTQ models written for a test."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.checkpoints import tiny_config, write_checkpoint, write_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "models" / "starcoder-demo"


def pytest_collection_modifyitems(config, items) -> None:
    """GPU-marked tests anywhere under tests/ are skipped on a machine without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    assert (DEMO_MODEL / "model.safetensors").is_file(), (
        f"the demo model is missing from {DEMO_MODEL}; rebuild it with scripts/build_demo_model.py")
    return DEMO_MODEL


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A models/ folder holding one random 4-bit model named 'tiny' with a real byte-level tokenizer."""
    root = tmp_path_factory.mktemp("models")
    folder = root / "tiny"
    write_tokenizer(folder)
    from transformers import AutoTokenizer
    vocab = len(AutoTokenizer.from_pretrained(str(folder)))
    write_checkpoint(folder, config=tiny_config(vocab_size=vocab))
    return root
