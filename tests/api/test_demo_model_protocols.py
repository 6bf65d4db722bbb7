"""Every editor protocol on the shipped demo model (its small context is the point: the preamble and
Continue's max_tokens 4096 must fit), with the request shapes the plugins send."""
from __future__ import annotations

import json

import httpx

from backend.engine import Engine
from tests.helpers.serving import served_params

PREFIX = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
SUFFIX = "\n\nprint(fibonacci(10))\n"
FIM = f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"


def middle(engine: Engine, **overrides) -> str:
    params = served_params(engine, **overrides)
    return "".join(c.text for c in engine.infill(PREFIX, SUFFIX, params))


def test_chat_works_and_max_tokens_is_capped(demo_api):
    engine, url = demo_api
    context = engine.loaded.info.n_positions
    body = {"model": "starcoder", "max_tokens": 4096, "seed": 1,
            "messages": [{"role": "user", "content": "hi"}]}
    out = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert out.status_code == 200, out.text
    usage = out.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= context
    ollama = httpx.post(f"{url}/api/chat", timeout=300, json={
        "model": "starcoder", "stream": False, "messages": body["messages"], "options": {"num_predict": 4096}})
    assert ollama.status_code == 200 and ollama.json()["done"] is True


def test_tgi_as_llm_vscode(demo_api):
    engine, url = demo_api
    out = httpx.post(f"{url}/generate", timeout=300, json={
        "inputs": FIM, "parameters": {"max_new_tokens": 24, "temperature": 0.2, "top_p": 0.95, "seed": 7,
                                      "details": True}})
    assert out.status_code == 200
    assert out.json()["generated_text"] == middle(engine, max_new_tokens=24, temperature=0.2, top_p=0.95,
                                                  top_k=0, repetition_penalty=1.0, seed=7)   # TGI: unset is off


def test_llama_cpp_infill_as_llama_vscode(demo_api):
    engine, url = demo_api
    body = {"input_prefix": PREFIX + "    ", "input_suffix": SUFFIX, "input_extra": [], "prompt": "",
            "n_predict": 4096, "n_indent": 4, "t_max_predict_ms": 1, "top_k": 40, "top_p": 0.99,
            "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "stream": False}
    warm = httpx.post(f"{url}/infill", json={**body, "n_predict": 0}, timeout=60)
    assert warm.status_code == 200 and warm.json()["content"] == ""
    out = httpx.post(f"{url}/infill", json=body, timeout=300).json()
    assert out["generation_settings"]["n_ctx"] == engine.loaded.info.n_positions
    assert out["tokens_evaluated"] + out["tokens_predicted"] <= engine.loaded.info.n_positions
    if out["stop_type"] == "limit":     # a newline after the 1 ms budget, or a line indented less than 4
        lines = out["content"].split("\n")
        assert len(lines) >= 2
        assert all(not line.strip() or line.startswith("    ") for line in lines[1:])


def test_ollama_fim_as_continue(demo_api):
    engine, url = demo_api
    body = {"model": "starcoder", "prompt": PREFIX, "suffix": SUFFIX, "stream": True,
            "options": {"num_predict": 24, "temperature": 0.01, "top_p": 0.95, "seed": 2, "num_ctx": 8192}}
    with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=300) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert lines[-1]["done"] is True
    assert "".join(line["response"] for line in lines) == middle(engine, max_new_tokens=24, temperature=0.01,
                                                                 top_p=0.95, seed=2)


def test_tabby_and_llama_cpp_completion(demo_api):
    engine, url = demo_api
    tabby = httpx.post(f"{url}/v1/completions", timeout=300, json={
        "language": "python", "segments": {"prefix": PREFIX, "suffix": SUFFIX}, "seed": 3})
    assert tabby.status_code == 200 and tabby.json()["choices"][0]["text"] == middle(
        engine, max_new_tokens=64, seed=3)
    plain = httpx.post(f"{url}/completion", json={"prompt": FIM, "n_predict": 4096}, timeout=300).json()
    assert plain["tokens_evaluated"] + plain["tokens_predicted"] <= engine.loaded.info.n_positions
