"""TGI's routes over plain HTTP, with the bodies llm-ls (llm-vscode's `tgi` and `huggingface` backends) and
Continue's huggingface-tgi provider send; the stream parsed as TGI frames it (SSE, one token per event)."""
from __future__ import annotations

import json

import httpx

from backend.generate import GenerationParams
from tests.helpers.serving import API_KEY, ended_run

FIM = "<fim_prefix>def area(r):\n<fim_suffix>\n    return result\n<fim_middle>"
# llm-vscode's default request body, with llm-ls's inputs (the FIM prompt) around it
LLM_LS = {"inputs": FIM, "parameters": {"max_new_tokens": 6, "temperature": 0.2, "top_p": 0.95}}


def greedy(engine, prompt: str, n: int) -> str:
    params = GenerationParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=n)
    return "".join(c.text for c in engine.complete(prompt, params))


def events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]


def test_generate_without_sampling_parameters_is_greedy(base_url, engine):
    out = httpx.post(f"{base_url}/generate", json={"inputs": FIM, "parameters": {"max_new_tokens": 5}}, timeout=60)
    assert out.status_code == 200
    assert out.json() == {"generated_text": greedy(engine, FIM, 5)}
    assert "<fim_" not in out.json()["generated_text"]


def test_generate_as_llm_ls_sends_it_with_details_and_full_text(base_url, engine):
    body = {**LLM_LS, "parameters": {**LLM_LS["parameters"], "seed": 7, "details": True, "return_full_text": True}}
    first = httpx.post(f"{base_url}/generate", json=body, timeout=60).json()
    again = httpx.post(f"{base_url}/generate", json=body, timeout=60).json()
    assert first == again                               # a seed makes sampling repeatable
    assert first["generated_text"].startswith(FIM)
    details = first["details"]
    assert details["finish_reason"] == "length" and details["generated_tokens"] == 6 and details["seed"] == 7


def test_generate_stream_one_token_per_event_last_with_text_and_details(base_url, engine):
    body = {"inputs": FIM, "parameters": {"max_new_tokens": 8, "details": True}}
    with httpx.stream("POST", f"{base_url}/generate_stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        items = events(response)
    expected = greedy(engine, FIM, 8)
    assert all(e["generated_text"] is None and e["details"] is None for e in items[:-1])
    assert all(set(e["token"]) == {"id", "text", "logprob", "special"} for e in items)
    assert [e["index"] for e in items] == list(range(1, len(items) + 1))
    assert "".join(e["token"]["text"] for e in items) == expected == items[-1]["generated_text"]
    assert items[-1]["details"] == {"finish_reason": "length", "generated_tokens": 8, "seed": None,
                                    "input_length": engine.count_tokens(FIM)}


def test_compat_routes_answer_as_the_inference_api(base_url, engine):
    expected = greedy(engine, FIM, 4)
    body = {"inputs": FIM, "parameters": {"max_new_tokens": 4}}
    assert httpx.post(f"{base_url}/", json=body, timeout=60).json() == [{"generated_text": expected}]
    # llm-ls's `huggingface` backend with a custom URL posts to /models/{id}
    assert httpx.post(f"{base_url}/models/bigcode/starcoder", json=body, timeout=60).json() == [
        {"generated_text": expected}]
    with httpx.stream("POST", f"{base_url}/", json={**body, "stream": True}, timeout=60) as response:
        assert events(response)[-1]["generated_text"] == expected


def test_info_and_health(base_url):
    info = httpx.get(f"{base_url}/info", timeout=10).json()
    assert info["model_id"] == "tiny" and info["max_total_tokens"] == 2048 and info["max_input_tokens"] == 2047
    assert info["max_stop_sequences"] >= 1
    assert httpx.get(f"{base_url}/health", timeout=10).status_code == 200


def test_errors_in_tgi_shape(base_url, empty_url):
    cases = [({"inputs": "", "parameters": {}}, "`inputs` cannot be empty"),
             ({"inputs": "x", "parameters": {"temperature": 0}}, "`temperature` must be strictly positive"),
             ({"inputs": "x", "parameters": {"top_p": 1.0}}, "`top_p` must be > 0.0 and < 1.0"),
             ({"inputs": "x", "parameters": {"max_new_tokens": 0}}, "`max_new_tokens` must be strictly positive"),
             ({"inputs": "x", "parameters": {"stop": ["a"] * 5}}, "`stop` supports up to 4"),
             ({"parameters": {}}, "inputs")]
    for body, message in cases:
        out = httpx.post(f"{base_url}/generate", json=body, timeout=30)
        assert out.status_code == 422, body
        assert out.json()["error_type"] == "validation" and message in out.json()["error"], out.json()
    too_long = httpx.post(f"{base_url}/generate", json={"inputs": "x = 1\n" * 400}, timeout=30)
    assert too_long.status_code == 422 and "must be <= 2048" in too_long.json()["error"]
    no_model = httpx.post(f"{empty_url}/generate", json={"inputs": "x"}, timeout=30)
    assert no_model.status_code == 503 and set(no_model.json()) == {"error", "error_type"}
    assert httpx.get(f"{empty_url}/health", timeout=10).status_code == 503


def test_truncate_keeps_the_end_of_the_inputs(base_url, engine):
    long = "x = 1\n" * 400
    out = httpx.post(f"{base_url}/generate", timeout=60, json={
        "inputs": long, "parameters": {"max_new_tokens": 3, "truncate": 100, "details": True}})
    assert out.status_code == 200 and out.json()["details"]["generated_tokens"] == 3


def test_max_new_tokens_larger_than_what_fits_is_capped(base_url, engine):
    inputs = "x = 1\n" * 340
    room = 2048 - engine.count_tokens(inputs)
    out = httpx.post(f"{base_url}/generate", timeout=60, json={
        "inputs": inputs, "parameters": {"max_new_tokens": 4096, "details": True}}).json()
    assert out["details"]["generated_tokens"] == room and out["details"]["finish_reason"] == "length"


def test_api_key_guards_every_tgi_route(keyed_url):
    for method, path in (("POST", "/generate"), ("POST", "/generate_stream"), ("POST", "/"), ("GET", "/info"),
                         ("GET", "/health"), ("POST", "/models/x")):
        assert httpx.request(method, f"{keyed_url}{path}", json=LLM_LS, timeout=10).status_code == 401, path
    good = httpx.post(f"{keyed_url}/generate", json=LLM_LS, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=60)
    assert good.status_code == 200


def test_client_leaving_the_stream_cancels_generation(base_url, engine):
    before = len(engine.runs)
    body = {"inputs": FIM, "parameters": {"max_new_tokens": 1500}}
    with httpx.stream("POST", f"{base_url}/generate_stream", json=body, timeout=60) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data:")
            if seen == 2:
                break
    record = ended_run(engine, before)
    assert record["last"].finish_reason == "cancelled" and record["last"].completion_tokens < 1500
