"""Decode cost per token, eager against compiled, through from_quantized and the Engine, side by side.

Models: a GPTQ StarCoder with 40 layers and hidden 64 (almost no weights: what is left is host work),
the demo model, and a mid-size synthetic (hidden 2048, 4 layers). Both paths of one model are loaded
at once and timed in alternation, so a busy machine slows both alike; the best of the repeats counts.
Operator calls per step: the operators the profiler records (aten and ours) plus, compiled, the kernels
inductor generated, counted in its wrapper code.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import re
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GPTBigCodeConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backend.engine import Engine  # noqa: E402
from backend.generate import GenerationParams  # noqa: E402
from backend.loader import build_skeleton  # noqa: E402
from backend.quant_config import QuantConfig  # noqa: E402

DEMO = ROOT / "models" / "starcoder-demo"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
PROMPT = "import os\n\ndef walk(path):\n"


def write_synthetic(folder: Path, layers: int, hidden: int, inner: int, heads: int) -> None:
    """Random 4-bit StarCoder-shaped layers in TheBloke's layout (group -1, act-order, sym), demo tokenizer."""
    if (folder / "model.safetensors").is_file():
        return
    config = GPTBigCodeConfig(vocab_size=49152, n_positions=8192, n_embd=hidden, n_layer=layers, n_head=heads,
                              n_inner=inner, multi_query=True, activation_function="gelu_pytorch_tanh",
                              bos_token_id=0, eos_token_id=0)
    qcfg = QuantConfig(bits=4, group_size=-1, desc_act=True, sym=True, model_file_base_name="model")
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, ref in build_skeleton(config, qcfg, torch.float16).state_dict().items():
        if name.endswith("qzeros"):
            state[name] = torch.full(ref.shape, 0x77777777, dtype=torch.int32)
        elif name.endswith("g_idx"):
            state[name] = torch.zeros(ref.shape, dtype=torch.int32)
        elif ref.dtype == torch.int32:
            state[name] = torch.randint(-2**31, 2**31 - 1, ref.shape, dtype=torch.int32, generator=gen)
        elif name.endswith("scales"):
            state[name] = torch.full(ref.shape, 0.02 / hidden ** 0.5, dtype=torch.float16)
        else:
            state[name] = (torch.randn(ref.shape, generator=gen) * 0.02).half()
    state.pop("lm_head.weight", None)      # tied to the input embedding, as StarCoder's is
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    (folder / "quantize_config.json").write_text(json.dumps(qcfg.to_dict()))
    for name in TOKENIZER_FILES:
        shutil.copy(DEMO / name, folder / name)


def generated_kernel_calls(decoder) -> int:
    """Kernel launches per step written by inductor into the wrapper code of the step's graphs."""
    from torch._inductor.codecache import PyCodeCache
    calls = 0
    for module in list(PyCodeCache.modules):
        source = Path(module.__file__).read_text(encoding="utf-8")
        body = source[source.find("def call("):]
        calls += len(re.findall(r"^\s+(?:cpp_fused_\w+|\w+\.run)\(", body, flags=re.M))
    return calls


def decode_seconds(engine: Engine, new_tokens: int) -> float:
    """Seconds for `new_tokens` decode steps: a generation of n + 1 tokens minus one of 1 (the prefill)."""
    def run(n: int) -> float:
        params = GenerationParams(max_new_tokens=n, temperature=0.0, stop=("\x00never",))
        start = time.perf_counter()
        for _ in engine.complete(PROMPT, params):
            pass
        return time.perf_counter() - start
    return max(run(new_tokens + 1) - run(1), 1e-9)


def count_ops_per_step(engine: Engine, steps: int = 8) -> int:
    """Operator calls (aten and ours, nested ones included) the profiler records per decode step."""
    def calls(n: int) -> int:
        params = GenerationParams(max_new_tokens=n, temperature=0.0, stop=("\x00never",))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in engine.complete(PROMPT, params):
                pass
        return sum(1 for e in prof.events() if "::" in e.name)
    return round((calls(steps + 1) - calls(1)) / steps)


def bench_model(models_dir: Path, name: str, new_tokens: int, repeats: int) -> dict:
    eager, compiled = Engine(models_dir), Engine(models_dir)
    eager.load(name, compile="off")
    start = time.perf_counter()
    compiled.load(name, compile="on")
    compile_load_s = time.perf_counter() - start
    loaded = compiled.loaded
    best = {"eager": float("inf"), "compiled": float("inf")}
    for _ in range(repeats):
        for label, engine in (("eager", eager), ("compiled", compiled)):
            best[label] = min(best[label], decode_seconds(engine, new_tokens))
    config = loaded.info.checkpoint.config
    row = {"model": name, "layers": config.n_layer, "hidden": config.n_embd, "decode": loaded.decode,
           "load_s_compiled": round(compile_load_s, 1), "threads": torch.get_num_threads(),
           "kernels": sorted(set(loaded.kernels.values()))}
    for label in best:
        row[f"{label}_ms_per_token"] = round(best[label] / new_tokens * 1e3, 2)
        row[f"{label}_tokens_per_s"] = round(new_tokens / best[label], 1)
    row["compiled_over_eager"] = round(best["compiled"] / best["eager"], 3)
    row["eager_ops_per_step"] = count_ops_per_step(eager)
    decoder = loaded.model.decoder
    dispatched = count_ops_per_step(compiled)
    row["compiled_ops_per_step"] = dispatched + (generated_kernel_calls(decoder) if decoder is not None else 0)
    row["compiled_dispatched_ops_per_step"] = dispatched
    eager.unload()
    compiled.unload()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="overhead40,demo,mid",
                        help="comma-separated: overhead40 (40 layers, hidden 64), demo, mid (hidden 2048, 4 layers)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "decode_overhead.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # kept between runs: the compile cache (models_dir/.compile-cache) and the written checkpoints
    models_dir = ROOT / "bench" / "out" / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    chosen = args.models.split(",")
    names = {"overhead40": "overhead-40x64", "demo": "starcoder-demo", "mid": "synthetic-4x2048"}
    if "overhead40" in chosen:
        write_synthetic(models_dir / names["overhead40"], layers=40, hidden=64, inner=256, heads=4)
    if "mid" in chosen:
        write_synthetic(models_dir / names["mid"], layers=4, hidden=2048, inner=8192, heads=16)
    if "demo" in chosen:
        # a fresh copy whenever the shipped model changed (a retrained one has the same shape)
        copy = models_dir / names["demo"]
        if not all(filecmp.cmp(f, copy / f.name, shallow=False) if (copy / f.name).is_file() else False
                   for f in DEMO.iterdir() if f.is_file()):
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(DEMO, copy)
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for key in chosen:
        rows.append(bench_model(models_dir, names[key], args.new_tokens, args.repeats))
        out.write_text(json.dumps(rows, indent=2))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\ndecode on {torch.get_num_threads()} thread(s), torch {torch.__version__}, {args.new_tokens} new "
          f"tokens, best of {args.repeats}, eager and compiled timed in alternation")
    print(f"{'model':18s} {'eager ms/tok':>12s} {'compiled':>9s} {'ratio':>6s} {'eager tok/s':>11s} "
          f"{'compiled tok/s':>14s} {'ops/step eager':>14s} {'compiled':>9s} {'load (compiled) s':>17s}")
    for r in rows:
        print(f"{r['model']:18s} {r['eager_ms_per_token']:12.2f} {r['compiled_ms_per_token']:9.2f} "
              f"{r['compiled_over_eager']:6.2f} {r['eager_tokens_per_s']:11.1f} {r['compiled_tokens_per_s']:14.1f} "
              f"{r['eager_ops_per_step']:14d} {r['compiled_ops_per_step']:9d} {r['load_s_compiled']:17.1f}")


if __name__ == "__main__":
    main()
