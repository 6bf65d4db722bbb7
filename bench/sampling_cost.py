"""What choosing a token costs on the eager path: transformers' processors and a draw over the whole vocabulary,
against the same distribution drawn from the few most likely tokens (`generate.candidates`), side by side.

Part 1: one choice on random logits, the demo model's vocabulary (4,096) and StarCoder's (49,152).
Part 2: the demo model's decode through the Engine with the model's own settings, the candidate path on and
off in alternation (best of the repeats).
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
from backend import generate  # noqa: E402
from backend.engine import Engine  # noqa: E402
from backend.generate import GenerationParams, build_processors  # noqa: E402

SETTINGS = {
    "app defaults (T 0.2, top-p 0.95)": dict(temperature=0.2, top_p=0.95),
    "demo model (T 0.2, top-p 0.95, top-k 40, penalty 1.2)": dict(temperature=0.2, top_p=0.95, top_k=40,
                                                                   repetition_penalty=1.2),
}
PROMPT = "import os\n\ndef walk(path):\n"


def per_call_us(fn, n: int) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def choice_rows(n: int) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for vocab in (4096, 49152):
        # a trained model's logits are peaked: scaled normals put most of the mass on a few tokens
        logits = torch.randn(1, vocab, generator=gen) * 4
        history = torch.randint(0, vocab, (1, 300), generator=gen)
        for label, values in SETTINGS.items():
            params = GenerationParams(**values)
            processors, before = build_processors(params), build_processors(params, filters=False)
            draw = torch.Generator().manual_seed(1)
            full = per_call_us(lambda: generate.sample(processors(history, logits.clone()), params, draw), n)
            fast = per_call_us(lambda: generate.sample_candidates(before(history, logits.clone()), params, draw), n)
            rows.append({"vocab": vocab, "settings": label, "processors_us": round(full), "candidates_us": round(fast),
                         "fast_path_taken": generate.candidates(before(history, logits.clone()), params) is not None})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def decode_rows(models_dir: Path, name: str, new_tokens: int, repeats: int) -> list[dict]:
    engine = Engine(models_dir)
    engine.load(name, compile="off")
    defaults = engine.loaded.info.defaults
    params = GenerationParams.from_dict({**defaults, "max_new_tokens": new_tokens, "seed": 1,
                                         "stop": ("\x00never",)})
    one = GenerationParams.from_dict({**defaults, "max_new_tokens": 1, "seed": 1})
    real = generate.candidates
    best = {"candidates": float("inf"), "processors": float("inf")}
    for _ in range(repeats):
        for label in best:
            generate.candidates = real if label == "candidates" else (lambda *a: None)
            start = time.perf_counter()
            for chunk in engine.complete(PROMPT, params):
                last = chunk
            whole = time.perf_counter() - start
            start = time.perf_counter()
            for _ in engine.complete(PROMPT, one):
                pass
            prefill = time.perf_counter() - start
            best[label] = min(best[label], (whole - prefill) / max(1, last.completion_tokens - 1))
    generate.candidates = real
    engine.unload()
    row = {"model": name, "settings": {k: defaults[k] for k in sorted(defaults)},
           "processors_ms_per_token": round(best["processors"] * 1e3, 3),
           "candidates_ms_per_token": round(best["candidates"] * 1e3, 3)}
    row["speedup"] = round(best["processors"] / best["candidates"], 2)
    print(json.dumps(row), flush=True)
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--new-tokens", type=int, default=65)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--model", default="starcoder-demo")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "sampling_cost.json"))
    args = parser.parse_args()
    choices = choice_rows(args.calls)
    decode = decode_rows(Path(args.models_dir), args.model, args.new_tokens, args.repeats)
    print(f"\none token choice on the CPU, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'vocab':>6s}  {'settings':54s} {'processors us':>13s} {'candidates us':>13s}")
    for r in choices:
        print(f"{r['vocab']:6d}  {r['settings']:54s} {r['processors_us']:13d} {r['candidates_us']:13d}")
    for r in decode:
        print(f"\n{r['model']} decode with its own settings, eager: processors {r['processors_ms_per_token']:.2f} ms/token, "
              f"candidates {r['candidates_ms_per_token']:.2f} ms/token ({r['speedup']:.2f}x)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"choices": choices, "decode": decode}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
