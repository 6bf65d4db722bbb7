"""Tabby's /v1/health and /v1/completions (sharing OpenAI's path, told apart by the body), and
text-generation-webui's internal routes: encode, decode, model/list, stop-generation."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from backend.generate import GenerationParams
from backend.settings import GENERATION_KEYS
from tests.helpers.serving import API_KEY, ended_run

PREFIX, SUFFIX = "def fib(n):\n    ", "\n        return fib(n - 1) + fib(n - 2)"
# what tabby-agent posts for an inline completion
TABBY = {"language": "python", "segments": {"prefix": PREFIX, "suffix": SUFFIX, "filepath": "src/fib.py",
                                            "git_url": "", "declarations": [], "clipboard": ""},
         "mode": "standard", "seed": 5, "temperature": 0.1}


def test_tabby_completion_is_the_middle(base_url, engine, settings):
    out = httpx.post(f"{base_url}/v1/completions", json=TABBY, timeout=60)
    assert out.status_code == 200
    body = out.json()
    assert set(body) == {"id", "choices"} and body["choices"][0]["index"] == 0
    saved = settings.for_model("tiny")
    params = GenerationParams.from_dict({**{k: saved[k] for k in GENERATION_KEYS}, "max_new_tokens": 64,
                                         "seed": 5, "temperature": 0.1})
    assert body["choices"][0]["text"] == "".join(c.text for c in engine.infill(PREFIX, SUFFIX, params))


def test_an_openai_body_on_the_same_path_stays_openai(base_url):
    out = httpx.post(f"{base_url}/v1/completions", json={"prompt": PREFIX, "max_tokens": 2}, timeout=60).json()
    assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] == 2
    # a prompt wins over segments: the body is OpenAI's
    both = httpx.post(f"{base_url}/v1/completions", json={**TABBY, "prompt": PREFIX, "max_tokens": 2}, timeout=60)
    assert both.json()["object"] == "text_completion"


def test_tabby_health(base_url):
    for method in ("GET", "POST"):
        health = httpx.request(method, f"{base_url}/v1/health", timeout=10).json()
        assert health["model"] == "tiny" and health["device"] == "cpu" and "git_describe" in health["version"]


def test_tabby_auth(keyed_url):
    assert httpx.get(f"{keyed_url}/v1/health", timeout=10).status_code == 401
    assert httpx.post(f"{keyed_url}/v1/completions", json=TABBY, timeout=10).status_code == 401
    ok = httpx.post(f"{keyed_url}/v1/completions", json={**TABBY, "max_tokens": 2},
                    headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["choices"]


def test_encode_decode_and_model_list(base_url, engine):
    encoded = httpx.post(f"{base_url}/v1/internal/encode", json={"text": "def f(x):"}, timeout=10).json()
    assert encoded["length"] == len(encoded["tokens"]) == engine.count_tokens("def f(x):")
    decoded = httpx.post(f"{base_url}/v1/internal/decode", json={"tokens": encoded["tokens"]}, timeout=10).json()
    assert decoded == {"text": "def f(x):"}
    listed = httpx.get(f"{base_url}/v1/internal/model/list", timeout=10).json()
    assert listed == {"model_names": ["other", "tiny"]}


def test_stop_generation_ends_a_running_generation(base_url, engine):
    before = len(engine.runs)
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=httpx.post(
        f"{base_url}/v1/completions", json={"prompt": PREFIX, "max_tokens": 1500}, timeout=60).json()))
    worker.start()
    deadline = time.monotonic() + 10
    while (len(engine.runs) <= before or engine.runs[before]["last"] is None) and time.monotonic() < deadline:
        time.sleep(0.01)
    # a state change: a JSON body (or the key), so that a cross-site page cannot send it
    stop = httpx.post(f"{base_url}/v1/internal/stop-generation", json={}, timeout=10)
    assert stop.status_code == 200 and stop.json() == "OK"
    worker.join(30)
    assert engine.runs[before]["last"].finish_reason == "cancelled"
    assert result["out"]["usage"]["completion_tokens"] < 1500


def test_client_leaving_a_tabby_request_cancels_it(base_url, engine):
    before = len(engine.runs)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/completions", json={**TABBY, "max_tokens": 1500}, timeout=1.5)
    record = ended_run(engine, before)
    last = record["last"]   # None: the client left before the first token (a slow machine), nothing was generated
    assert last is None or (last.finish_reason == "cancelled" and last.completion_tokens < 1500)
