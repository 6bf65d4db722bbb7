"""app.py's command line: hosts, credentials, the start-up model, and the API on the same server."""
from __future__ import annotations

import json
import urllib.request

import pytest

import app as app_module
from backend.engine import Engine
from backend.settings import Settings
from tests.helpers.models import BROKEN_NAME, DEMO_NAME


def test_defaults_serve_the_demo_model_on_localhost_7860():
    args = app_module.parse_args([])
    assert (args.port, app_module.host_of(args), args.api, args.share) == (7860, "127.0.0.1", False, False)
    assert app_module.host_of(app_module.parse_args(["--listen"])) == "0.0.0.0"
    assert app_module.host_of(app_module.parse_args(["--listen", "--listen-host", "10.1.2.3"])) == "10.1.2.3"


def test_gradio_auth_from_the_option_and_a_file(tmp_path):
    path = tmp_path / "auth.txt"
    path.write_text("ann:secret\nbob:pw1,cat:pw2\n\n")
    args = app_module.parse_args(["--gradio-auth", "dan:x:y", "--gradio-auth-path", str(path)])
    assert app_module.read_auth(args) == [("dan", "x:y"), ("ann", "secret"), ("bob", "pw1"), ("cat", "pw2")]
    assert app_module.read_auth(app_module.parse_args([])) is None
    with pytest.raises(SystemExit, match="user:pass"):
        app_module.read_auth(app_module.parse_args(["--gradio-auth", "nopassword"]))


def test_start_up_model_choice(models_dir, tmp_path):
    engine = Engine(models_dir)
    assert app_module.startup_model(engine, app_module.parse_args([])) == DEMO_NAME
    assert app_module.startup_model(engine, app_module.parse_args(["--model", "x"])) == "x"
    assert app_module.startup_model(engine, app_module.parse_args(["--no-autoload"])) is None
    assert app_module.startup_model(Engine(tmp_path), app_module.parse_args([])) is None


def test_a_failed_start_up_load_is_a_note_not_a_crash(models_dir, tmp_path):
    note = app_module.autoload(Engine(models_dir), Settings.load(None, tmp_path), BROKEN_NAME)
    assert BROKEN_NAME in note and "failed" in note


def test_the_api_is_served_beside_the_ui(app):
    with urllib.request.urlopen(app.url + "v1/models", timeout=10) as response:
        models = json.load(response)
    assert DEMO_NAME in [m["id"] for m in models["data"]]
    with urllib.request.urlopen(app.url, timeout=10) as response:
        assert b"StarCoder WebUI" in response.read()


def test_a_launched_ui_as_for_share_links_is_behind_the_guard():
    """--share builds Gradio's own app in launch(); the guard must be its middleware (no tunnel in tests)."""
    import gradio as gr
    import httpx

    from api import Credentials, Policy
    from tests.helpers.browser import free_port
    policy = Policy(Credentials("k3y"))
    with gr.Blocks() as demo:
        gr.Markdown("x")
    demo.launch(server_name="127.0.0.1", server_port=free_port(), auth=policy.credentials.check_login,
                prevent_thread_lock=True, app_kwargs=app_module.share_app_kwargs(policy), ssr_mode=False)
    try:
        demo.app.state.ui_user = app_module.session_user(demo.app)
        url = demo.local_url.rstrip("/")
        assert httpx.post(url + "/gradio_api/cancel", json={}, timeout=10).status_code == 401
        assert httpx.get(url + "/", headers={"Host": "evil.example"}, timeout=10).status_code == 400
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.post("/login", data={"username": "a", "password": "k3y"}).status_code == 200
            assert client.post("/gradio_api/cancel", json={}).status_code != 401
    finally:
        demo.close()
