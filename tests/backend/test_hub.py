"""Tests for backend/hub.py and download_model.py against the local Hub stand-in."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants
from safetensors.numpy import save

from backend import hub
from tests.hub_server import Faults, HubServer, read_folder

ROOT = Path(__file__).resolve().parents[2]
REPO, GATED, TOKEN = "TheBloke/starcoder-GPTQ", "bigcode/gated-GPTQ", "hf_test_secret"
WEIGHTS = "model.safetensors"


def _model_files(seed: int, basename: str = "model") -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    k, n = 512, 256  # one GPTQ-shaped 4-bit layer, ~300 KB in all
    tensors = {"h.0.mlp.c_fc.qweight": rng.integers(-2**31, 2**31, (k // 8, n), dtype=np.int32),
               "h.0.mlp.c_fc.qzeros": np.full((1, n // 8), 0x77777777, dtype=np.int32),
               "h.0.mlp.c_fc.scales": rng.random((1, n)).astype(np.float16),
               "h.0.mlp.c_fc.g_idx": np.zeros(k, dtype=np.int32),
               "wte.weight": rng.random((256, 256)).astype(np.float16)}
    quant = {"bits": 4, "group_size": -1, "desc_act": True, "sym": True, "model_file_base_name": basename}
    return {
        f"{basename}.safetensors": save(tensors),
        "config.json": json.dumps({"model_type": "gpt_bigcode", "quantization_config": quant}).encode(),
        "quantize_config.json": json.dumps(quant).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "seed": seed}).encode(),
        "tokenizer_config.json": b'{"model_max_length": 8192}',
        "special_tokens_map.json": b'{"eos_token": "<|endoftext|>"}',
        "merges.txt": b"#version: 0.2\n",
        "README.md": b"# test model\n",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "pytorch_model.bin": b"pickle, never fetched while safetensors exist",
        "modeling_custom.py": b"raise SystemExit('remote code must not be fetched by default')\n",
    }


MAIN, V2 = _model_files(0), _model_files(1, "gptq_model-4bit--1g")
EXPECTED_MAIN = {n for n in MAIN if not n.endswith((".bin", ".py")) and n != ".gitattributes"}


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


def fetch(server, models: Path, repo: str = REPO, **kwargs) -> hub.DownloadResult:
    return hub.download(repo, models, endpoint=server.url, backoff=0.01, **kwargs)


def loadable(models: Path) -> list[str]:
    """What a model list would show: every non-hidden folder."""
    return sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if models.exists() else []


def staged(models: Path) -> list[str]:
    """What a download left aside for a resume (the per-folder lock files stay by design)."""
    folder = models / hub.STAGING_DIR
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".lock") if folder.exists() else []


@pytest.mark.parametrize("name, repo_id, branch, folder", [
    ("TheBloke/starcoder-GPTQ", REPO, "main", "TheBloke_starcoder-GPTQ"),
    (" TheBloke/starcoder-GPTQ:v2\n", REPO, "v2", "TheBloke_starcoder-GPTQ_v2"),
    ("https://huggingface.co/TheBloke/starcoder-GPTQ", REPO, "main", "TheBloke_starcoder-GPTQ"),
    ("https://huggingface.co/TheBloke/starcoder-GPTQ/tree/gptq-4bit-32g", REPO, "gptq-4bit-32g",
     "TheBloke_starcoder-GPTQ_gptq-4bit-32g"),
])
def test_parse_repo_accepts_the_three_forms(name, repo_id, branch, folder):
    ref = hub.parse_repo(name)
    assert (ref.repo_id, ref.branch, ref.folder_name) == (repo_id, branch, folder)


@pytest.mark.parametrize("name", [
    "../x", "x/..", "a/b/c", "/etc/passwd", "user", "", "user/mo del", "..\\evil/x", "C:\\models/x",
    "user/model:../../x", "user/model:a/b", "user/model:", "~/model", "https://evil.example/user/model",
    "https://huggingface.co/user/model/resolve/main/x", "https://huggingface.co/../x/tree/main",
])
def test_names_that_could_escape_the_models_folder_are_rejected(server, tmp_path, name):
    with pytest.raises(hub.InvalidRepoNameError, match="user/model|Hugging Face URL"):
        hub.download(name, tmp_path / "models", endpoint=server.url)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["models"])


def test_destination_is_checked_even_for_a_hand_made_ref(tmp_path):
    assert hub.destination(hub.RepoRef(REPO), tmp_path).parent == tmp_path.resolve()
    with pytest.raises(hub.InvalidRepoNameError):
        hub.destination(hub.RepoRef(REPO, "../../../outside"), tmp_path)


def test_list_shows_selected_files_with_sizes_before_downloading(server, tmp_path):
    listing = hub.list_files(REPO, endpoint=server.url)
    assert {f.path for f in listing.files} == EXPECTED_MAIN
    assert {f.path for f in listing.skipped} == {".gitattributes", "pytorch_model.bin", "modeling_custom.py"}
    assert listing.total_size == sum(len(MAIN[n]) for n in EXPECTED_MAIN)
    weights = next(f for f in listing.files if f.path == WEIGHTS)
    assert weights.size == len(MAIN[WEIGHTS]) and len(weights.sha256) == 64
    assert not any(m == "GET" and "/resolve/" in p for m, p, _ in server.requests)
    with_code = hub.list_files(REPO, endpoint=server.url, allow_remote_code=True)
    assert "modeling_custom.py" in {f.path for f in with_code.files}


def test_select_files_prefers_safetensors_and_needs_consent_for_pickles():
    names = ["a.safetensors", "b.bin", "config.json", "x.py", "tokenizer.model", "w.h5"]
    assert hub.select_files(names) == ["a.safetensors", "config.json", "tokenizer.model"]
    assert hub.select_files(["b.bin", "c.pt", "config.json"]) == ["config.json"]
    assert hub.select_files(["b.bin", "c.pt"], allow_pickle=True) == ["b.bin", "c.pt"]


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
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**6, 10**6, 1000))
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


def _cli(server, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    return subprocess.run([sys.executable, "download_model.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_list_download_and_failure(server, tmp_path):
    listed = _cli(server, tmp_path, REPO, "--list")
    assert listed.returncode == 0 and WEIGHTS in listed.stdout and "total" in listed.stdout
    assert "pytorch_model.bin" in listed.stdout.split("skipped:")[1]
    done = _cli(server, tmp_path, f"https://huggingface.co/{REPO}/tree/v2", "--models-dir", str(tmp_path), "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr and (tmp_path / "TheBloke_starcoder-GPTQ_v2" / "config.json").exists()
    failed = _cli(server, tmp_path, GATED, "--models-dir", str(tmp_path))
    assert failed.returncode == 1 and "licence" in failed.stderr and "Traceback" not in failed.stderr
    escaped = _cli(server, tmp_path, "../../etc", "--models-dir", str(tmp_path))
    assert escaped.returncode == 1 and "Invalid model name" in escaped.stderr


def test_downloaded_demo_model_loads(demo_dir, tmp_path):
    import torch

    from backend.loader import from_quantized, load_tokenizer

    with HubServer() as demo_hub:
        demo_hub.add_repo(REPO, read_folder(demo_dir))
        result = hub.download(REPO, tmp_path, endpoint=demo_hub.url)
    model = from_quantized(result.path, device="cpu")
    ids = load_tokenizer(result.path)("def add(a, b):", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()
