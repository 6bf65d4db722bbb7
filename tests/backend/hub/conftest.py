"""The local Hub for the hub tests: one server per module, no token or endpoint from the developer's machine."""

from __future__ import annotations

import pytest
from huggingface_hub import constants

from tests.backend.hub.fake_repos import GATED, MAIN, REPO, TOKEN, V2
from tests.helpers.hub_server import Faults, HubServer


@pytest.fixture(scope="module")
def server():
    with HubServer() as s:
        s.add_repo(REPO, MAIN)
        s.add_repo(REPO, V2, branch="v2")
        s.add_repo(GATED, MAIN, token=TOKEN)
        yield s


@pytest.fixture(autouse=True)
def _isolated(server, monkeypatch, tmp_path_factory):
    server.faults = Faults()
    server.requests.clear()
    # small chunks make progress reports, cancellation and partial writes happen inside a small file
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    # no token unless a test gives one: not the developer's saved login, not their environment
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path_factory.getbasetemp() / "no-token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
