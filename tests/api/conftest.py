"""API test fixtures: real uvicorn servers on free 127.0.0.1 ports over a real Engine with a throwaway model."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import openai
import pytest

from api import create_api
from backend.engine import Engine
from backend.settings import DEFAULTS, Settings
from tests.helpers.serving import API_KEY, N_POSITIONS, RecordingEngine, make_client, serve, write_tiny_model  # noqa: F401


@pytest.fixture(scope="session")
def api_models_dir(tmp_path_factory) -> Path:
    """models/ with 'tiny' (the one loaded) and 'other' (a model folder that is never loaded)."""
    root = tmp_path_factory.mktemp("api-models")
    write_tiny_model(root / "tiny", seed=0)
    write_tiny_model(root / "other", seed=1)
    return root


@pytest.fixture(scope="session")
def settings(api_models_dir) -> Settings:
    return Settings.load(None, api_models_dir)


@pytest.fixture(scope="session")
def engine(api_models_dir) -> RecordingEngine:
    engine = RecordingEngine(api_models_dir)
    engine.load("tiny", device="cpu")
    return engine


@pytest.fixture(scope="session")
def base_url(engine, settings) -> Iterator[str]:
    with serve(create_api(engine, settings)) as url:
        yield url


@pytest.fixture(scope="session")
def keyed_url(engine, settings) -> Iterator[str]:
    with serve(create_api(engine, settings, api_key=API_KEY)) as url:
        yield url


@pytest.fixture()
def empty_engine(api_models_dir) -> Engine:
    return Engine(api_models_dir)


@pytest.fixture()
def empty_url(empty_engine, settings) -> Iterator[str]:
    """A server whose engine has no model loaded."""
    with serve(create_api(empty_engine, settings)) as url:
        yield url


@pytest.fixture()
def client(base_url) -> openai.OpenAI:
    return make_client(base_url)


@pytest.fixture(scope="session")
def demo_api(demo_dir, tmp_path_factory):
    """The shipped demo model behind a live API (loaded once for every test that uses it)."""
    engine = Engine(demo_dir.parent)
    engine.load(demo_dir.name, device="cpu")
    # the built-in defaults, not whatever a user saved for the demo model in models/config-user.yaml
    settings = Settings(dict(DEFAULTS), tmp_path_factory.mktemp("settings") / "config-user.yaml")
    with serve(create_api(engine, settings)) as url:
        yield engine, url
