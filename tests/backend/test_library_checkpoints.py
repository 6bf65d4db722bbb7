"""Checkpoints written by the real AutoGPTQ and GPTQModel libraries load with their logits.

The folders under tests/fixtures/{autogptq,gptqmodel}/ were quantized, packed and saved by those
libraries themselves, and expected_logits.safetensors is each library's own CPU output for
input_ids.json (see each README.md and scripts/make_library_fixtures.py). Unlike the checkpoints that
tests/checkpoints.py writes, nothing here was packed by code of ours: a format detail that both our
writer and our reader get wrong in the same way would still fail here.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backend.loader import from_quantized
from backend.quant_config import QuantConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FOLDERS = sorted(p.parent for lib in ("autogptq", "gptqmodel")
                 for p in (FIXTURES / lib).glob("*/expected_logits.safetensors"))

# Both the libraries' reference outputs and ours are float32 computations from the same fp16 scales
# and integer codes: q - z is a small integer and an fp16 scale has an 11-bit significand, so every
# dequantized weight is exact in float32 on both sides and only the summation order differs (seen:
# ~1e-5 on logits of magnitude ~1-5). 2e-3 is fp16 rounding noise (fp16 eps ~ 1e-3), so it allows
# any float32 kernel yet is two orders of magnitude below what a misread costs: a zero point off by
# one, a wrong group or an unpermuted act-order row moves weights by a whole quantization step and
# the logits by ~1e-1 or more (test_misread_zero_points_are_caught below keeps that true).
ATOL = RTOL = 2e-3

# autogptq/b4_g32_noact_asym_zero0 holds an asymmetric group whose zero point is 0: AutoGPTQ's v1
# pack() stores 0 - 1 = -1 and ORs 0xFFFFFFFF << 4j into the word, filling that nibble and every higher
# one with 0xF. AutoGPTQ's torch path reads (nibble + 1) & 0xF, which gets the real 0 back (the clobbered
# neighbours' true zero points are lost in the file whatever the reader); we read it the same way.


def _inputs(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor(json.loads((folder / "input_ids.json").read_text())["input_ids"])
    return ids, load_file(str(folder / "expected_logits.safetensors"))["logits"]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_fixtures_are_present():
    libs = {f.parent.name for f in FOLDERS}
    assert "autogptq" in libs, f"no AutoGPTQ fixtures under {FIXTURES}"
    for folder in FOLDERS:
        for name in ("config.json", "quantize_config.json", "model.safetensors", "input_ids.json", "README.md"):
            assert (folder / name).is_file(), f"{folder.name}: {name} missing"


@pytest.mark.parametrize("kernel", ["torch", "auto"])
@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_library_checkpoint_matches_library_logits(folder, kernel):
    ids, expected = _inputs(folder)
    model = from_quantized(folder, torch_dtype=torch.float32, kernel=kernel)
    got = _logits(model, ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL,
                               msg=lambda m: f"{folder.parent.name}/{folder.name} kernel={kernel}: {m}")


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_misread_zero_points_are_caught(folder):
    """Reading v1 zeros as v2 (or the reverse) must fail the comparison above by a wide margin."""
    ids, expected = _inputs(folder)
    raw = json.loads((folder / "quantize_config.json").read_text())
    right = QuantConfig.from_dict(raw)
    wrong = dict(raw, checkpoint_format="gptq_v2" if right.checkpoint_format == "gptq" else "gptq")
    wrong.pop("format", None)
    model = from_quantized(folder, torch_dtype=torch.float32, kernel="torch", quantize_config=wrong)
    err = (_logits(model, ids) - expected).abs().max().item()
    assert err > 50 * ATOL, f"{folder.name}: a zero point off by one moved the logits only by {err}"
