"""Translation of huggingface_hub's and its HTTP client's errors, whichever client the installed release uses."""

from __future__ import annotations

import errno
import importlib

import pytest

from backend import hub
from backend.hub import compat

REF, ENDPOINT = hub.RepoRef("TheBloke/starcoder-GPTQ"), "https://hub.example"


def _installed_clients() -> list[str]:
    return [name for name in ("httpx2", "httpx") if importlib.util.find_spec(name) is not None]


@pytest.mark.parametrize("client", _installed_clients())
def test_a_dropped_connection_is_a_network_error_under_each_installed_client(client):
    module = importlib.import_module(client)
    err = hub.translate_error(module.ConnectError("connection refused"), REF, ENDPOINT, "model.safetensors")
    assert isinstance(err, hub.NetworkError)
    assert "model.safetensors" in str(err) and "run again to resume" in str(err)


def test_the_client_huggingface_hub_itself_uses_is_covered():
    from huggingface_hub import errors

    client = next(c.__module__.split(".")[0] for c in errors.HfHubHTTPError.__mro__
                  if c.__module__.startswith("httpx"))  # httpx (1.x) or httpx2 (2.x)
    assert any(t.__module__.split(".")[0] == client for t in compat.TRANSPORT_ERRORS)


def test_disk_full_and_other_errors_keep_their_meaning():
    assert isinstance(hub.translate_error(OSError(errno.ENOSPC, "full"), REF, ENDPOINT), hub.DiskFullError)
    other = hub.translate_error(ValueError("odd\nsecond line"), REF, ENDPOINT)
    assert type(other) is hub.DownloadError and "odd" in str(other) and "second" not in str(other)


def test_every_download_error_is_a_user_error():
    from backend.errors import UserError

    assert issubclass(hub.DownloadError, UserError) and issubclass(hub.ChecksumError, UserError)


@pytest.mark.parametrize("version, old", [("0.36.0", True), ("1.0.0rc1", False), ("1.33.2", False),
                                          ("2.4.0", False)])
def test_the_version_floor(version, old):
    assert (compat._version(version) < compat.MIN_VERSION) is old
