"""download_model.py against the local Hub, and a downloaded demo model that loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from backend import hub
from tests.backend.hub.fake_repos import GATED, REPO, WEIGHTS
from tests.helpers.hub_server import HubServer, read_folder

ROOT = Path(__file__).resolve().parents[3]


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
    configs = _cli(server, tmp_path, REPO, "--no-weights", "--list")
    assert configs.returncode == 0 and WEIGHTS in configs.stdout.split("skipped:")[1]
    assert "config.json" in configs.stdout.split("skipped:")[0]
    configs = _cli(server, tmp_path, REPO, "--no-weights", "--models-dir", str(tmp_path))
    folder = tmp_path / "TheBloke_starcoder-GPTQ"
    assert configs.returncode == 0, configs.stderr
    assert (folder / "config.json").is_file() and not (folder / WEIGHTS).exists()
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
