"""RemoteEngine against a real vLLM server: handshake, greedy parity with the local engine, streaming,
stop and finish reasons, cancel, unsupported settings, a server that is down, seeds, concurrency."""
from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from backend.engine import Engine
from backend.generate import GenerationParams
from backend.remote import RemoteEngine, RemoteHandshakeError, RemoteUnavailable, UnsupportedParameter
from tests.remote.vllm_server import SERVED_NAME, free_port, running_requests

pytestmark = pytest.mark.vllm

GREEDY = GenerationParams(max_new_tokens=24, temperature=0.0)
PROMPTS = ["def fibonacci(n):", "class Stack:\n    def __init__(self):", "def read_lines(path):\n    with open(path) as f:"]
FIM_CASES = [("def add(a, b):\n    ", "\n\n\ndef sub(a, b):\n    return a - b\n"),
             ("import json\n\ndef load(path):\n    with open(path) as fh:\n        ", "\n    return data\n"),
             ("class Point:\n    def __init__(self, x, y):\n", "\n    def norm(self):\n        return 0\n")]


def run(chunks):
    chunks = list(chunks)
    return "".join(c.text for c in chunks), chunks[-1]


# ---------------------------------------------------------------- handshake


def test_handshake_reads_the_served_model_and_its_context(remote, vllm_server):
    loaded = remote.loaded
    assert loaded.name == SERVED_NAME and loaded.info.served_model == SERVED_NAME
    # min(config n_positions, the server's max_model_len); the test server serves the model's whole context
    assert loaded.info.n_positions == remote.health()[0]["max_model_len"] == 2048
    assert loaded.kernel == "vllm" and loaded.device == vllm_server.url
    assert remote.health()[0]["healthy"] and remote.count_tokens("def f():") > 0


def test_handshake_refuses_a_folder_whose_tokenizer_differs(vllm_server, remote_models_dir):
    engine = RemoteEngine(remote_models_dir, [vllm_server.url])
    with pytest.raises(RemoteHandshakeError, match="tokenizer does not match models/tiny"):
        engine.load("tiny")
    assert engine.loaded is None


def test_handshake_refuses_a_served_name_the_server_lacks(vllm_server, remote_models_dir):
    engine = RemoteEngine(remote_models_dir, [vllm_server.url], served_model="starcoder-15b")
    with pytest.raises(RemoteHandshakeError, match=f"does not serve 'starcoder-15b'.*serves {SERVED_NAME}"):
        engine.load(SERVED_NAME)


# ---------------------------------------------------------------- parity with the local engine


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_completion_matches_the_local_engine(remote, local, prompt):
    ours, ours_last = run(local.complete(prompt, GREEDY))
    theirs, last = run(remote.complete(prompt, GREEDY))
    assert theirs == ours
    assert (last.finish_reason, last.completion_tokens, last.prompt_tokens) == (
        ours_last.finish_reason, ours_last.completion_tokens, ours_last.prompt_tokens)


@pytest.mark.parametrize("order", ["psm", "spm"])
@pytest.mark.parametrize("prefix,suffix", FIM_CASES)
def test_greedy_infill_matches_the_local_engine(remote, local, prefix, suffix, order):
    ours, ours_last = run(local.infill(prefix, suffix, GREEDY, order))
    theirs, last = run(remote.infill(prefix, suffix, GREEDY, order))
    assert theirs == ours and last.finish_reason == ours_last.finish_reason
    assert last.completion_tokens == ours_last.completion_tokens


def test_a_prompt_longer_than_the_context_is_trimmed_here_like_locally(remote, local):
    prefix, suffix = "x = 1\n" * 400, "\ny = 2\n" * 300                 # far more than 512 tokens
    params = GenerationParams(max_new_tokens=16, temperature=0.0)
    ours, ours_last = run(local.infill(prefix, suffix, params))
    theirs, last = run(remote.infill(prefix, suffix, params))
    assert last.truncated_tokens == ours_last.truncated_tokens > 0
    assert theirs == ours


def test_dialogue_stops_at_the_next_human_turn_like_locally(remote, local):
    params = GenerationParams(max_new_tokens=30, temperature=0.0)
    messages = [{"role": "user", "content": "How do I sort a list?"}]
    ours, ours_last = run(local.chat(messages, params))
    theirs, last = run(remote.chat(messages, params))
    assert theirs == ours and last.finish_reason == ours_last.finish_reason


# ---------------------------------------------------------------- stop strings and finish reasons


def test_stop_strings_end_the_text_like_locally(remote, local):
    params = GenerationParams(max_new_tokens=60, temperature=0.0, stop=("\n",))
    ours, ours_last = run(local.complete("def fibonacci(n):\n", params))
    theirs, last = run(remote.complete("def fibonacci(n):\n", params))
    assert (theirs, last.finish_reason) == (ours, ours_last.finish_reason) == (ours, "stop")
    assert "\n" not in theirs


def test_max_tokens_reached_is_length(remote):
    _, last = run(remote.complete("def fibonacci(n):", GenerationParams(max_new_tokens=3, temperature=0.0)))
    assert (last.finish_reason, last.completion_tokens) == ("length", 3)


def test_end_ids_from_generation_config_end_the_text_like_locally(vllm_server, demo_dir, tmp_path):
    """The demo model rarely ends a greedy text early, so its generation_config gets one more end id: a
    token it would write a few tokens in. Both engines must stop before it, with finish reason eos."""
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    prompt = "def fibonacci(n):"
    folder = tmp_path / "models" / demo_dir.name
    shutil.copytree(demo_dir, folder)
    plain = Engine(folder.parent)
    plain.load(folder.name, kernel="torch", device="cpu", dtype="float32")
    ids = plain.loaded.tokenizer.encode(run(plain.complete(prompt, params))[0], add_special_tokens=False)
    at = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps(config | {"eos_token_id": [0, ids[at]]}))
    local = Engine(folder.parent)
    local.load(folder.name, kernel="torch", device="cpu", dtype="float32")
    remote = RemoteEngine(folder.parent, [vllm_server.url])
    remote.load(folder.name)
    ours, ours_last = run(local.complete(prompt, params))
    theirs, last = run(remote.complete(prompt, params))
    assert (ours_last.finish_reason, ours_last.completion_tokens) == ("eos", at)
    assert (theirs, last.finish_reason, last.completion_tokens) == (ours, "eos", at)


def test_streamed_pieces_add_up_to_the_whole_answer(remote):
    chunks = list(remote.complete("class Stack:\n", GenerationParams(max_new_tokens=24, temperature=0.0)))
    assert len(chunks) > 3 and all(c.finish_reason is None for c in chunks[:-1])
    counts = [c.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 24


# ---------------------------------------------------------------- cancel


def _wait_running(url: str, n: int, timeout: float = 20.0) -> float:
    deadline = time.monotonic() + timeout
    while (value := running_requests(url)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def _wait_idle(url: str, timeout: float = 20.0) -> float:
    deadline = time.monotonic() + timeout
    while (value := running_requests(url)) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def test_cancel_aborts_the_upstream_request(remote, vllm_server):
    cancel = threading.Event()
    chunks = []
    params = GenerationParams(max_new_tokens=400, temperature=1.0, seed=3)
    stream = remote.complete("# a long module\nimport os\n", params, cancel)
    for chunk in stream:
        chunks.append(chunk)
        if len(chunks) == 1:
            assert _wait_running(vllm_server.url, 1) == 1
            cancel.set()
    assert chunks[-1].finish_reason == "cancelled" and chunks[-1].completion_tokens < 400
    assert _wait_idle(vllm_server.url) == 0


def test_a_consumer_that_stops_reading_aborts_the_upstream_request(remote, vllm_server):
    stream = remote.complete("import sys\n", GenerationParams(max_new_tokens=400, temperature=1.0, seed=5))
    next(stream)
    assert _wait_running(vllm_server.url, 1) == 1
    stream.close()                                          # what a disconnected API client leads to
    assert _wait_idle(vllm_server.url) == 0


def test_cancel_all_stops_every_running_request(remote, vllm_server):
    params = GenerationParams(max_new_tokens=400, temperature=1.0, seed=7)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(lambda: run(remote.complete(f"# file {i}\n", params))) for i in range(3)]
        assert _wait_running(vllm_server.url, 3, timeout=60) == 3
        remote.cancel_all()
        reasons = [f.result(timeout=60)[1].finish_reason for f in futures]
    assert reasons == ["cancelled"] * 3
    assert _wait_idle(vllm_server.url) == 0


# ---------------------------------------------------------------- settings vLLM cannot honour


@pytest.mark.parametrize("setting,value", [("typical_p", 0.5), ("no_repeat_ngram_size", 3)])
def test_unsupported_settings_are_refused_by_name(remote, setting, value):
    params = GenerationParams(max_new_tokens=8, **{setting: value})
    with pytest.raises(UnsupportedParameter, match=f"^{setting} is not supported by the remote engine"):
        list(remote.complete("def f():", params))


def test_supported_sampling_settings_reach_the_server(remote):
    params = GenerationParams(max_new_tokens=16, temperature=0.7, top_p=0.9, top_k=20, min_p=0.05,
                              repetition_penalty=1.3, seed=11)
    text, last = run(remote.complete("def parse(text):", params))
    again, _ = run(remote.complete("def parse(text):", params))
    assert text == again and last.completion_tokens == 16


def test_repetition_penalty_matches_the_local_engine(remote, local):
    params = GenerationParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.3)
    penalised = run(remote.complete("x = [1, 2, ", params))[0]
    assert penalised == run(local.complete("x = [1, 2, ", params))[0]
    assert penalised != run(remote.complete("x = [1, 2, ", GREEDY))[0]


# ---------------------------------------------------------------- seeds


def test_the_same_seed_gives_the_same_text_and_another_seed_another(remote):
    def sample(seed):
        return run(remote.complete("def main():", GenerationParams(max_new_tokens=16, temperature=1.0,
                                                                    seed=seed)))[0]
    first = sample(1234)
    assert sample(1234) == first
    assert {sample(s) for s in (1, 2, 3)} - {first}


def test_seeded_requests_give_the_same_text_alone_and_batched(remote):
    """Long prompts arriving together are prefilled in one step; a seed holds whatever the batch."""
    cases = [(f"# module {i}\n" + "value = compute(value)\n" * 25, "\n") for i in range(12)]

    def sample(i):
        params = GenerationParams(max_new_tokens=8, temperature=0.8, seed=100 + i)
        return run(remote.infill(*cases[i], params))[0]
    alone = [sample(i) for i in range(len(cases))]
    with ThreadPoolExecutor(len(cases)) as pool:
        assert list(pool.map(sample, range(len(cases)))) == alone


# ---------------------------------------------------------------- servers that are down


def test_a_server_that_is_down_is_named_in_the_error(remote_models_dir):
    url = f"http://127.0.0.1:{free_port()}"
    engine = RemoteEngine(remote_models_dir, [url])
    with pytest.raises(RemoteUnavailable, match=f"{url} is unreachable.*check that the vLLM server"):
        engine.load(SERVED_NAME)


def test_a_replica_that_is_down_is_skipped(vllm_server, remote_models_dir):
    down = f"http://127.0.0.1:{free_port()}"
    engine = RemoteEngine(remote_models_dir, [down, vllm_server.url])
    engine.load(SERVED_NAME)
    for prompt in PROMPTS:
        text, last = run(engine.complete(prompt, GenerationParams(max_new_tokens=8, temperature=0.0)))
        assert last.completion_tokens == 8
    health = {h["url"]: h for h in engine.health()}
    assert not health[down]["healthy"] and health[vllm_server.url]["healthy"]


# ---------------------------------------------------------------- concurrency


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(remote):
    cases = FIM_CASES * 2
    sequential = [run(remote.infill(p, s, GREEDY))[0] for p, s in cases]
    with ThreadPoolExecutor(len(cases)) as pool:
        parallel = list(pool.map(lambda c: run(remote.infill(c[0], c[1], GREEDY))[0], cases))
    assert parallel == sequential
