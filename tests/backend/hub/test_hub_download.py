"""Downloads against the local Hub: placement, resume, retries, checksums, tokens, progress, cancel, locking."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time

import pytest

from backend import hub
from tests.backend.hub.fake_repos import (
    EXPECTED_MAIN, GATED, MAIN, REPO, TOKEN, V2, WEIGHTS, fetch, loadable, staged,
)
from tests.helpers.hub_server import read_folder


def test_fresh_download_places_verified_files_and_metadata(server, tmp_path):
    models = tmp_path / "models"
    result = fetch(server, models)
    assert result.path == (models / "TheBloke_starcoder-GPTQ").resolve() and not result.up_to_date
    on_disk = read_folder(result.path)
    assert set(on_disk) == EXPECTED_MAIN | {hub.METADATA_FILE}
    assert all(on_disk[n] == MAIN[n] for n in EXPECTED_MAIN)
    meta = on_disk[hub.METADATA_FILE].decode()
    assert f"url: {server.url}/{REPO}\n" in meta and "branch: main\n" in meta
    assert f"commit: {result.commit}\n" in meta and "download date: " in meta
    for n in EXPECTED_MAIN:
        assert f"    {hashlib.sha256(MAIN[n]).hexdigest()}  {n}\n" in meta
    assert loadable(models) == ["TheBloke_starcoder-GPTQ"] and staged(models) == []


def test_second_download_of_same_commit_fetches_nothing(server, tmp_path):
    fetch(server, tmp_path)
    server.requests.clear()
    assert fetch(server, tmp_path).up_to_date
    assert not any("/resolve/" in p or "/cdn/" in p for _, p, _ in server.requests)


def test_branch_download_goes_to_its_own_folder(server, tmp_path):
    result = fetch(server, tmp_path, REPO + ":v2")
    assert result.path.name == "TheBloke_starcoder-GPTQ_v2"
    assert (result.path / "gptq_model-4bit--1g.safetensors").read_bytes() == V2["gptq_model-4bit--1g.safetensors"]
    assert "branch: v2\n" in (result.path / hub.METADATA_FILE).read_text()


def test_specific_file(server, tmp_path):
    result = fetch(server, tmp_path, specific_files=["config.json"])
    assert set(read_folder(result.path)) == {"config.json", hub.METADATA_FILE}
    with pytest.raises(hub.FileNotFoundOnHubError, match="nope.json"):
        fetch(server, tmp_path, specific_files=["nope.json"])
    with pytest.raises(hub.PickleWeightsError, match="--allow-pickle"):
        fetch(server, tmp_path, specific_files=["pytorch_model.bin"])


def test_without_weights_fetches_tokenizer_and_configs_then_a_full_download_completes_the_folder(server, tmp_path):
    # a model that a remote vLLM engine serves needs only what the app reads: configs and tokenizer
    result = fetch(server, tmp_path, weights=False)
    on_disk = set(read_folder(result.path))
    assert on_disk == {n for n in EXPECTED_MAIN if not hub.is_weights(n)} | {hub.METADATA_FILE}
    assert WEIGHTS not in on_disk and "config.json" in on_disk and "quantize_config.json" in on_disk
    assert fetch(server, tmp_path, weights=False).up_to_date
    full = fetch(server, tmp_path)                  # adds the weights to the same folder
    assert not full.up_to_date and set(read_folder(full.path)) == EXPECTED_MAIN | {hub.METADATA_FILE}
    assert (full.path / WEIGHTS).read_bytes() == MAIN[WEIGHTS]


def test_resume_after_the_server_drops_the_connection_mid_file(server, tmp_path):
    server.faults.drop_after[WEIGHTS] = 150_000
    result = fetch(server, tmp_path)
    assert (result.path / WEIGHTS).read_bytes() == MAIN[WEIGHTS]
    ranges = [h.get("range") for h in server.gets(WEIGHTS)]
    assert ranges[0] is None and len(ranges) == 2
    assert ranges[1].startswith("bytes=") and int(ranges[1][6:].split("-")[0]) > 0  # resumed, not restarted


def test_retries_with_backoff_then_a_clear_failure(server, tmp_path):
    server.faults.fail_status[WEIGHTS] = [503, 502]
    assert (fetch(server, tmp_path, retries=2).path / WEIGHTS).read_bytes() == MAIN[WEIGHTS]
    server.faults.fail_status[WEIGHTS] = [503] * 5
    with pytest.raises(hub.NetworkError, match=f"{WEIGHTS}.*run again to resume"):
        fetch(server, tmp_path / "other", retries=2)
    assert loadable(tmp_path / "other") == []


@pytest.mark.parametrize("name", [WEIGHTS, "config.json"])  # LFS sha256 and git blob sha1
def test_corrupted_bytes_fail_the_whole_download_naming_the_file(server, tmp_path, name):
    server.faults.corrupt.add(name)
    with pytest.raises(hub.ChecksumError, match=name) as info:
        fetch(server, tmp_path)
    assert info.value.filename == name
    assert loadable(tmp_path) == []
    assert not list(tmp_path.rglob(name + "*"))  # the corrupt bytes are not kept for a resume


def test_gated_repo_needs_a_token_and_says_how_to_get_access(server, tmp_path):
    with pytest.raises(hub.AccessDeniedError) as info:
        fetch(server, tmp_path, GATED)
    message = str(info.value)
    assert "401" in message and "licence" in message and f"{server.url}/{GATED}" in message
    assert "--token" in message and "HF_TOKEN" in message
    with pytest.raises(hub.AccessDeniedError, match="403"):
        fetch(server, tmp_path, GATED, token="hf_wrong")
    assert loadable(tmp_path) == [] and staged(tmp_path) == []
    result = fetch(server, tmp_path, GATED, token=TOKEN)
    assert (result.path / WEIGHTS).read_bytes() == MAIN[WEIGHTS]
    heads = [h for m, p, h in server.requests if m == "HEAD" and p.endswith(WEIGHTS)]
    assert heads[-1]["authorization"] == f"Bearer {TOKEN}"
    assert "authorization" not in server.gets(WEIGHTS)[-1]  # the token never goes to the CDN origin


def test_token_from_hf_token_and_endpoint_from_hf_endpoint(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    result = hub.download(GATED, tmp_path)
    assert (result.path / WEIGHTS).exists()


def test_missing_repo_and_branch_are_404s_with_a_fix(server, tmp_path):
    with pytest.raises(hub.RepoNotFoundError, match="TheBloke/nope.*404.*spelling"):
        fetch(server, tmp_path, "TheBloke/nope")
    with pytest.raises(hub.BranchNotFoundError, match="'gone'.*404"):
        fetch(server, tmp_path, REPO + ":gone")
    assert not any(tmp_path.iterdir())


def test_no_network_is_a_network_error(tmp_path):
    with pytest.raises(hub.NetworkError, match="connection"):
        hub.download(REPO, tmp_path, endpoint="http://127.0.0.1:9")


def test_disk_space_is_checked_before_anything_is_fetched(server, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**6, 10**6, 1000))
    with pytest.raises(hub.DiskFullError, match="needs 0.00 GB.*--models-dir"):
        fetch(server, tmp_path)
    assert not server.gets(WEIGHTS) and loadable(tmp_path) == []


def test_progress_is_monotonic_and_reaches_the_total(server, tmp_path):
    reports: list[hub.DownloadProgress] = []
    fetch(server, tmp_path, on_progress=reports.append, threads=3)
    done = [p.done for p in reports]
    assert done == sorted(done) and reports[-1].finished
    assert reports[-1].done == reports[-1].total == sum(len(MAIN[n]) for n in EXPECTED_MAIN)
    assert reports[-1].files_done == reports[-1].files_total == len(EXPECTED_MAIN)
    per_file = [p for p in reports if p.filename == WEIGHTS]
    assert len({p.file_done for p in per_file}) >= 4 and per_file[-1].file_done == len(MAIN[WEIGHTS])
    assert all(p.file_done <= p.file_total for p in reports) and reports[-1].speed > 0


def test_background_job_cancel_then_resume_from_the_partial_file(server, tmp_path):
    jobs: list[hub.DownloadJob] = []

    def cancel_mid_file(p: hub.DownloadProgress) -> None:
        if p.filename == WEIGHTS and 0 < p.file_done < p.file_total:
            while not jobs:
                time.sleep(0.001)
            jobs[0].cancel()

    jobs.append(hub.start_download(REPO, tmp_path, on_progress=cancel_mid_file, endpoint=server.url, threads=1))
    with pytest.raises(hub.DownloadCancelled, match="resume"):
        jobs[0].wait(timeout=30)
    assert jobs[0].done and loadable(tmp_path) == []
    partial = list((tmp_path / hub.STAGING_DIR).rglob(WEIGHTS + ".incomplete"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(MAIN[WEIGHTS])
    size = partial[0].stat().st_size
    server.requests.clear()

    job = hub.start_download(REPO, tmp_path, endpoint=server.url)
    result = job.wait(timeout=30)
    assert job.progress.finished and (result.path / WEIGHTS).read_bytes() == MAIN[WEIGHTS]
    assert [h.get("range") for h in server.gets(WEIGHTS)] == [f"bytes={size}-"]
    assert staged(tmp_path) == []


def test_a_download_does_not_block_the_caller(server, tmp_path):
    gate = threading.Event()
    job = hub.start_download(REPO, tmp_path, endpoint=server.url, on_progress=lambda p: gate.wait(10))
    assert not job.done and job.wait(timeout=0.05) is None  # the caller's thread is free meanwhile
    gate.set()
    assert job.wait(timeout=30).path.is_dir() and job.error is None


def test_a_second_download_into_the_same_folder_is_refused(server, tmp_path):
    holding, gate = threading.Event(), threading.Event()
    first = hub.start_download(REPO, tmp_path, endpoint=server.url,
                               on_progress=lambda p: (holding.set(), gate.wait(10)))
    assert holding.wait(10)  # progress starts only once the folder's lock is held
    with pytest.raises(hub.DownloadError, match="already being downloaded"):
        fetch(server, tmp_path)
    gate.set()
    assert first.wait(timeout=30).path.is_dir()
