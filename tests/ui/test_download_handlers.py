"""Download handlers against the local Hub: file list, progress, result, and the model list update."""
from __future__ import annotations

import hashlib

from backend.engine import Engine
from tests.ui.conftest import HUB_REPO
from ui.download_tab import DownloadHandlers, progress_html


def test_file_list_shows_names_sizes_and_total(hub_env, tmp_path):
    text = DownloadHandlers(Engine(tmp_path)).file_list(HUB_REPO, "")
    assert "model.safetensors" in text and "config.json" in text and "**total**" in text
    assert "TheBloke_starcoder-GPTQ" in text
    assert "Failed" in DownloadHandlers(Engine(tmp_path)).file_list("not a repo name", "")
    assert "not found" in DownloadHandlers(Engine(tmp_path)).file_list("nobody/nothing", "")


def test_download_reports_progress_then_the_result_and_refreshes_the_models(hub_env, tmp_path):
    handlers = DownloadHandlers(Engine(tmp_path))
    updates = list(handlers.download(HUB_REPO + ":main", "", None))
    job, first_html, first_status, _ = updates[0]
    assert job is not None and "Downloading" in first_status
    final_job, html, result, dropdown = updates[-1]
    assert final_job is None and "overall" in html and "100%" in html and "ETA" in html
    assert "model.safetensors ·" in html and "config.json ·" in html   # a bar per file
    assert "checksums verified" in result and "model.safetensors" in result
    assert "TheBloke_starcoder-GPTQ" in dropdown["choices"]
    weights = tmp_path / "TheBloke_starcoder-GPTQ" / "model.safetensors"
    assert f"| model.safetensors | `{hashlib.sha256(weights.read_bytes()).hexdigest()[:16]}…` |" in result
    # a second run finds it up to date
    assert "up to date" in list(handlers.download(HUB_REPO, "", "x"))[-1][2]


def test_download_errors_and_cancel_are_reported(hub_env, tmp_path):
    handlers = DownloadHandlers(Engine(tmp_path))
    _, _, status, _ = list(handlers.download("TheBloke/missing-GPTQ", "", None))[-1]
    assert "Failed" in status and "not found" in status
    assert "Failed" in list(handlers.download("../etc", "", None))[-1][2]
    assert handlers.cancel(None) == "Nothing to cancel."


def test_progress_html_before_the_first_report():
    assert "Resolving" in progress_html(None)


def test_remote_engine_fetches_tokenizer_and_config_only(hub_env, tmp_path):
    # the vLLM server holds the weights: the box's default leaves them out, and the folder is usable as is
    from backend.remote.engine import RemoteEngine
    engine = RemoteEngine(tmp_path, ["http://127.0.0.1:9"])
    assert engine.needs_weights is False and Engine(tmp_path).needs_weights is True
    handlers = DownloadHandlers(engine)
    listing = handlers.file_list(HUB_REPO, "", False)
    assert "| config.json |" in listing and "| model.safetensors |" not in listing
    assert "Skipped (not needed or unsafe): " in listing and "model.safetensors" in listing.split("Skipped")[1]
    result = list(handlers.download(HUB_REPO, "", None, False))[-1][2]
    folder = tmp_path / "TheBloke_starcoder-GPTQ"
    assert "checksums verified" in result and not (folder / "model.safetensors").exists()
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert engine.list_models() == ["TheBloke_starcoder-GPTQ"]
    assert engine.inspect("TheBloke_starcoder-GPTQ").n_positions > 0
