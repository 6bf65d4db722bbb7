"""Editor latency per protocol on the demo model: time to the first token and to a whole 32-token suggestion,
through a live server, for the same FIM request in each protocol's own shape; OpenAI's route is the baseline."""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from api import create_api  # noqa: E402
from backend.engine import Engine  # noqa: E402
from backend.settings import DEFAULTS, Settings  # noqa: E402

PREFIX = 'import os\n\n\ndef walk(path):\n    """Yield every file below path."""\n'
SUFFIX = "\n\n\nfor name in walk('.'):\n    print(name)\n"
FIM = f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"


def sse_texts(lines: Iterator[str], pick: Callable[[dict], str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
            yield pick(json.loads(line[5:]))


def ndjson_texts(lines: Iterator[str], pick: Callable[[dict], str]) -> Iterator[str]:
    for line in lines:
        if line.strip():
            yield pick(json.loads(line))


def protocols(n: int) -> dict[str, tuple[str, dict, Callable]]:
    """name -> (path, body, how to read its frames into texts); None as the reader: one JSON answer."""
    return {
        "openai": ("/v1/completions", {"model": "starcoder", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": n,
                                       "temperature": 0, "stream": True},
                   lambda lines: sse_texts(lines, lambda e: e["choices"][0]["text"] if e["choices"] else "")),
        "tgi": ("/generate_stream", {"inputs": FIM, "parameters": {"max_new_tokens": n}},
                lambda lines: sse_texts(lines, lambda e: e["token"]["text"])),
        "llama.cpp": ("/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": n,
                                  "temperature": 0, "stream": True},
                      lambda lines: sse_texts(lines, lambda e: e["content"])),
        "ollama": ("/api/generate", {"model": "starcoder", "prompt": PREFIX, "suffix": SUFFIX,
                                     "options": {"num_predict": n, "temperature": 0}},
                   lambda lines: ndjson_texts(lines, lambda e: e["response"])),
        "tabby": ("/v1/completions", {"language": "python", "segments": {"prefix": PREFIX, "suffix": SUFFIX},
                                      "max_tokens": n, "temperature": 0}, None),
    }


def one_request(client: httpx.Client, url: str, body: dict, read) -> tuple[float, float, str]:
    """(seconds to the first text, seconds to the whole answer, the text)."""
    start = time.perf_counter()
    first = None
    parts = []
    if read is None:                            # Tabby answers once: its first token is its whole answer
        out = client.post(url, json=body).json()
        text = out["choices"][0]["text"]
        total = time.perf_counter() - start
        return total, total, text
    with client.stream("POST", url, json=body) as response:
        for text in read(response.iter_lines()):
            if text and first is None:
                first = time.perf_counter() - start
            parts.append(text)
    total = time.perf_counter() - start
    return first if first is not None else total, total, "".join(parts)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def serve(app) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(ROOT / "models" / "starcoder-demo"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "editor_latency.json"))
    args = parser.parse_args()
    model = Path(args.model).resolve()
    engine = Engine(model.parent)
    engine.load(model.name, device=args.device)
    settings = Settings(dict(DEFAULTS), Path(args.out).parent / "bench-config-user.yaml")
    url, server, thread = serve(create_api(engine, settings))
    table = protocols(args.tokens)
    samples: dict[str, dict[str, list]] = {name: {"first": [], "total": [], "text": []} for name in table}
    with httpx.Client(timeout=300) as client:
        for name, (path, body, read) in table.items():       # warm-up: one request each
            one_request(client, url + path, body, read)
        for _ in range(args.requests):                        # interleaved, so drift hits every protocol alike
            for name, (path, body, read) in table.items():
                first, total, text = one_request(client, url + path, body, read)
                samples[name]["first"].append(first)
                samples[name]["total"].append(total)
                samples[name]["text"].append(text)
    server.should_exit = True
    thread.join(10)

    base = statistics.median(samples["openai"]["total"])
    rows = []
    for name, s in samples.items():
        rows.append({"protocol": name, "requests": len(s["total"]),
                     "first_token_ms_p50": 1000 * statistics.median(s["first"]),
                     "first_token_ms_p95": 1000 * percentile(s["first"], 0.95),
                     "suggestion_ms_p50": 1000 * statistics.median(s["total"]),
                     "suggestion_ms_p95": 1000 * percentile(s["total"], 0.95),
                     "vs_openai_p50": statistics.median(s["total"]) / base,
                     # each round's request against OpenAI's of the same round: less hurt by a busy machine
                     "vs_openai_paired_p50": statistics.median(
                         t / o for t, o in zip(s["total"], samples["openai"]["total"])),
                     "same_text_as_openai": s["text"][0] == samples["openai"]["text"][0],
                     "tokens": engine.count_tokens(s["text"][0])})
    print(f"editor latency on {model.name} ({args.device}), {args.requests} requests per protocol, "
          f"{args.tokens}-token FIM suggestions, greedy")
    print(f"{'protocol':10s} {'first p50':>10s} {'first p95':>10s} {'whole p50':>10s} {'whole p95':>10s} "
          f"{'× openai':>9s} {'paired':>7s} {'same text':>9s}")
    for r in rows:
        print(f"{r['protocol']:10s} {r['first_token_ms_p50']:8.1f}ms {r['first_token_ms_p95']:8.1f}ms "
              f"{r['suggestion_ms_p50']:8.1f}ms {r['suggestion_ms_p95']:8.1f}ms {r['vs_openai_p50']:9.3f} "
              f"{r['vs_openai_paired_p50']:7.3f} {str(r['same_text_as_openai']):>9s}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model.name, "device": args.device, "requests": args.requests,
                               "tokens": args.tokens, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
