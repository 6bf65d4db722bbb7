"""llama.cpp's /infill over plain HTTP; auth; no model (503); load/unload; queueing; client disconnects."""
from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from fastapi import FastAPI

from api import api_warning, create_api
from backend.generate import GenerationParams
from backend.settings import GENERATION_KEYS
from tests.helpers.serving import API_KEY, ended_run, make_client, serve

PREFIX, SUFFIX = "def area(r):\n", "\n    return result\n"
EXTRA = [{"filename": "geometry/const.py", "text": "PI = 3.14159"}]


def engine_middle(engine, settings, prefix: str, suffix: str, **overrides) -> str:
    saved = settings.for_model("tiny")
    params = GenerationParams.from_dict({**{k: saved[k] for k in GENERATION_KEYS}, **overrides})
    return "".join(c.text for c in engine.infill(prefix, suffix, params))


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


# ---------------------------------------------------------------- /infill

def test_infill_llama_cpp_shape(base_url, engine, settings):
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "input_extra": EXTRA, "prompt": "    result = ",
            "n_predict": 6, "seed": 9, "temperature": 0.2, "top_k": 40, "top_p": 0.95, "cache_prompt": True}
    out = httpx.post(f"{base_url}/infill", json=body, timeout=60).json()
    # input_extra goes before the prefix as StarCoder's <filename> context; prompt continues the prefix
    full_prefix = "<filename>geometry/const.py\nPI = 3.14159\n" + PREFIX + "    result = "
    expected = engine_middle(engine, settings, full_prefix, SUFFIX, max_new_tokens=6, seed=9, top_k=40)
    assert out["content"] == expected
    assert out["stop"] is True and out["tokens_predicted"] == 6 and out["stop_type"] == "limit"
    assert out["stopped_limit"] is True and out["truncated"] is False
    assert out["tokens_evaluated"] == engine.count_tokens(full_prefix) + engine.count_tokens(SUFFIX) + 3
    assert engine.count_tokens("<filename>") == 1      # the special token, not its characters
    assert set(out["timings"]) >= {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"}
    assert out["generation_settings"]["n_ctx"] == 2048 and out["model"] == "tiny"


def test_infill_stream(base_url):
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 8, "seed": 4}
    whole = httpx.post(f"{base_url}/infill", json=body, timeout=60).json()
    with httpx.stream("POST", f"{base_url}/infill", json=body | {"stream": True}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(e) for e in sse_events(response)]
    assert all(e["stop"] is False for e in events[:-1]) and events[-1]["stop"] is True
    assert "".join(e["content"] for e in events) == whole["content"]
    assert events[-1]["tokens_predicted"] == 8 and events[-1]["content"] == ""


def test_infill_trims_a_prompt_too_long_for_the_context(base_url):
    long_prefix = "".join(f"value_{i} = {i}\n" for i in range(600))
    out = httpx.post(f"{base_url}/infill", json={"input_prefix": long_prefix, "input_suffix": SUFFIX,
                                                 "n_predict": 4}, timeout=60).json()
    assert out["truncated"] is True and out["tokens_evaluated"] <= 2048 - 4


def test_infill_reads_json_whatever_the_content_type(base_url):
    # llama.cpp does, and `curl -d '{...}'` sends application/x-www-form-urlencoded
    out = httpx.post(f"{base_url}/infill", content=json.dumps({"input_prefix": PREFIX, "n_predict": 2}),
                     headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
    assert out.status_code == 200 and out.json()["tokens_predicted"] == 2
    # but not from a web page: a cross-site form post must not run a generation or load a model
    from_page = httpx.post(f"{base_url}/v1/internal/model/load", content=json.dumps({"model_name": "other"}),
                           headers={"Content-Type": "text/plain", "Origin": "http://evil.example"}, timeout=30)
    assert from_page.status_code == 403 and from_page.json()["error"]["code"] == "forbidden_origin"
    not_an_object = httpx.post(f"{base_url}/infill", json=[1, 2], timeout=30)
    assert not_an_object.status_code == 400 and "JSON object" in not_an_object.json()["error"]["message"]


def test_infill_errors(base_url):
    bad = httpx.post(f"{base_url}/infill", json={"input_prefix": PREFIX, "temperature": -2}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
    assert bad.json()["error"]["code"] == 400 and "temperature" in bad.json()["error"]["message"]


# ---------------------------------------------------------------- auth

def test_api_key_is_required(keyed_url):
    with pytest.raises(openai.AuthenticationError) as exc_info:
        make_client(keyed_url, "wrong").completions.create(model="tiny", prompt=PREFIX, max_tokens=2)
    assert exc_info.value.status_code == 401 and exc_info.value.body["code"] == "invalid_api_key"
    for method, path in [("GET", "/v1/models"), ("POST", "/infill"), ("POST", "/v1/internal/model/unload")]:
        response = httpx.request(method, f"{keyed_url}{path}", json={}, timeout=30)
        assert response.status_code == 401 and response.json()["error"]["type"] == "invalid_request_error"
    good = make_client(keyed_url, API_KEY)
    assert good.completions.create(model="tiny", prompt=PREFIX, max_tokens=2).usage.completion_tokens == 2
    assert httpx.post(f"{keyed_url}/infill", json={"input_prefix": PREFIX, "n_predict": 2}, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_api_key_still_required_when_mounted_under_a_prefix(engine, settings):
    outer = FastAPI()
    outer.mount("/api", create_api(engine, settings, api_key=API_KEY))
    with serve(outer) as url:
        assert httpx.get(f"{url}/api/v1/models", timeout=30).status_code == 401
        ok = httpx.get(f"{url}/api/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "tiny"


def test_api_warning():
    assert "--api-key" in api_warning(listen=True, api_key=None)
    assert api_warning(listen=True, api_key="k") is None and api_warning(listen=False, api_key=None) is None


# ---------------------------------------------------------------- no model, load, unload

def test_no_model_loaded_is_503_then_load_and_unload(empty_url, empty_engine):
    client = make_client(empty_url)
    with pytest.raises(openai.InternalServerError) as exc_info:
        client.completions.create(model="tiny", prompt=PREFIX, max_tokens=2)
    assert exc_info.value.status_code == 503 and exc_info.value.body["code"] == "model_not_loaded"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert httpx.post(f"{empty_url}/infill", json={"input_prefix": PREFIX}, timeout=30).status_code == 503
    assert httpx.post(f"{empty_url}/v1/internal/token-count", json={"text": "x"}, timeout=30).status_code == 503
    assert [m.id for m in client.models.list().data] == ["other", "tiny"]
    info = httpx.get(f"{empty_url}/v1/internal/model/info", timeout=30).json()
    assert info["model_name"] is None and info["loaded"] is False

    missing = httpx.post(f"{empty_url}/v1/internal/model/load", json={"model_name": "nope"}, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    escape = httpx.post(f"{empty_url}/v1/internal/model/load", json={"model_name": "../tiny"}, timeout=30)
    assert escape.status_code == 404
    bad_kernel = httpx.post(f"{empty_url}/v1/internal/model/load", json={"model_name": "tiny", "kernel": "warp9"},
                            timeout=60)
    assert bad_kernel.status_code == 400 and "warp9" in bad_kernel.json()["error"]["message"]

    loaded = httpx.post(f"{empty_url}/v1/internal/model/load", json={"model_name": "tiny", "device": "cpu"},
                        timeout=120).json()
    assert loaded["model_name"] == "tiny" and loaded["device"] == "cpu" and loaded["context_length"] == 2048
    assert client.completions.create(model="tiny", prompt=PREFIX, max_tokens=2).usage.completion_tokens == 2
    count = httpx.post(f"{empty_url}/v1/internal/token-count", json={"text": PREFIX}, timeout=30).json()
    assert count["length"] > 0

    # a POST with no JSON body and no key changes nothing (a cross-site form could send it)
    bare = httpx.post(f"{empty_url}/v1/internal/model/unload", timeout=30)
    assert bare.status_code == 415 and empty_engine.loaded is not None
    unloaded = httpx.post(f"{empty_url}/v1/internal/model/unload", json={}, timeout=30).json()
    assert unloaded["model_name"] is None
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model="tiny", prompt=PREFIX, max_tokens=2)


def test_model_info_and_token_count(base_url, engine):
    info = httpx.get(f"{base_url}/v1/internal/model/info", timeout=30).json()
    assert info["model_name"] == "tiny" and info["quant"]["bits"] == 4 and info["available"] == ["other", "tiny"]
    count = httpx.post(f"{base_url}/v1/internal/token-count", json={"text": PREFIX}, timeout=30).json()
    assert count == {"length": engine.count_tokens(PREFIX)}


# ---------------------------------------------------------------- concurrency and disconnects

def test_two_clients_at_once_both_finish(base_url):
    client = make_client(base_url)
    serial = {seed: client.completions.create(model="tiny", prompt=PREFIX, max_tokens=12, seed=seed)
              .choices[0].text for seed in (1, 2)}
    results, errors = {}, []

    def ask(seed: int) -> None:
        try:
            results[seed] = make_client(base_url).completions.create(
                model="tiny", prompt=PREFIX, max_tokens=12, seed=seed, stream=seed == 2)
        except Exception as exc:           # reported by the assertion below
            errors.append(exc)
    threads = [threading.Thread(target=ask, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert results[1].choices[0].text == serial[1]
    assert "".join(e.choices[0].text for e in results[2]) == serial[2]


def _wait_cancelled(engine, before: int) -> dict:
    record = ended_run(engine, before)
    return record


def test_client_leaving_mid_stream_cancels_its_generation(base_url, engine):
    before = len(engine.runs)
    body = {"prompt": PREFIX, "max_tokens": 1500, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        seen = 0
        for line in lines:
            seen += line.startswith("data: ")
            if seen == 2:
                break
    started = time.monotonic()
    record = _wait_cancelled(engine, before)
    assert record["last"].finish_reason == "cancelled"
    assert record["last"].completion_tokens < 1500
    assert time.monotonic() - started < 5
    assert not engine._lock.locked()
    out = make_client(base_url).completions.create(model="tiny", prompt=PREFIX, max_tokens=2)
    assert out.usage.completion_tokens == 2


def test_client_leaving_a_non_streamed_request_cancels_it(base_url, engine):
    before = len(engine.runs)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/infill", json={"input_prefix": PREFIX, "n_predict": 1500}, timeout=1.5)
    record = _wait_cancelled(engine, before)
    assert record["last"].finish_reason == "cancelled" and record["last"].completion_tokens < 1500
    after = httpx.post(f"{base_url}/infill", json={"input_prefix": PREFIX, "n_predict": 2}, timeout=30)
    assert after.status_code == 200


def test_client_leaving_while_queued_never_generates(base_url, engine):
    """B waits behind A for the engine's lock, leaves, and is skipped when A is done."""
    before = len(engine.runs)
    with httpx.stream("POST", f"{base_url}/v1/completions", timeout=60,
                      json={"prompt": PREFIX, "max_tokens": 1500, "stream": True}) as response:
        lines = response.iter_lines()          # kept referenced: a closed iterator would close the connection
        next(line for line in lines if line.startswith("data: "))
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base_url}/v1/completions", json={"prompt": PREFIX, "max_tokens": 8}, timeout=1)
    first = _wait_cancelled(engine, before)
    queued = _wait_cancelled(engine, before + 1)
    assert first["last"].finish_reason == "cancelled"
    assert queued["last"] is None
    assert make_client(base_url).completions.create(model="tiny", prompt=PREFIX, max_tokens=2).choices
