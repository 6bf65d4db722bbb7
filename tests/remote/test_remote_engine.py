"""RemoteEngine against a fake upstream (fast): the request it sends, results mapped back, replicas and
affinity, bounded concurrency, cancel, errors; and the settings that choose it."""
from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest

from backend.errors import UserError
from backend.generate import GenerationParams, fim_ids
from backend.loader import load_tokenizer
from backend.remote import (RemoteEngine, RemoteHandshakeError, RemoteRequestError, RemoteUnavailable,
                            UnsupportedParameter)
from backend.remote.compat import requantize_commands, vllm_problems
from backend.remote.sampling import finish_reason, request_body
from backend.remote.select import make_engine
from backend.quant_config import QuantConfig
from tests.helpers.serving import serve
from tests.remote.fake_upstream import FakeState, fake_vllm
from tests.remote.vllm_server import free_port

NAME = "starcoder-demo"


@pytest.fixture(scope="module")
def tokenizer(demo_dir):
    return load_tokenizer(demo_dir)


@contextlib.contextmanager
def upstreams(tokenizer, *states: FakeState) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve(fake_vllm(tokenizer, s))) for s in states]


def engine_for(remote_models_dir, urls, **kwargs) -> RemoteEngine:
    engine = RemoteEngine(remote_models_dir, urls, **kwargs)
    engine.load(NAME)
    return engine


def text_of(chunks):
    chunks = list(chunks)
    return "".join(c.text for c in chunks), chunks[-1]


# ---------------------------------------------------------------- the request body


def test_every_sampling_setting_is_mapped():
    params = GenerationParams(max_new_tokens=7, temperature=0.5, top_p=0.9, top_k=40, min_p=0.1,
                              repetition_penalty=1.2, seed=9, stop=("\n\n", "###"))
    body = request_body("m", [1, 2, 3], params, frozenset({0}))
    assert body["prompt"] == [1, 2, 3] and body["model"] == "m" and "suffix" not in body
    assert {k: body[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                                 "seed", "stop", "stop_token_ids")} == {
        "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.1, "repetition_penalty": 1.2,
        "seed": 9, "stop": ["\n\n", "###"], "stop_token_ids": [0]}
    assert body["include_stop_str_in_output"] is False


def test_off_values_map_to_the_servers_off_values():
    body = request_body("m", [1], GenerationParams(top_k=0, seed=-1), frozenset({0}))
    assert body["top_k"] == 0 and "seed" not in body and "stop" not in body


@pytest.mark.parametrize("setting,value", [("typical_p", 0.9), ("no_repeat_ngram_size", 2)])
def test_settings_the_server_lacks_are_refused_by_name(setting, value):
    with pytest.raises(UnsupportedParameter, match=f"^{setting} is not supported by the remote engine"):
        request_body("m", [1], GenerationParams(**{setting: value}), frozenset({0}))


@pytest.mark.parametrize("choice,ours", [
    ({"finish_reason": None}, None), ({"finish_reason": "length"}, "length"),
    ({"finish_reason": "stop", "stop_reason": None}, "eos"), ({"finish_reason": "stop", "stop_reason": 0}, "eos"),
    ({"finish_reason": "stop", "stop_reason": "\n"}, "stop"), ({"finish_reason": "abort"}, "cancelled")])
def test_finish_reasons_map_to_ours(choice, ours):
    assert finish_reason(choice) == ours


# ---------------------------------------------------------------- handshake and results


def test_load_needs_only_config_and_tokenizer_and_reads_the_context(remote_models_dir, tokenizer):
    state = FakeState(max_model_len=300)
    with upstreams(tokenizer, state) as urls:
        engine = engine_for(remote_models_dir, urls)
        assert engine.loaded.info.n_positions == 300 and engine.inspect(NAME).served_model == NAME


def test_a_different_vocabulary_is_refused(remote_models_dir, tokenizer):
    with upstreams(tokenizer, FakeState(shift_ids=1)) as urls:
        with pytest.raises(RemoteHandshakeError, match="tokenizer does not match"):
            engine_for(remote_models_dir, urls)


def test_a_server_without_tokenize_is_refused_with_what_to_do(remote_models_dir, tokenizer):
    with upstreams(tokenizer, FakeState(tokenize_route=False)) as urls:
        with pytest.raises(RemoteHandshakeError, match="has no POST /tokenize.*vllm serve"):
            engine_for(remote_models_dir, urls)


def test_infill_sends_our_fim_ids_never_a_suffix(remote_models_dir, tokenizer):
    state = FakeState()
    params = GenerationParams(max_new_tokens=10, temperature=0.0)
    with upstreams(tokenizer, state) as urls:
        engine = engine_for(remote_models_dir, urls)
        text, last = text_of(engine.infill("def f(x):\n    ", "\n    return y\n", params, "spm"))
    body = state.bodies[-1]
    assert body["prompt"] == fim_ids(tokenizer, "def f(x):\n    ", "\n    return y\n", params, 512, "spm")[0]
    assert "suffix" not in body and body["stream"] is True
    assert (text, last.finish_reason, last.completion_tokens, last.prompt_tokens) == (
        "a b c d", "eos", 4, len(body["prompt"]))


def test_max_tokens_reached_is_length(remote_models_dir, tokenizer):
    with upstreams(tokenizer, FakeState()) as urls:
        text, last = text_of(engine_for(remote_models_dir, urls).complete("x", GenerationParams(max_new_tokens=2)))
    assert (text, last.finish_reason) == ("a b", "length")


def test_refusals_are_passed_on_and_server_errors_are_unavailable(remote_models_dir, tokenizer):
    with upstreams(tokenizer, FakeState(fail_with=400), FakeState(fail_with=500)) as (bad, broken):
        with pytest.raises(RemoteRequestError, match=f"{bad} refused the request \\(400\\): fake failure 400") as exc:
            text_of(engine_for(remote_models_dir, [bad]).complete("x", GenerationParams()))
        assert exc.value.http_status == 400
        with pytest.raises(RemoteUnavailable, match=f"{broken} failed \\(500"):
            text_of(engine_for(remote_models_dir, [broken]).complete("x", GenerationParams()))


def test_unreachable_names_the_url_and_what_to_check(remote_models_dir):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteUnavailable, match=f"{url} is unreachable.*curl {url}/health") as exc:
        RemoteEngine(remote_models_dir, [url]).load(NAME)
    assert exc.value.http_status == 503


# ---------------------------------------------------------------- replicas, affinity, concurrency


def test_the_same_file_goes_to_the_same_replica_and_files_spread(remote_models_dir, tokenizer):
    a, b = FakeState(), FakeState()
    with upstreams(tokenizer, a, b) as urls:
        engine = engine_for(remote_models_dir, urls)
        for _ in range(3):
            text_of(engine.complete("x", GenerationParams(max_new_tokens=1), affinity="alice:main.py"))
        assert sorted([len(a.bodies), len(b.bodies)]) == [0, 3]
        for i in range(20):
            text_of(engine.complete("x", GenerationParams(max_new_tokens=1), affinity=f"user{i}:file.py"))
        assert len(a.bodies) > 0 and len(b.bodies) > 0


def test_a_busy_preferred_replica_hands_over_to_the_least_busy(remote_models_dir, tokenizer):
    a, b = FakeState(delay_s=0.3), FakeState(delay_s=0.3)
    params = GenerationParams(max_new_tokens=4)
    with upstreams(tokenizer, a, b) as urls:
        engine = engine_for(remote_models_dir, urls, max_concurrency=2)    # a fair share is 1 per replica
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: text_of(engine.complete("x", params, affinity="same")), range(2)))
    assert len(a.bodies) == len(b.bodies) == 1


def test_a_replica_that_is_down_falls_back_to_a_healthy_one(remote_models_dir, tokenizer):
    state = FakeState()
    down = f"http://127.0.0.1:{free_port()}"
    with upstreams(tokenizer, state) as (up,):
        engine = engine_for(remote_models_dir, [down, up])
        for i in range(6):
            text_of(engine.complete("x", GenerationParams(max_new_tokens=1), affinity=f"file{i}"))
        assert len(state.bodies) == 6
        health = {h["url"]: h["healthy"] for h in engine.health()}
        assert health == {down: False, up: True}


def test_a_late_replica_with_a_shorter_context_is_not_used(remote_models_dir, tokenizer):
    long_, short = FakeState(max_model_len=512), FakeState(max_model_len=256)
    with upstreams(tokenizer, long_) as (up,):
        engine = RemoteEngine(remote_models_dir, [up, "http://127.0.0.1:1"])
        engine.load(NAME)                                   # the second is down: the context is 512
    with upstreams(tokenizer, long_, short) as (up, late):
        engine.replicas[0].client.url, engine.replicas[1].client.url = up, late
        engine.replicas[1].down_until = 0.0
        for i in range(8):
            text_of(engine.complete("x", GenerationParams(max_new_tokens=1), affinity=f"file{i}"))
    assert engine.loaded.info.n_positions == 512 and engine.replicas[1].max_model_len == 256
    assert len(long_.bodies) == 8 and short.bodies == []


def test_concurrency_is_bounded_without_a_global_lock(remote_models_dir, tokenizer):
    state = FakeState(delay_s=0.1)
    with upstreams(tokenizer, state) as urls:
        engine = engine_for(remote_models_dir, urls, max_concurrency=3)
        start = time.perf_counter()
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: text_of(engine.complete(f"x{i}", GenerationParams(max_new_tokens=4))), range(6)))
        elapsed = time.perf_counter() - start
    assert state.peak == 3 and len(state.bodies) == 6
    assert elapsed < 6 * 0.4                 # not one after another


def test_cancel_closes_the_upstream_stream(remote_models_dir, tokenizer):
    state = FakeState(delay_s=0.3, words=tuple(f" w{i}" for i in range(50)))
    cancel = threading.Event()
    with upstreams(tokenizer, state) as urls:
        engine = engine_for(remote_models_dir, urls)
        chunks = []
        for chunk in engine.complete("x", GenerationParams(max_new_tokens=50), cancel):
            chunks.append(chunk)
            cancel.set()
        deadline = time.monotonic() + 5
        while state.abandoned == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert chunks[-1].finish_reason == "cancelled" and len(chunks) == 2
    assert state.abandoned == 1 and state.finished == 0


# ---------------------------------------------------------------- settings and compatibility


def test_settings_choose_the_engine(remote_models_dir):
    engine = make_engine(remote_models_dir, {"engine": "remote", "remote_urls": "http://a:1, http://b:2",
                                             "remote_timeout": 5})
    assert isinstance(engine, RemoteEngine) and [r.url for r in engine.replicas] == ["http://a:1", "http://b:2"]
    assert not isinstance(make_engine(remote_models_dir, {"engine": "local"}), RemoteEngine)
    with pytest.raises(UserError, match="'engine' is 'gpu'; use 'local'"):
        make_engine(remote_models_dir, {"engine": "gpu"})
    with pytest.raises(UserError, match="at least one server URL"):
        make_engine(remote_models_dir, {"engine": "remote", "remote_urls": []})


def test_the_command_line_switches_to_the_remote_engine():
    from app import parse_args
    assert parse_args(["--remote-engine", "http://a:8000,http://b:8000"]).remote_engine == "http://a:8000,http://b:8000"


def test_compatibility_flags_what_vllm_refuses_and_says_how_to_requantize():
    assert vllm_problems(QuantConfig(bits=4, group_size=-1, desc_act=True), target="gpu") == []
    problems = vllm_problems(QuantConfig(bits=3, group_size=48, desc_act=True, checkpoint_format="gptq_v2"))
    assert [p.split(" ")[0] for p in problems] == ["checkpoint_format", "bits", "group_size", "act-order"]
    assert any("--group-size 128" in line for line in requantize_commands("models/x"))


def test_the_compatibility_command_reports_and_suggests_requantizing(demo_dir, tmp_path, capsys):
    from backend.remote.compat import main
    assert main([str(demo_dir)]) == 0 and "vLLM can serve this folder" in capsys.readouterr().out
    (tmp_path / "quantize_config.json").write_text('{"bits": 4, "group_size": 128, "desc_act": true, "sym": true}')
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "act-order with groups" in out and "vLLM refuses it at load" in out
    assert f"python scripts/dense_copy.py {tmp_path}" in out and "python -m backend.quantize" in out


def test_the_api_answers_an_unreachable_engine_with_503_and_passes_an_upstream_4xx_on():
    from api.errors import describe_error
    from backend.remote.client import RemoteRequestError, RemoteUnavailable
    status, body, headers = describe_error(RemoteUnavailable("the vLLM server at http://x:1 is down"))
    assert status == 503 and headers.get("Retry-After") and "http://x:1" in body["error"]["message"]
    status, body, _ = describe_error(RemoteRequestError("max_tokens is too large", 422))
    assert status == 422 and body["error"]["message"] == "max_tokens is too large"


def test_the_api_routes_one_client_and_file_to_one_replica(remote_models_dir, tokenizer):
    # Tabby names the file: however its prefix changes as the user types (a long file's prefix loses its
    # start), that client's requests for that file stay on one server; other files spread over both
    import httpx
    from api import create_api
    from backend.settings import Settings
    a, b = FakeState(), FakeState()
    with upstreams(tokenizer, a, b) as urls:
        engine = engine_for(remote_models_dir, urls)
        with serve(create_api(engine, Settings.load(None, remote_models_dir))) as url:
            def tabby(prefix: str, filepath: str) -> None:
                r = httpx.post(f"{url}/v1/completions", timeout=30, json={
                    "language": "python", "max_tokens": 1,
                    "segments": {"prefix": prefix, "suffix": "\n", "filepath": filepath}})
                assert r.status_code == 200, r.text
            for i in range(6):
                tabby(f"x = {i}\n" * (i + 1), "src/app.py")
            assert sorted([len(a.bodies), len(b.bodies)]) == [0, 6]
            for i in range(12):
                tabby("y = 1\n", f"src/module{i}.py")
            assert len(a.bodies) > 0 and len(b.bodies) > 0
