"""The README's editor settings, checked with the requests those plugins build: minuet's OpenAI FIM, Continue's
openai (legacy completions) and huggingface-tgi providers, each with its key and its default lengths."""
from __future__ import annotations

import json

import httpx

from tests.helpers.serving import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PREFIX, SUFFIX = "def area(r):\n", "\n    return result\n"
# Continue's default max_tokens is 4096: a long file leaves little room in the tiny model's 2048 tokens
LONG_PREFIX = "x = 1\n" * 330 + PREFIX


def sse(response: httpx.Response) -> list:
    return [json.loads(line[5:]) for line in response.iter_lines()
            if line.startswith("data:") and line[5:].strip() != "[DONE]"]


def test_minuet_openai_fim(keyed_url):
    body = {"model": "starcoder", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 8, "top_p": 0.95,
            "stream": True, "seed": 2}
    with httpx.stream("POST", f"{keyed_url}/v1/completions", json=body, headers=AUTH, timeout=60) as response:
        assert response.status_code == 200
        streamed = "".join(e["choices"][0]["text"] for e in sse(response))
    whole = httpx.post(f"{keyed_url}/v1/completions", json={**body, "stream": False}, headers=AUTH, timeout=60)
    assert whole.json()["choices"][0]["text"] == streamed


def test_continue_openai_provider_with_the_starcoder_template(keyed_url, engine):
    prompt = f"<fim_prefix>{LONG_PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"
    body = {"model": "starcoder", "prompt": prompt, "max_tokens": 4096, "temperature": 0.01, "stream": True,
            "stop": ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>", "\n\n\n"]}
    with httpx.stream("POST", f"{keyed_url}/v1/completions", json=body, headers=AUTH, timeout=120) as response:
        assert response.status_code == 200
        events = sse(response)
    assert events[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_continue_huggingface_tgi_provider(keyed_url, engine):
    info = httpx.get(f"{keyed_url}/info", headers=AUTH, timeout=10).json()
    inputs = f"<fim_prefix>{LONG_PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"
    body = {"inputs": inputs, "parameters": {"max_new_tokens": 4096, "temperature": 0.01, "top_p": 0.95,
                                             "stop": ["<|endoftext|>"][:info["max_stop_sequences"]]}}
    with httpx.stream("POST", f"{keyed_url}/generate_stream", json=body, headers=AUTH, timeout=120) as response:
        assert response.status_code == 200
        events = sse(response)
    room = info["max_total_tokens"] - engine.count_tokens(inputs)
    assert 0 < len(events) <= room and events[-1]["generated_text"] is not None
