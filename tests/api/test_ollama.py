"""Ollama's routes over plain HTTP, with the bodies Continue's ollama provider and llm-ls's `ollama` backend send;
streams parsed as Ollama frames them (NDJSON, the last line `done` with its counts)."""
from __future__ import annotations

import json

import httpx
from starlette.responses import PlainTextResponse

from api import create_api
from backend.generate import GenerationParams
from backend.settings import GENERATION_KEYS
from tests.helpers.serving import API_KEY, ended_run, serve

PREFIX, SUFFIX = "def area(r):\n", "\n    return result\n"
# Continue's autocomplete through the ollama provider, once /api/show's template has `.Suffix`
CONTINUE = {"model": "starcoder:latest", "prompt": PREFIX, "suffix": SUFFIX, "stream": True, "keep_alive": 1800,
            "options": {"num_predict": 6, "temperature": 0.01, "top_p": 0.95, "seed": 3, "num_ctx": 2048,
                        "stop": ["<|endoftext|>", "\n\n"]}}


def ndjson(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.iter_lines() if line.strip()]


def engine_text(engine, settings, kind: str, *args, **overrides) -> str:
    saved = settings.for_model("tiny")
    params = GenerationParams.from_dict({**{k: saved[k] for k in GENERATION_KEYS}, **overrides})
    return "".join(c.text for c in getattr(engine, kind)(*args, params))


def test_generate_with_suffix_is_real_fim_streamed_as_ndjson(base_url, engine, settings):
    with httpx.stream("POST", f"{base_url}/api/generate", json=CONTINUE, timeout=60) as response:
        assert response.status_code == 200
        lines = ndjson(response)
    middle = engine_text(engine, settings, "infill", PREFIX, SUFFIX, max_new_tokens=6, temperature=0.01,
                         top_p=0.95, seed=3, stop=("<|endoftext|>", "\n\n"))
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"] is True
    assert "".join(line["response"] for line in lines) == middle
    last = lines[-1]
    assert last["done_reason"] in ("length", "stop") and last["eval_count"] <= 6
    assert last["prompt_eval_count"] == engine.count_tokens(PREFIX) + engine.count_tokens(SUFFIX) + 3
    assert last["model"] == "starcoder:latest" and {"total_duration", "eval_duration"} <= set(last)


def test_generate_as_llm_ls_sends_it(base_url, engine, settings):
    # llm-ls renders the FIM prompt itself and asks for one object
    fim = f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"
    body = {"model": "tiny", "prompt": fim, "stream": False, "raw": True,
            "options": {"num_predict": 5, "temperature": 0.2, "top_p": 0.95, "seed": 1}}
    out = httpx.post(f"{base_url}/api/generate", json=body, timeout=60).json()
    assert out["response"] == engine_text(engine, settings, "complete", fim, max_new_tokens=5, temperature=0.2,
                                          top_p=0.95, seed=1)
    assert out["done"] is True and out["eval_count"] == 5 and out["done_reason"] == "length"


def test_empty_prompt_loads_and_num_predict_is_capped(base_url, engine):
    assert httpx.post(f"{base_url}/api/generate", json={"model": "tiny"}, timeout=10).json()["done_reason"] == "load"
    prompt = "x = 1\n" * 340
    room = 2048 - engine.count_tokens(prompt)
    out = httpx.post(f"{base_url}/api/generate", timeout=60, json={
        "model": "tiny", "prompt": prompt, "stream": False, "options": {"num_predict": 4096}}).json()
    assert out["eval_count"] == room and out["done_reason"] == "length"


def test_chat_streams_the_assistant_turn(base_url):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 5, "seed": 4}}
    with httpx.stream("POST", f"{base_url}/api/chat", json=body, timeout=60) as response:
        lines = ndjson(response)
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] <= 5
    assert all(line["message"]["role"] == "assistant" for line in lines)
    whole = httpx.post(f"{base_url}/api/chat", json={**body, "stream": False}, timeout=60).json()
    assert whole["message"]["content"] == "".join(line["message"]["content"] for line in lines)


def test_show_tags_ps_version(base_url):
    show = httpx.post(f"{base_url}/api/show", json={"model": "tiny"}, timeout=10).json()
    assert ".Suffix" in show["template"]          # what makes Continue send real FIM
    assert show["model_info"]["starcoder.context_length"] == 2048
    assert "num_ctx" in show["parameters"] and "insert" in show["capabilities"]
    other = httpx.post(f"{base_url}/api/show", json={"name": "other:latest"}, timeout=10).json()
    assert other["details"]["context_length"] == 2048
    names = [m["name"] for m in httpx.get(f"{base_url}/api/tags", timeout=10).json()["models"]]
    assert names == ["other:latest", "tiny:latest"]
    ps = httpx.get(f"{base_url}/api/ps", timeout=10).json()["models"]
    assert [m["name"] for m in ps] == ["tiny:latest"] and ps[0]["context_length"] == 2048
    assert httpx.get(f"{base_url}/api/version", timeout=10).json()["version"]


def test_banner_only_without_the_web_ui(engine, settings, base_url):
    banner = httpx.get(f"{base_url}/", timeout=10)
    assert banner.status_code == 200 and banner.text == "Ollama is running"
    app = create_api(engine, settings, webui=True)
    app.mount("/", PlainTextResponse("the web UI"))                    # as app.py mounts the Gradio app
    with serve(app) as url:
        assert httpx.get(f"{url}/", timeout=10).text == "the web UI"
        tgi = httpx.post(f"{url}/", json={"inputs": "x", "parameters": {"max_new_tokens": 1}}, timeout=30)
        assert tgi.status_code == 200 and "generated_text" in tgi.json()[0]


def test_errors_in_ollama_shape(base_url, empty_url):
    raw = httpx.post(f"{base_url}/api/generate", json={"model": "tiny", "prompt": "x", "raw": True, "system": "s"})
    assert raw.status_code == 400 and raw.json() == {"error": "raw mode does not support template, system, or context"}
    bad = httpx.post(f"{base_url}/api/generate", json={"model": "tiny", "prompt": "x", "options": {"top_p": 7}})
    assert bad.status_code == 400 and set(bad.json()) == {"error"} and "top_p" in bad.json()["error"]
    missing = httpx.post(f"{base_url}/api/generate", json={"model": "other", "prompt": "x"}, timeout=10)
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    down = httpx.post(f"{empty_url}/api/generate", json={"model": "tiny", "prompt": "x"}, timeout=10)
    assert down.status_code == 503 and set(down.json()) == {"error"}


def test_api_key_guards_ollama_routes(keyed_url):
    for method, path in (("POST", "/api/generate"), ("POST", "/api/chat"), ("GET", "/api/tags"),
                         ("POST", "/api/show"), ("GET", "/api/ps"), ("GET", "/api/version"), ("GET", "/")):
        assert httpx.request(method, f"{keyed_url}{path}", json={}, timeout=10).status_code == 401, path
    ok = httpx.get(f"{keyed_url}/api/tags", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert ok.status_code == 200


def test_client_leaving_the_stream_cancels_generation(base_url, engine):
    before = len(engine.runs)
    body = {"model": "tiny", "prompt": PREFIX, "options": {"num_predict": 1500}}
    with httpx.stream("POST", f"{base_url}/api/generate", json=body, timeout=60) as response:
        lines = response.iter_lines()
        next(lines)
    record = ended_run(engine, before)
    assert record["last"].finish_reason == "cancelled" and record["last"].completion_tokens < 1500
