"""llama.cpp server's routes beyond /infill's basics: /completion as Continue's llama.cpp provider sends it,
n_predict 0 and capping, n_indent and t_max_predict_ms, /health, /props, auth and disconnects."""
from __future__ import annotations

import json

import httpx

from api.llamacpp import _indent_cut, _limited
from backend.generate import Chunk
from tests.helpers.serving import API_KEY, ended_run

FIM = "<fim_prefix>def area(r):\n<fim_suffix>\n    return result\n<fim_middle>"
# Continue's llama.cpp provider: the FIM template rendered into `prompt`, streamed
CONTINUE = {"prompt": FIM, "stream": True, "n_predict": 6, "temperature": 0.01, "top_k": 40, "top_p": 0.95,
            "stop": ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>"], "cache_prompt": True}


def sse(response: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


def test_completion_as_continue_streams_it(base_url, engine):
    with httpx.stream("POST", f"{base_url}/completion", json=CONTINUE, timeout=60) as response:
        assert response.status_code == 200
        items = sse(response)
    whole = httpx.post(f"{base_url}/completions", json={**CONTINUE, "stream": False}, timeout=60).json()
    assert all(not e["stop"] for e in items[:-1]) and items[-1]["stop"] is True
    assert "".join(e["content"] for e in items) == whole["content"]
    assert whole["tokens_predicted"] == 6 and whole["tokens_evaluated"] == engine.count_tokens(FIM)
    assert whole["generation_settings"]["n_ctx"] == 2048 and whole["tokens_cached"] == whole["tokens_evaluated"] + 6
    assert set(whole["timings"]) >= {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms"}


def test_n_predict_zero_answers_200_with_no_content(base_url, engine):
    # llama.vscode sends this to warm the server's cache for the next request
    body = {"input_prefix": "def f(x):\n", "input_suffix": "\n", "n_predict": 0, "t_max_predict_ms": 1,
            "samplers": [], "cache_prompt": True}
    out = httpx.post(f"{base_url}/infill", json=body, timeout=30)
    assert out.status_code == 200
    assert out.json()["content"] == "" and out.json()["tokens_predicted"] == 0 and out.json()["stop"] is True
    assert out.json()["tokens_evaluated"] == engine.count_tokens("def f(x):\n") + engine.count_tokens("\n") + 3
    assert not engine.runs or engine.runs[-1]["done"].is_set()
    with httpx.stream("POST", f"{base_url}/completion", json={"prompt": "x", "n_predict": 0, "stream": True},
                      timeout=30) as response:
        assert [e["content"] for e in sse(response)] == [""]


def test_n_predict_larger_than_what_fits_is_capped(base_url, engine):
    prefix = "x = 1\n" * 340
    room = 2048 - engine.count_tokens(prefix) - 3
    out = httpx.post(f"{base_url}/infill", json={"input_prefix": prefix, "n_predict": 5000}, timeout=60)
    assert out.status_code == 200
    assert out.json()["tokens_predicted"] == room and out.json()["stop_type"] == "limit"
    plain = httpx.post(f"{base_url}/completion", json={"prompt": prefix, "n_predict": 5000}, timeout=60).json()
    assert plain["tokens_predicted"] == room + 3 and plain["truncated"] is False


def _chunks(texts: list[str], step_s: float = 0.01):
    for i, text in enumerate(texts):
        yield Chunk(text, 10, i + 1, 0.5 + i * step_s, 0, "eos" if i == len(texts) - 1 else None)


def test_n_indent_cuts_the_first_line_indented_less():
    assert _indent_cut("x = 1\n    y = 2\n", 4) is None
    assert _indent_cut("x = 1\n    y = 2\nz", 4) == len("x = 1\n    y = 2\n")
    assert _indent_cut("x\n  \t", 4) is None                     # no code on the line yet
    out = list(_limited(_chunks(["a = 1", "\n", "    b", " = 2\n", "  c", " = 3\n", "d"]), 4, 0))
    assert "".join(c.text for c in out) == "a = 1\n    b = 2\n  "
    assert out[-1].finish_reason == "length" and len(out) == 5


def test_t_max_predict_ms_ends_at_a_newline_once_spent():
    texts = ["a", "\n", "b", "\n", "c", "\n", "d"]
    # 10 ms a token after the first: the second newline comes at 30 ms, within 35; the third at 50 ends it
    out = list(_limited(_chunks(texts), 0, 35))
    assert "".join(c.text for c in out) == "a\nb\nc\n" and out[-1].finish_reason == "length"
    assert "".join(c.text for c in _limited(_chunks(texts), 0, 0)) == "a\nb\nc\nd"   # 0: no budget


def test_health_and_props(base_url, empty_url):
    assert httpx.get(f"{base_url}/health", timeout=10).json() == {"status": "ok"}
    props = httpx.get(f"{base_url}/props", timeout=10).json()
    assert props["default_generation_settings"]["n_ctx"] == 2048 and props["total_slots"] == 1
    down = httpx.get(f"{empty_url}/health", timeout=10)
    assert down.status_code == 503 and down.json()["error"]["code"] == 503


def test_errors_in_llama_cpp_shape(base_url):
    out = httpx.post(f"{base_url}/completion", json={"prompt": "x", "top_p": 5}, timeout=10)
    assert out.status_code == 400
    assert out.json()["error"]["code"] == 400 and "top_p" in out.json()["error"]["message"]
    assert "Traceback" not in out.text


def test_api_key_guards_llama_cpp_routes(keyed_url):
    for method, path in (("POST", "/completion"), ("POST", "/completions"), ("POST", "/infill"),
                         ("GET", "/props"), ("GET", "/health")):
        assert httpx.request(method, f"{keyed_url}{path}", json={"prompt": "x"}, timeout=10).status_code == 401
    ok = httpx.post(f"{keyed_url}/completion", json={"prompt": "x", "n_predict": 1},
                    headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert ok.status_code == 200


def test_client_leaving_a_completion_stream_cancels_it(base_url, engine):
    before = len(engine.runs)
    with httpx.stream("POST", f"{base_url}/completion", json={"prompt": "x", "n_predict": 1500, "stream": True},
                      timeout=60) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
    record = ended_run(engine, before)
    assert record["last"].finish_reason == "cancelled" and record["last"].completion_tokens < 1500


def test_a_prompt_of_token_ids_and_strings(base_url, engine):
    ids = engine.loaded.tokenizer.encode("def f(x):", add_special_tokens=False)
    mixed = httpx.post(f"{base_url}/completion", json={"prompt": ids + ["\n"], "n_predict": 1}, timeout=30).json()
    assert mixed["tokens_evaluated"] == engine.count_tokens("def f(x):\n")
