"""CPU prompt processing (prefill): the packed-int4 op against dequantized fp32 slices, side by side.

Part 1, one layer: `int4pack_matmul` on M rows with the dense path off and on, for the demo model's layer
shapes and StarCoder-sized ones. Part 2, the demo model through the Engine: the time to the first token of
FIM prompts of growing length, every layer's dense path off and on in alternation. Best of the repeats.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backend.engine import Engine  # noqa: E402
from backend.generate import GenerationParams  # noqa: E402
from kernels import int4pack  # noqa: E402

SHAPES = [(256, 1024), (1024, 256), (2048, 8192), (6144, 6144)]     # (K, N): demo MLP, then larger layers
ROWS = (64, 128, 256, 512, 1024)


def best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def layer_rows(repeats: int) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for K, N in SHAPES:
        q = torch.randint(0, 16, (N, K), dtype=torch.int32, generator=gen)
        group = 256
        scale_zero = torch.stack([torch.rand(K // group, N, generator=gen) * 0.01,
                                  torch.zeros(K // group, N)], -1).to(torch.bfloat16)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        for M in ROWS:
            x = torch.randn(M, K, generator=gen).to(torch.bfloat16)
            op = best_ms(lambda: int4pack.int4pack_matmul(x, packed, scale_zero, group, unpackable=False), repeats)
            dense = best_ms(lambda: int4pack._dense_cpu(x, packed, scale_zero, group).to(torch.bfloat16), repeats)
            rows.append({"K": K, "N": N, "rows": M, "op_ms": round(op, 3), "dense_ms": round(dense, 3),
                         "dense_over_op": round(dense / op, 3)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def model_rows(models_dir: Path, name: str, repeats: int) -> list[dict]:
    engine = Engine(models_dir)
    engine.load(name, compile="off")
    layers = [m for m in engine.loaded.model.modules() if hasattr(m, "unpackable")]
    if not layers or not all(m.unpackable for m in layers):
        print(f"{name}: not every layer is on the CPU int4 kernel with a readable layout; no model rows")
        return []
    source = (ROOT / "backend" / "engine.py").read_text(encoding="utf-8") * 4
    params = GenerationParams(max_new_tokens=1, temperature=0.0)
    rows = []
    for chars in (800, 1600, 3200, 6400):
        prefix, suffix = source[:chars], source[chars:chars + chars // 3]
        best = {True: float("inf"), False: float("inf")}
        for _ in range(repeats):
            for dense in (True, False):
                int4pack.DENSE_PREFILL = dense
                start = time.perf_counter()
                for chunk in engine.infill(prefix, suffix, params):
                    last = chunk
                best[dense] = min(best[dense], time.perf_counter() - start)
        rows.append({"model": name, "prompt_tokens": last.prompt_tokens, "op_ms": round(best[False] * 1e3, 1),
                     "dense_ms": round(best[True] * 1e3, 1), "dense_over_op": round(best[True] / best[False], 3)})
        print(json.dumps(rows[-1]), flush=True)
    int4pack.DENSE_PREFILL = None
    engine.unload()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--model", default="starcoder-demo")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "prefill.json"))
    args = parser.parse_args()
    layers = layer_rows(args.repeats)
    models = model_rows(Path(args.models_dir), args.model, args.repeats)
    bf16_dot = int4pack._cpu_has_bf16_dot()
    print(f"\nCPU prefill, torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}; "
          f"bf16 dot products: {'yes' if bf16_dot else 'no'}, so by default the dense path "
          + ("stays off" if bf16_dot else f"runs from {int4pack.DENSE_MIN_ROWS} rows"))
    print(f"{'layer K x N':>14s} {'rows':>5s} {'int4 op ms':>10s} {'dense ms':>9s} {'dense/op':>8s}")
    for r in layers:
        print(f"{r['K']:>6d} x {r['N']:<6d}{r['rows']:>5d} {r['op_ms']:10.2f} {r['dense_ms']:9.2f} {r['dense_over_op']:8.2f}")
    if models:
        print(f"\n{'model':16s} {'prompt tokens':>13s} {'op ms':>8s} {'dense ms':>9s} {'dense/op':>8s}")
        for r in models:
            print(f"{r['model']:16s} {r['prompt_tokens']:13d} {r['op_ms']:8.1f} {r['dense_ms']:9.1f} "
                  f"{r['dense_over_op']:8.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu_bf16_dot": bf16_dot, "layers": layers, "models": models}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
