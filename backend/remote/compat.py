"""Before pointing a GPTQ folder at vLLM: what its kernels will refuse or run slowly, and how to re-quantize.

Run as `python -m backend.remote.compat models/NAME` for the report and the re-quantizing commands.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backend.quant_config import QuantConfig

# What vLLM 0.32's GPTQ path accepts: 4 or 8 bits, symmetric only; no act-order with groups (refused at
# load); group sizes by kernel (Marlin on NVIDIA: -1, 32, 64, 128; the CPU kernel: even sizes, 4-bit)
VLLM_BITS = (4, 8)
MARLIN_GROUP_SIZES = (-1, 32, 64, 128)


def vllm_problems(q: QuantConfig, target: str = "gpu") -> list[str]:
    """Each entry names what vLLM will refuse or misread, and the fix; empty when the folder is fine."""
    out = []
    if q.checkpoint_format != "gptq":
        out.append(f"checkpoint_format {q.checkpoint_format!r}: vLLM reads GPTQ v1 zero points; a gptq_v2 "
                   f"checkpoint decodes off by one (garbage output). Re-quantize with --format gptq.")
    if q.bits not in VLLM_BITS or (target == "cpu" and q.bits != 4):
        out.append(f"bits {q.bits}: vLLM's GPTQ kernels take {'4' if target == 'cpu' else '4 or 8'} bits only "
                   f"(refused at load). Re-quantize with --bits 4.")
    if target == "gpu" and q.group_size not in MARLIN_GROUP_SIZES:
        out.append(f"group_size {q.group_size}: vLLM's GPU kernel (Marlin) has group sizes "
                   f"{', '.join(map(str, MARLIN_GROUP_SIZES))} only. Re-quantize with --group-size 128 (or -1).")
    if target == "cpu" and q.group_size != -1 and q.group_size % 2:
        out.append(f"group_size {q.group_size}: vLLM's CPU kernel needs an even group size. Re-quantize with "
                   f"--group-size 128 (or -1).")
    if not q.sym:
        out.append("sym false: vLLM's GPTQ path takes symmetric checkpoints only (refused at load). Re-quantize "
                   "without --asym.")
    if q.desc_act and q.group_size != -1:
        out.append(f"act-order with groups (desc_act true, group_size {q.group_size}): vLLM refuses it at load "
                   f"(its kernels have no permuted groups). Re-quantize without --desc-act, or with --group-size -1 "
                   f"(act-order then leaves no trace).")
    if target == "cpu" and not _has_avx512():
        out.append("this CPU has no AVX-512, which vLLM's CPU GPTQ kernel needs (the server loads the folder and "
                   "dies on the first request). Serve a dense copy instead: python scripts/dense_copy.py "
                   "MODEL_DIR DENSE_DIR.")
    return out


def requantize_commands(model_dir: str | Path, original: str | None = None) -> list[str]:
    """Shell commands that make a vLLM-friendly copy with our quantizer (from the original weights when
    known, else from a dense copy of this folder, which re-quantizes already rounded weights)."""
    name = Path(model_dir).name
    steps = []
    source = original
    if source is None:
        source = f"{name}-dense"
        steps.append(f"python scripts/dense_copy.py {model_dir} {source}")
    steps.append(f"python -m backend.quantize {source} models/{name}-vllm --bits 4 --group-size 128 "
                 f"--calib CODE_FILES_OR_FOLDERS")
    return steps


def _has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("--target", choices=("gpu", "cpu"), default="gpu", help="where vLLM will run")
    p.add_argument("--original", help="the unquantized model folder, if you have it (better re-quantizing)")
    args = p.parse_args(argv)
    problems = vllm_problems(QuantConfig.from_dir(args.model_dir), args.target)
    if not problems:
        print(f"{args.model_dir}: vLLM can serve this folder as it is.")
        return 0
    print(f"{args.model_dir}: vLLM will refuse or slow down on:")
    for line in problems:
        print(f"  - {line}")
    print("Re-quantize with our quantizer:")
    for line in requantize_commands(args.model_dir, args.original):
        print(f"  {line}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
