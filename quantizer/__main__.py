"""The quantizer's command line: `python -m quantizer MODEL_DIR OUT_DIR --method gptq --calib FILES`."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from backend.quant_config import QuantConfig
from quantizer.quantize import quantize_model, sample_calibration, save_quantized


def _calibration_ids(tokenizer: Any, paths: Sequence[str], nsamples: int, seqlen: int,
                     seed: int) -> torch.Tensor:
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(f for f in p.rglob("*") if f.suffix in (".py", ".txt", ".md")) if p.is_dir() else [p]
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for f in files:
        ids += tokenizer.encode(f.read_text(encoding="utf-8", errors="replace")) + [eos]
        if len(ids) > 64 * nsamples * seqlen:
            break
    return sample_calibration(torch.tensor(ids), nsamples, seqlen, seed)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Quantize a GPTBigCode (StarCoder) model with GPTQ or "
                                     "round-to-nearest and save it in AutoGPTQ's layout.")
    parser.add_argument("model_dir", help="an unquantized transformers model folder (config + weights + tokenizer)")
    parser.add_argument("out_dir", help="where to write the quantized model")
    parser.add_argument("--method", choices=("gptq", "rtn"), default="gptq")
    parser.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=4)
    parser.add_argument("--group-size", type=int, default=-1, help="-1: one group per column")
    parser.add_argument("--desc-act", action="store_true", help="act-order: quantize columns by descending Hessian diagonal")
    parser.add_argument("--asym", action="store_true", help="asymmetric grid (default symmetric)")
    parser.add_argument("--damp-percent", type=float, default=0.01)
    parser.add_argument("--no-true-sequential", action="store_true")
    parser.add_argument("--format", choices=("gptq", "gptq_v2"), default="gptq")
    parser.add_argument("--calib", nargs="*", default=[], help="text/.py files or folders for calibration")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    cfg = QuantConfig(bits=args.bits, group_size=args.group_size, desc_act=args.desc_act,
                      sym=not args.asym, checkpoint_format=args.format, model_file_base_name="model",
                      source="command line")
    calib = None
    if args.method == "gptq":
        if not args.calib:
            parser.error("--method gptq needs --calib files")
        calib = _calibration_ids(tokenizer, args.calib, args.nsamples, args.seqlen, args.seed)
    layers = quantize_model(model, calib, cfg, args.method, args.damp_percent, not args.no_true_sequential)
    out = save_quantized(args.out_dir, model, layers, cfg, args.damp_percent, not args.no_true_sequential,
                         model_name_or_path=args.model_dir, tokenizer=tokenizer)
    print(f"wrote {out} ({len(layers)} quantized layers, {args.method}, {args.bits}-bit)")


if __name__ == "__main__":
    main()
