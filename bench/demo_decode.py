"""CPU decode tokens/s of the 4-bit demo model against the same model unquantized in plain transformers."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backend.loader import from_quantized, load_dequantized, load_tokenizer  # noqa: E402


def decode_rate(model, ids: torch.Tensor, new_tokens: int, repeats: int) -> float:
    """Best of `repeats` greedy generations of exactly `new_tokens` tokens, in tokens/s (prefill excluded)."""
    def run(n: int) -> float:
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start
    run(4)
    best = float("inf")
    for _ in range(repeats):
        best = min(best, run(new_tokens + 1) - run(1))
    return new_tokens / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(ROOT / "models" / "starcoder-demo"))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "demo_decode.json"))
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    ids = torch.tensor([tokenizer.encode("import os\n\ndef walk(path):\n")])
    variants = [
        ("dense fp32 (plain transformers)", lambda: load_dequantized(args.model, torch.float32)),
        ("dense bf16 (plain transformers)", lambda: load_dequantized(args.model, torch.bfloat16)),
        ("4-bit kernel=torch fp32", lambda: from_quantized(args.model, kernel="torch", torch_dtype="float32")),
        ("4-bit kernel=auto bf16", lambda: from_quantized(args.model, kernel="auto", torch_dtype="bfloat16")),
        ("4-bit kernel=auto fp32", lambda: from_quantized(args.model, kernel="auto", torch_dtype="float32")),
    ]
    rows = []
    for name, make in variants:
        model = make()
        backends = ",".join(sorted(set(getattr(model, "kernel_report", {"-": "dense"}).values())))
        rows.append({"variant": name, "backends": backends,
                     "tokens_per_s": decode_rate(model, ids, args.new_tokens, args.repeats)})
    base = rows[0]["tokens_per_s"]
    print(f"demo model decode on CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.new_tokens} new tokens, best of {args.repeats}")
    print(f"{'variant':34s} {'backends':>12s} {'tok/s':>8s} {'× dense fp32':>13s}")
    for row in rows:
        print(f"{row['variant']:34s} {row['backends']:>12s} {row['tokens_per_s']:8.1f} "
              f"{row['tokens_per_s'] / base:13.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
