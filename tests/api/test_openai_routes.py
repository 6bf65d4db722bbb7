"""OpenAI-compatible routes through the official openai client: completions (plain and FIM), chat, streaming."""
from __future__ import annotations

import httpx
import openai
import pytest

from backend import prompts
from backend.generate import GenerationParams
from backend.settings import GENERATION_KEYS

PROMPT = "def add(a, b):\n"
SUFFIX = "\n    return total\n"


def engine_text(engine, settings, kind: str, *args, **overrides) -> tuple[str, object]:
    """What the engine itself yields for the same request (the API's defaults are the model's settings)."""
    saved = settings.for_model("tiny")
    params = GenerationParams.from_dict({**{k: saved[k] for k in GENERATION_KEYS}, **overrides})
    chunks = list(getattr(engine, kind)(*args, params))
    return "".join(c.text for c in chunks), chunks[-1]


def test_models_lists_the_loaded_model_first(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny", "other"]
    assert models[0].model_extra["loaded"] is True and models[1].model_extra["loaded"] is False
    assert client.models.retrieve("other").id == "other"


def test_completion_matches_the_engine(client, engine, settings):
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, seed=3)
    text, last = engine_text(engine, settings, "complete", PROMPT, max_new_tokens=8, seed=3)
    assert out.choices[0].text == text
    assert out.choices[0].finish_reason == "length"
    assert out.model == "tiny" and out.object == "text_completion"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (last.prompt_tokens, 8)
    assert out.usage.total_tokens == last.prompt_tokens + 8


def test_completion_with_suffix_returns_only_the_middle(client, engine, settings):
    out = client.completions.create(model="tiny", prompt=PROMPT, suffix=SUFFIX, max_tokens=8, seed=5)
    middle, last = engine_text(engine, settings, "infill", PROMPT, SUFFIX, max_new_tokens=8, seed=5)
    assert out.choices[0].text == middle
    assert out.usage.prompt_tokens == last.prompt_tokens == (
        engine.count_tokens(PROMPT) + engine.count_tokens(SUFFIX) + 3)
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, seed=5)
    assert plain.usage.prompt_tokens == engine.count_tokens(PROMPT)


@pytest.mark.parametrize("suffix", [None, SUFFIX])
def test_streamed_completion_equals_the_whole_one(client, suffix):
    extra = {} if suffix is None else {"suffix": suffix}
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, seed=11, **extra)
    events = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, seed=11, stream=True,
                                            stream_options={"include_usage": True}, **extra))
    text_events = [e for e in events if e.choices]
    assert "".join(e.choices[0].text for e in text_events) == whole.choices[0].text
    assert [e.choices[0].finish_reason for e in text_events][-1] == "length"
    assert all(e.choices[0].finish_reason is None for e in text_events[:-1])
    assert events[-1].usage.completion_tokens == 10 and not events[-1].choices


def test_echo_prepends_the_prompt(client):
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, seed=1, echo=True)
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, seed=1)
    assert out.choices[0].text == PROMPT + plain.choices[0].text
    streamed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, seed=1, echo=True, stream=True)
    assert "".join(e.choices[0].text for e in streamed) == out.choices[0].text


def test_extra_samplers_and_stop(client):
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, seed=2, temperature=0.9,
                                    top_p=0.5, stop=["\n"], extra_body={"top_k": 5, "repetition_penalty": 1.2})
    assert "\n" not in out.choices[0].text


def test_chat_through_the_dialogue_prompt(client, engine, settings):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add two numbers."}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, seed=4)
    text, last = engine_text(engine, settings, "chat", messages, max_new_tokens=8, seed=4)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == text.strip()
    assert out.usage.prompt_tokens == engine.count_tokens(prompts.render_dialogue(messages)) == last.prompt_tokens
    events = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, seed=4, stream=True))
    assert events[0].choices[0].delta.role == "assistant"
    assert "".join(e.choices[0].delta.content or "" for e in events).strip() == text.strip()
    assert events[-1].choices[0].finish_reason == "length"
    assert events[-1].object == "chat.completion.chunk"


def test_chat_accepts_content_parts(client):
    out = client.chat.completions.create(
        model="tiny", max_tokens=2, seed=1,
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    assert out.usage.completion_tokens == 2


# ---------------------------------------------------------------- errors

def _error(exc_info) -> dict:
    body = exc_info.value.body
    assert set(body) >= {"message", "type", "param", "code"}, body
    return body


@pytest.mark.parametrize("kwargs, param", [
    ({"n": 2}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"logprobs": 2}, "logprobs"),
    ({"prompt": ["a", "b"]}, "prompt"),
])
def test_bad_parameters_are_400(client, kwargs, param):
    request = {"model": "tiny", "prompt": PROMPT, "max_tokens": 4} | kwargs
    with pytest.raises(openai.BadRequestError) as exc_info:
        client.completions.create(**request)
    body = _error(exc_info)
    assert body["type"] == "invalid_request_error" and body["param"] == param
    assert exc_info.value.status_code == 400


def test_message_names_the_bad_parameter(client):
    with pytest.raises(openai.BadRequestError) as exc_info:
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, temperature=-1)
    assert "temperature" in _error(exc_info)["message"]
    with pytest.raises(openai.BadRequestError) as exc_info:
        client.completions.create(model="tiny", prompt="", max_tokens=4)
    assert "empty" in _error(exc_info)["message"]


def test_max_tokens_larger_than_what_fits_is_capped(client, engine):
    # Continue sends max_tokens 4096 whatever the model: the answer gets what is left, and says "length"
    prompt = "x = 1\n" * 340
    room = 2048 - engine.count_tokens(prompt)
    assert 0 < room < 40
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=4096)
    assert out.usage.completion_tokens == room and out.choices[0].finish_reason == "length"
    fim = client.completions.create(model="tiny", prompt=prompt, suffix="\n", max_tokens=4096)
    assert fim.usage.completion_tokens == room - 4 and fim.choices[0].finish_reason == "length"


def test_prompt_that_cannot_fit_is_400_with_both_numbers(client, engine):
    prompt = "x = 1\n" * 400
    n_prompt = engine.count_tokens(prompt)
    assert n_prompt >= 2048
    with pytest.raises(openai.BadRequestError) as exc_info:
        client.completions.create(model="tiny", prompt=prompt, max_tokens=4)
    body = _error(exc_info)
    assert body["code"] == "context_length_exceeded" and body["param"] == "prompt"
    assert str(n_prompt) in body["message"] and "2048" in body["message"]
    with pytest.raises(openai.BadRequestError) as exc_info:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=4)
    assert _error(exc_info)["param"] == "messages"


def test_model_names(client):
    with pytest.raises(openai.NotFoundError) as exc_info:
        client.completions.create(model="other", prompt=PROMPT, max_tokens=2)
    body = _error(exc_info)
    assert body["code"] == "model_not_found" and "/v1/internal/model/load" in body["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    # editor plugins send names of their own: served by the loaded model, which the response names
    out = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT, max_tokens=2)
    assert out.model == "tiny"


def test_malformed_requests_are_400_in_openai_shape(base_url):
    with httpx.Client(base_url=base_url, timeout=30) as http:
        bad_json = http.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
        no_messages = http.post("/v1/chat/completions", json={"model": "tiny"})
        assert no_messages.status_code == 400 and no_messages.json()["error"]["param"] == "messages"
        wrong_type = http.post("/v1/completions", json={"prompt": "x", "max_tokens": "many"})
        assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "max_tokens"
        unknown = http.get("/v1/nothing-here")
        assert unknown.status_code == 404 and "message" in unknown.json()["error"]
        # still serving after all of that
        assert http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}).status_code == 200


def test_every_generation_setting_is_a_request_field():
    """The API's sampler fields come from the settings table: a new setting needs no schema edit."""
    from api.schemas import OPENAI_OWN, CompletionRequest
    from backend.settings import GENERATION_KEYS
    assert set(CompletionRequest.model_fields) >= set(GENERATION_KEYS) - set(OPENAI_OWN)
