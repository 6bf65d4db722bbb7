"""Our HTTP API in front of the remote engine (a real vLLM): FIM through `suffix` and /infill reaches vLLM
as token ids, streamed answers equal whole ones, and a setting vLLM lacks is a 400 naming it."""
from __future__ import annotations

import json
from typing import Iterator

import httpx
import pytest

from api import create_api
from backend.settings import Settings
from tests.helpers.serving import serve, served_params
from tests.remote.vllm_server import SERVED_NAME

pytestmark = pytest.mark.vllm

PREFIX, SUFFIX = "def add(a, b):\n    ", "\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture(scope="module")
def api_url(remote, remote_models_dir) -> Iterator[str]:
    with serve(create_api(remote, Settings.load(None, remote_models_dir))) as url:
        yield url


def events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def local_middle(local, order: str = "psm") -> str:
    # what our API sends upstream: the model folder's defaults under the request's fields
    return "".join(c.text for c in local.infill(PREFIX, SUFFIX, served_params(local, max_new_tokens=40,
                                                                                temperature=0.0), order))


def test_openai_suffix_is_fim_on_vllm_and_streams_the_same_text(api_url, local):
    body = {"model": SERVED_NAME, "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 40, "temperature": 0}
    whole = httpx.post(f"{api_url}/v1/completions", json=body, timeout=120).json()
    streamed = events(httpx.post(f"{api_url}/v1/completions", json=body | {"stream": True}, timeout=120))
    text = "".join(e["choices"][0]["text"] for e in streamed)
    assert whole["choices"][0]["text"] == text == local_middle(local)
    assert whole["choices"][0]["finish_reason"] == streamed[-1]["choices"][0]["finish_reason"]
    assert whole["usage"]["completion_tokens"] > 0


def test_llamacpp_infill_on_vllm_matches_the_local_engine(api_url, local):
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 40, "temperature": 0}
    answer = httpx.post(f"{api_url}/infill", json=body, timeout=120).json()
    assert answer["content"] == local_middle(local) and answer["tokens_predicted"] > 0


def test_a_setting_vllm_lacks_is_a_400_naming_it(api_url):
    body = {"prompt": "def f():", "max_tokens": 8, "typical_p": 0.5}
    response = httpx.post(f"{api_url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "typical_p" and "not supported by the remote engine" in error["message"]
