"""Remote-engine fixtures: one real vLLM server (its own venv, the demo model's dense copy) per session."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from backend.engine import Engine
from backend.remote import RemoteEngine
from scripts.dense_copy import TOKENIZER_FILES, write_dense_copy
from tests.remote.vllm_server import SERVED_NAME, VLLM_PYTHON, VLLMServer, ensure_venv, start_server

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config, items) -> None:
    """A fresh clone installs vLLM's venv (minutes) while the tests before these run; the server fixture
    then waits for it (the set-up script takes a lock)."""
    if any(item.get_closest_marker("vllm") for item in items) and not (VLLM_PYTHON.parent.parent / ".installed").is_file():
        (ROOT / ".venv-vllm").mkdir(exist_ok=True)
        log = open(ROOT / ".venv-vllm" / "setup.log", "w")
        subprocess.Popen([str(ROOT / "scripts" / "setup_vllm.sh")], stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory) -> Iterator[VLLMServer]:
    """Started here; or, for quick reruns, one already serving the dense demo copy as starcoder-demo at
    $STARCODER_TEST_VLLM_URL (python -m tests.remote.vllm_server starts one)."""
    if os.environ.get("STARCODER_TEST_VLLM_URL"):
        yield VLLMServer(os.environ["STARCODER_TEST_VLLM_URL"].rstrip("/"), None, None)
        return
    ensure_venv()
    dense_demo = write_dense_copy(ROOT / "models" / "starcoder-demo",
                                  tmp_path_factory.mktemp("dense") / "starcoder-demo-dense")
    server = start_server(dense_demo, tmp_path_factory.mktemp("vllm-log") / "vllm.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def remote_models_dir(demo_dir, tiny_models_dir, tmp_path_factory) -> Path:
    """models/ as remote mode needs it: the demo model's config and tokenizer only (no weights), and 'tiny',
    whose tokenizer is a different one."""
    root = tmp_path_factory.mktemp("remote-models")
    folder = root / "starcoder-demo"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "quantize_config.json", *TOKENIZER_FILES):
        if (demo_dir / name).is_file():
            shutil.copyfile(demo_dir / name, folder / name)
    shutil.copytree(tiny_models_dir / "tiny", root / "tiny")
    return root


@pytest.fixture(scope="session")
def remote(vllm_server, remote_models_dir) -> RemoteEngine:
    engine = RemoteEngine(remote_models_dir, [vllm_server.url])
    engine.load(SERVED_NAME)
    return engine


@pytest.fixture(scope="session")
def local(demo_dir) -> Engine:
    """The local engine on the shipped GPTQ folder, with the torch reference in fp32: the weights the
    dense copy holds, so greedy decoding must agree token for token."""
    engine = Engine(demo_dir.parent)
    engine.load(demo_dir.name, kernel="torch", device="cpu", dtype="float32")
    return engine
