"""Bad input is the client's error (400, never 500), and nothing CPU-heavy runs on the event loop."""
from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from api import create_api
from backend.settings import Settings
from tests.helpers.serving import serve

PREFIX = "def area(r):\n"


@pytest.mark.parametrize("body, param", [
    ({"prompt": [10**9]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": "x", "seed": 2**64}, "seed"),
    ({"prompt": "x", "repetition_penalty": 1e-300, "temperature": 1.0}, None),
    ({"prompt": "bad \ud800 surrogate"}, None),
])
def test_bad_values_are_400_not_500(base_url, body, param):
    # json.dumps escapes a lone surrogate as \ud800, as a JavaScript client would send it
    response = httpx.post(f"{base_url}/v1/completions", content=json.dumps({"model": "tiny", "max_tokens": 2, **body}),
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 400, response.text
    if param:
        assert param in response.text


def test_a_lone_surrogate_in_a_chat_is_400(base_url):
    body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi \udfff"}]}
    response = httpx.post(f"{base_url}/v1/chat/completions", content=json.dumps(body),
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 400


def test_max_completion_tokens_zero_is_not_ignored(base_url):
    body = {"model": "tiny", "max_completion_tokens": 0, "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400 and "max_completion_tokens" in response.text


def test_a_generation_cancelled_by_someone_else_says_so(base_url, engine):
    body = {"model": "tiny", "prompt": PREFIX, "max_tokens": 1500, "stream": True}
    reasons = []
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                if not reasons:
                    engine.cancel_all()            # what a load from another session does
                reasons.append(json.loads(line[6:])["choices"][0]["finish_reason"])
    assert reasons[-1] == "cancelled"


class LoopCheckingSettings(Settings):
    """Records whether a settings read ran on the event loop's thread."""
    on_loop: list[bool] = []

    def for_model(self, *args, **kwargs):
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        return super().for_model(*args, **kwargs)


def test_settings_are_read_off_the_event_loop(engine, api_models_dir):
    settings = LoopCheckingSettings.load(None, api_models_dir)
    with serve(create_api(engine, settings)) as url:
        for path, body in [("/v1/completions", {"prompt": PREFIX, "max_tokens": 1}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}),
                           ("/infill", {"input_prefix": PREFIX, "n_predict": 1})]:
            assert httpx.post(url + path, json=body, timeout=60).status_code == 200
    assert settings.on_loop and not any(settings.on_loop)
    assert threading.active_count() < 200


def test_loading_on_a_device_this_machine_lacks_is_400(base_url, engine):
    response = httpx.post(f"{base_url}/v1/internal/model/load", json={"model_name": "tiny", "device": "cuda:7"},
                          timeout=60)
    assert response.status_code == 400 and "not available" in response.json()["error"]["message"]
    assert engine.loaded is not None and engine.loaded.name == "tiny"
