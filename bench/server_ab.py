"""Two running servers side by side: the same streamed FIM request to each in alternation, time to the first
text and to the end of the answer. For a server-side change: start the old code on one port and the new on
another (same model, same machine), then compare; alternating rounds share the machine's noise.

    python bench/server_ab.py http://127.0.0.1:7871 http://127.0.0.1:7872 --rounds 30
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
PREFIX = 'import os\n\n\ndef walk(path):\n    """Yield every file below path."""\n'
SUFFIX = "\n\n\nfor name in walk('.'):\n    print(name)\n"


def one_request(url: str, body: bytes, key: str | None) -> tuple[float, float, str]:
    """(seconds to the first non-empty text, seconds to the end, the text) of one streamed completion."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=120)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers=headers)
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"{url}: HTTP {response.status}: {response.read()[:300]!r}")
    first, text = None, []
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        piece = json.loads(line[6:])["choices"][0]["text"]
        if piece and first is None:
            first = time.perf_counter() - start
        text.append(piece)
    whole = time.perf_counter() - start
    conn.close()
    return first if first is not None else whole, whole, "".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="base URL of the baseline server")
    parser.add_argument("b", help="base URL of the server to compare")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model-settings", action="store_true",
                        help="send no sampling settings (the model's saved ones apply) and a fixed seed, not greedy")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "server_ab.json"))
    args = parser.parse_args()
    request = {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": args.tokens, "stream": True}
    request.update({"seed": 1} if args.model_settings else {"temperature": 0})
    body = json.dumps(request).encode()
    times: dict[str, dict[str, list[float]]] = {u: {"first": [], "whole": []} for u in (args.a, args.b)}
    texts: dict[str, set[str]] = {u: set() for u in times}
    for url in times:                                   # warm-up, not counted
        one_request(url, body, args.api_key)
    for _ in range(args.rounds):
        for url in times:
            first, whole, text = one_request(url, body, args.api_key)
            times[url]["first"].append(first * 1e3)
            times[url]["whole"].append(whole * 1e3)
            texts[url].add(text)
    rows = []
    for url, t in times.items():
        rows.append({"server": url, "first_median_ms": round(statistics.median(t["first"]), 1),
                     "first_min_ms": round(min(t["first"]), 1), "whole_median_ms": round(statistics.median(t["whole"]), 1),
                     "whole_min_ms": round(min(t["whole"]), 1), "distinct_texts": len(texts[url])})
    base = rows[0]
    print(f"{args.rounds} alternating rounds, streamed FIM, {args.tokens} tokens, "
          f"{'the model settings, seed 1' if args.model_settings else 'greedy'}")
    print(f"{'server':28s} {'first p50':>9s} {'first min':>9s} {'whole p50':>9s} {'whole min':>9s} {'whole ×A':>8s}")
    for r in rows:
        print(f"{r['server']:28s} {r['first_median_ms']:9.1f} {r['first_min_ms']:9.1f} {r['whole_median_ms']:9.1f} "
              f"{r['whole_min_ms']:9.1f} {r['whole_median_ms'] / base['whole_median_ms']:8.2f}")
    same = texts[args.a] == texts[args.b] and len(texts[args.a]) == 1
    print("same text from both:", same)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": args.rounds, "tokens": args.tokens, "rows": rows, "same_text": same}, indent=2))


if __name__ == "__main__":
    main()
