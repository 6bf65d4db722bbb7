"""Fixtures for the UI tests: a models folder, a loaded Engine, the local Hub, the running app and Chromium."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from backend.engine import Engine
from backend.settings import Settings
from tests.helpers.hub_server import HubServer, read_folder
from tests.helpers.models import DEMO_NAME, ROOT, populate

from tests.helpers.browser import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: F401  (the browser tests use them)

HUB_REPO = "TheBloke/starcoder-GPTQ"
ARTIFACTS = ROOT / "tests" / "artifacts"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "browser: drives the real app in headless Chromium")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return populate(tmp_path_factory.mktemp("ui-models"))


@pytest.fixture(scope="session")
def engine(models_dir) -> Engine:
    engine = Engine(models_dir)
    engine.load(DEMO_NAME, device="cpu")
    return engine


@pytest.fixture
def settings(tmp_path) -> Settings:
    """The app's settings.yaml defaults with a per-test config-user.yaml."""
    loaded = Settings.load(ROOT / "settings.yaml", tmp_path)
    assert not loaded.warnings, loaded.warnings
    return loaded


@pytest.fixture(scope="session")
def hub_server(models_dir):
    with HubServer() as server:
        server.add_repo(HUB_REPO, read_folder(models_dir / DEMO_NAME))
        yield server


@pytest.fixture
def hub_env(hub_server, monkeypatch, tmp_path):
    """Point huggingface_hub at the local Hub with no token from the developer's machine."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    return hub_server


class AppProcess:
    """`python app.py` in a subprocess on a free port, restartable with the same folders."""

    def __init__(self, models_dir: Path, settings_file: Path, hub_url: str, log: Path, extra_args: tuple = (),
                 extra_env: dict | None = None) -> None:
        self.models_dir, self.settings_file, self.hub_url, self.log = models_dir, settings_file, hub_url, log
        self.extra_args, self.extra_env = tuple(extra_args), dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 120.0) -> float:
        """Start and wait until the page is served; returns the seconds it took."""
        self.port = free_port()
        env = dict(os.environ, HF_ENDPOINT=self.hub_url, HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1",
                   **self.extra_env)
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            env.pop(name, None)
        start = time.perf_counter()
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "app.py"), "--models-dir", str(self.models_dir), "--settings",
                 str(self.settings_file), "--port", str(self.port), "--device", "cpu", "--api", *self.extra_args],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"app.py did not serve within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def app_models_dir(tmp_path_factory) -> Path:
    return populate(tmp_path_factory.mktemp("app-models"))


@pytest.fixture(scope="session")
def app(app_models_dir, hub_server, tmp_path_factory):
    settings_file = tmp_path_factory.mktemp("app-settings") / "settings.yaml"
    shutil.copy(ROOT / "settings.yaml", settings_file)
    process = AppProcess(app_models_dir, settings_file, hub_server.url,
                         tmp_path_factory.getbasetemp() / "app.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium. Install it with "
                    f"`apt-get install -y chromium` and run the tests again.")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def wait_until_ready(page) -> None:
    """The page-load event has filled in the model's settings (typing earlier would be overwritten)."""
    from playwright.sync_api import expect
    # a wait, not a timing check: on a loaded 2-core machine the first page load can take several seconds
    expect(page.locator("#gen-status")).to_contain_text(re.compile("Ready|No model"), timeout=30_000)


@pytest.fixture
def page(browser, app):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(app.url)
    wait_until_ready(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield page
    context.close()
