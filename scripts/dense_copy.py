"""Write a dense (dequantized) copy of a GPTQ model folder that any serving engine can load.

vLLM's CPU GPTQ kernel needs AVX-512; on other CPUs (and for parity tests) it serves this copy
instead: the same weights our GPTQ reference computes with, stored as plain floats, and the same
tokenizer files. Usage: python scripts/dense_copy.py MODEL_DIR OUT_DIR [--dtype float32]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.loader import load_dequantized  # noqa: E402

# copied byte for byte: a re-saved tokenizer would carry this transformers' class names, which the
# serving engine's (older) transformers may not know
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def write_dense_copy(model_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Dequantize `model_dir` into `out_dir` (config, safetensors, tokenizer); returns `out_dir`."""
    out = Path(out_dir)
    model = load_dequantized(model_dir, DTYPES[dtype])
    # the dense copy must not claim to be GPTQ, or the server would look for qweight tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (Path(model_dir) / name).is_file():
            shutil.copyfile(Path(model_dir) / name, out / name)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("out_dir")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = p.parse_args(argv)
    print(write_dense_copy(args.model_dir, args.out_dir, args.dtype))


if __name__ == "__main__":
    main()
