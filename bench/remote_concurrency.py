"""1, 4 and 16 concurrent FIM requests through our API: the local engine against the remote engine (vLLM).

Both run behind the same API (`/v1/completions` with `suffix`); the local engine serves the shipped GPTQ
demo model with its default kernel, the remote engine a vLLM server on the demo model's dense copy (started
here on the CPU, or given with --remote-url). Prints a table and writes JSON to bench/out/.

    python bench/remote_concurrency.py [--levels 1 4 16] [--rounds 2] [--max-tokens 64]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api import create_api  # noqa: E402
from backend.engine import Engine  # noqa: E402
from backend.loader import load_tokenizer  # noqa: E402
from backend.remote import RemoteEngine  # noqa: E402
from backend.settings import Settings  # noqa: E402
from scripts.dense_copy import write_dense_copy  # noqa: E402
from tests.helpers.serving import serve  # noqa: E402
from tests.remote.vllm_server import ensure_venv, start_server  # noqa: E402

DEMO = ROOT / "models" / "starcoder-demo"


def fim_cases(n: int, tokenizer, budget: int, seed: int = 0) -> list[tuple[str, str]]:
    """Gaps cut at random lines of standard-library modules: up to 40 lines of prefix and 20 of suffix,
    fewer when they exceed `budget` tokens (the demo model's context is 512, and our API answers a prompt
    that does not fit with a 400, as OpenAI's does)."""
    rng = random.Random(seed)
    files = sorted(Path(os.__file__).parent.glob("*.py"))
    cases = []
    while len(cases) < n:
        lines = rng.choice(files).read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        if len(lines) < 200:
            continue
        cut = rng.randrange(60, len(lines) - 30)
        before, after = 40, 20
        while before > 1:
            prefix, suffix = "".join(lines[cut - before:cut]), "".join(lines[cut:cut + after])
            size = len(tokenizer.encode(prefix + suffix, add_special_tokens=False))
            if size <= budget:
                cases.append((prefix, suffix))
                break
            before, after = before - 2, max(1, after - 1)
    return cases


def one(url: str, prefix: str, suffix: str, max_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    response = httpx.post(f"{url}/v1/completions", timeout=600, json={
        "prompt": prefix, "suffix": suffix, "max_tokens": max_tokens, "temperature": 0.2})
    response.raise_for_status()
    return time.perf_counter() - start, response.json()["usage"]["completion_tokens"]


def level(url: str, concurrency: int, rounds: int, max_tokens: int, cases) -> dict:
    jobs = [cases[i % len(cases)] for i in range(concurrency * rounds)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda c: one(url, c[0], c[1], max_tokens), jobs))
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"concurrency": concurrency, "requests": len(jobs), "wall_s": round(wall, 3),
            "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
            "requests_per_s": round(len(jobs) / wall, 3),
            "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies) + 0.5) - 1)], 3)}


def run_engine(name: str, engine, models_dir: Path, args, cases) -> list[dict]:
    with serve(create_api(engine, Settings.load(None, models_dir))) as url:
        one(url, *cases[0], max_tokens=4)                      # warm-up
        rows = []
        for c in args.levels:
            row = level(url, c, args.rounds, args.max_tokens, cases) | {"engine": name}
            print(f"  {name:6} c={c:<3} {row['tokens_per_s']:8.1f} tok/s  p50 {row['p50_s']:6.2f} s  "
                  f"p95 {row['p95_s']:6.2f} s", flush=True)
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--rounds", type=int, default=2, help="requests per client at each level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--model", default=str(DEMO), help="the model folder (local engine; tokenizer for the remote)")
    p.add_argument("--remote-url", help="an already running vLLM server serving that model (else one is started "
                                        "on the model's dense copy)")
    p.add_argument("--budget", type=int, default=320, help="most prompt tokens per request")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "remote_concurrency.json"))
    args = p.parse_args()
    model = Path(args.model).resolve()
    cases = fim_cases(max(args.levels) * args.rounds, load_tokenizer(model), args.budget)

    local = Engine(model.parent)
    local.load(model.name)
    rows = run_engine("local", local, model.parent, args, cases)
    local.unload()

    server = None
    with tempfile.TemporaryDirectory() as tmp:
        url = args.remote_url
        if url is None:
            ensure_venv()
            dense = write_dense_copy(model, Path(tmp) / "dense")
            server = start_server(dense, Path(tmp) / "vllm.log", max_model_len=512)
            url = server.url
        try:
            remote = RemoteEngine(model.parent, [url])
            remote.load(model.name)
            rows += run_engine("remote", remote, model.parent, args, cases)
        finally:
            if server is not None:
                server.stop()

    by = {(r["engine"], r["concurrency"]): r for r in rows}
    print("\n| concurrent | local tok/s | remote tok/s | remote ÷ local | local p50 / p95 s | remote p50 / p95 s |")
    print("|---|---|---|---|---|---|")
    for c in args.levels:
        lo, re_ = by[("local", c)], by[("remote", c)]
        print(f"| {c} | {lo['tokens_per_s']:.1f} | {re_['tokens_per_s']:.1f} | "
              f"**{re_['tokens_per_s'] / lo['tokens_per_s']:.2f}×** | {lo['p50_s']:.2f} / {lo['p95_s']:.2f} | "
              f"{re_['p50_s']:.2f} / {re_['p95_s']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the load average says how much else ran: vLLM's three processes suffer more from a busy CPU than one
    out.write_text(json.dumps({"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                           "load_average_at_end": os.getloadavg()},
                               "max_tokens": args.max_tokens, "rounds": args.rounds, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
