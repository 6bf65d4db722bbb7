"""The real app started with a key (from the environment): every door of the web UI and the API asks for it."""
from __future__ import annotations

import shutil
import signal
import socket
import threading
import time

import httpx
import pytest

import app as app_module
from tests.helpers.models import ROOT
from tests.ui.conftest import AppProcess

KEY = "ui-test-key"


@pytest.fixture(scope="module")
def keyed_app(app_models_dir, hub_server, tmp_path_factory):
    settings_file = tmp_path_factory.mktemp("keyed-settings") / "settings.yaml"
    shutil.copy(ROOT / "settings.yaml", settings_file)
    process = AppProcess(app_models_dir, settings_file, hub_server.url, tmp_path_factory.getbasetemp() / "keyed.log",
                         extra_env={"STARCODER_API_KEY": KEY})
    process.start()
    yield process
    process.stop()


def test_without_the_key_no_ui_or_api_route_answers(keyed_app):
    url = keyed_app.url.rstrip("/")
    assert httpx.get(url + "/", timeout=10).status_code == 200          # the login page
    for method, path in [("GET", "/config"), ("GET", "/gradio_api/info"),
                         ("POST", "/gradio_api/queue/join"), ("POST", "/gradio_api/cancel"),
                         ("POST", "/gradio_api/reset"), ("POST", "/gradio_api/upload"),
                         ("GET", "/v1/models"), ("POST", "/v1/internal/model/unload"), ("POST", "/infill")]:
        response = httpx.request(method, url + path, json={}, timeout=10)
        assert response.status_code == 401, (method, path, response.status_code)
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).status_code == 200


def test_the_ui_login_takes_the_key_and_its_session_opens_every_route(keyed_app):
    url = keyed_app.url.rstrip("/")
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/login", data={"username": "me", "password": "wrong"}).status_code == 400
        assert client.post("/login", data={"username": "me", "password": KEY}).status_code == 200
        assert client.get("/config").status_code == 200
        assert client.get("/v1/models").status_code == 200


def test_a_foreign_host_is_refused(keyed_app):
    response = httpx.get(keyed_app.url, headers={"Host": "rebind.example:7860"}, timeout=10)
    assert response.status_code == 400


def test_failed_logins_are_limited(keyed_app):
    url = keyed_app.url.rstrip("/")
    codes = [httpx.post(url + "/login", data={"username": "x", "password": "bad"}, timeout=10).status_code
             for _ in range(6)]
    assert codes[-1] == 429 and 400 in codes


def test_listening_on_the_network_without_auth_refuses_to_start():
    with pytest.raises(SystemExit, match="--insecure-no-auth"):
        app_module.policy_of(app_module.parse_args(["--listen"]), None)
    policy = app_module.policy_of(app_module.parse_args(["--listen", "--insecure-no-auth"]), None)
    assert not policy.credentials.locked and "localhost" in policy.allowed_hosts


def test_sigterm_exits_within_seconds_whatever_the_clients_do(keyed_app):
    """A stream in progress and a client that never finishes its body must not hold the shutdown."""
    url = keyed_app.url.rstrip("/")
    started = threading.Event()

    def stream():
        body = {"prompt": "def f():", "max_tokens": 400, "temperature": 1.0, "stream": True}
        try:
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {KEY}"}) as response:
                assert response.status_code == 200
                for _ in response.iter_lines():
                    started.set()
        except httpx.HTTPError:
            pass
    threading.Thread(target=stream, daemon=True).start()
    assert started.wait(60)
    slow = socket.create_connection(("127.0.0.1", keyed_app.port), timeout=10)
    slow.sendall(f"POST /infill HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{".encode())
    time.sleep(0.5)
    start = time.monotonic()
    keyed_app.proc.send_signal(signal.SIGTERM)
    try:
        keyed_app.proc.wait(30)
    finally:
        slow.close()
    assert time.monotonic() - start < 8
