"""The guard around every route: Host, Origin and CORS, credentials, body size and pace, the JSON rule, the queue."""
from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import pytest

from api import Credentials, Policy, create_api
from api.auth import LoginLimiter, read_api_key, refusal
from tests.helpers.serving import API_KEY, serve

PREFIX = "def area(r):\n"


@pytest.fixture(scope="module")
def strict_url(engine, settings):
    policy = Policy(Credentials(API_KEY, (("ann", "pw"),)), cors_origins=("http://localhost:5173",),
                    max_body_bytes=64 * 1024, body_timeout_s=1.0, max_queue=1)
    with serve(create_api(engine, settings, policy=policy)) as url:
        yield url


def auth(key: str = API_KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_a_foreign_host_header_is_refused(base_url):
    # DNS rebinding: evil.example resolves to 127.0.0.1, the browser still sends its own name
    bad = httpx.get(f"{base_url}/v1/models", headers={"Host": "evil.example"}, timeout=10)
    assert bad.status_code == 400 and "evil.example" in bad.json()["error"]["message"]
    assert httpx.get(f"{base_url}/v1/models", headers={"Host": "localhost:1234"}, timeout=10).status_code == 200


def test_a_cross_site_form_cannot_unload_the_model(base_url, engine):
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": "http://localhost:9999"}, {"Sec-Fetch-Site": "cross-site"}):
        form = httpx.post(f"{base_url}/v1/internal/model/unload", data={"x": "1"}, headers=headers, timeout=10)
        assert form.status_code in (403, 415), headers
    empty = httpx.post(f"{base_url}/v1/internal/model/unload", timeout=10)
    assert empty.status_code == 415 and engine.loaded is not None


def test_cors_only_for_listed_origins(strict_url):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    listed = httpx.options(f"{strict_url}/v1/completions", headers={"Origin": "http://localhost:5173", **preflight})
    assert listed.status_code == 204
    assert listed.headers["access-control-allow-origin"] == "http://localhost:5173"
    other = httpx.options(f"{strict_url}/v1/completions", headers={"Origin": "http://localhost:8080", **preflight})
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
    got = httpx.get(f"{strict_url}/v1/models", headers={"Origin": "http://localhost:5173", **auth()})
    assert got.status_code == 200 and got.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_the_key_or_a_login_opens_every_route(strict_url):
    assert httpx.get(f"{strict_url}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{strict_url}/v1/models", headers=auth("nope"), timeout=10).status_code == 401
    assert httpx.get(f"{strict_url}/v1/models", headers=auth(), timeout=10).status_code == 200
    basic = base64.b64encode(b"ann:pw").decode()
    assert httpx.get(f"{strict_url}/v1/models", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    # a route nobody listed is locked too: gate by default
    assert httpx.get(f"{strict_url}/some/future/route", timeout=10).status_code == 401


def test_a_body_over_the_limit_is_413(strict_url):
    big = {"input_prefix": "x" * (70 * 1024), "n_predict": 1}
    response = httpx.post(f"{strict_url}/infill", json=big, headers=auth(), timeout=10)
    assert response.status_code == 413 and "--max-body-mb" in response.json()["error"]["message"]

    def chunks():                     # no Content-Length: the limit is counted as the body arrives
        yield b'{"input_prefix": "'
        for _ in range(80):
            yield b"y" * 1024
        yield b'"}'
    streamed = httpx.post(f"{strict_url}/infill", content=chunks(), timeout=10,
                          headers={**auth(), "Content-Type": "application/json"})
    assert streamed.status_code == 413


def test_a_half_sent_body_times_out(strict_url):
    host, port = strict_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /infill HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"input_".encode())
        start = time.monotonic()
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 408") and time.monotonic() - start < 5


def test_a_full_queue_answers_503_with_retry_after(strict_url):
    body = {"input_prefix": PREFIX, "n_predict": 400, "stream": True}
    with httpx.stream("POST", f"{strict_url}/infill", json=body, headers=auth(), timeout=60) as first:
        assert first.status_code == 200
        second = httpx.post(f"{strict_url}/infill", json=body | {"stream": False}, headers=auth(), timeout=10)
        assert second.status_code == 503 and second.headers["retry-after"] == "5"


def test_the_api_key_from_a_file_or_the_environment(tmp_path):
    path = tmp_path / "key"
    path.write_text("from-file\n")
    assert read_api_key(None, str(path), {}) == "from-file"
    assert read_api_key(None, None, {"STARCODER_API_KEY": "from-env"}) == "from-env"
    assert read_api_key("cli", None, {"STARCODER_API_KEY": "from-env"}) == "cli"
    assert read_api_key(None, None, {}) is None


def test_the_network_without_any_auth_is_refused_unless_asked_for():
    assert "--insecure-no-auth" in refusal("0.0.0.0", False, Credentials(), insecure=False)
    assert "share link" in refusal("127.0.0.1", True, Credentials(), insecure=False)
    assert refusal("0.0.0.0", False, Credentials(), insecure=True) is None
    assert refusal("0.0.0.0", False, Credentials("k"), insecure=False) is None
    assert refusal("127.0.0.1", False, Credentials(), insecure=False) is None


def test_failed_logins_are_rate_limited():
    limiter = LoginLimiter(attempts=3, window_s=60)
    for _ in range(3):
        assert limiter.retry_after("1.2.3.4") == 0
        limiter.failed("1.2.3.4")
    assert limiter.retry_after("1.2.3.4") > 0 and limiter.retry_after("5.6.7.8") == 0


def test_the_ui_login_takes_a_login_or_the_key():
    creds = Credentials("k3y", (("ann", "pw"),))
    assert creds.check_login("ann", "pw") and creds.check_login("anyone", "k3y")
    assert not creds.check_login("ann", "nope") and not Credentials().check_login("", "")
    assert json.dumps(creds.check_header(b"Bearer k3y")) == "true"


def test_a_refusal_answers_in_each_protocols_own_error_shape(keyed_url):
    """Editor plugins read errors in their server's shape: TGI's, Ollama's and llama.cpp's, not OpenAI's."""
    import httpx
    tgi = httpx.post(f"{keyed_url}/generate", json={"inputs": "x"}, timeout=10)
    assert tgi.status_code == 401 and set(tgi.json()) == {"error", "error_type"}
    ollama = httpx.post(f"{keyed_url}/api/generate", json={"model": "tiny", "prompt": "x"}, timeout=10)
    assert ollama.status_code == 401 and isinstance(ollama.json()["error"], str)
    llama = httpx.post(f"{keyed_url}/completion", json={"prompt": "x"}, timeout=10)
    assert llama.status_code == 401 and llama.json()["error"]["code"] == 401
    openai = httpx.post(f"{keyed_url}/v1/completions", json={"prompt": "x"}, timeout=10)
    assert openai.status_code == 401 and openai.json()["error"]["code"] == "invalid_api_key"
