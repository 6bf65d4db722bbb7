"""A real vLLM server for the remote-engine tests: its venv, a dense copy of the demo model, start and stop."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
SERVED_NAME = "starcoder-demo"


def ensure_venv() -> Path:
    """scripts/setup_vllm.sh: a no-op when the venv is complete, else installs (or waits for an install)."""
    subprocess.run([str(ROOT / "scripts" / "setup_vllm.sh")], check=True)
    return VLLM_PYTHON


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class VLLMServer:
    url: str
    process: subprocess.Popen | None        # None: started elsewhere, not ours to stop
    log: Path | None

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_server(model_dir: Path, log: Path, served_name: str = SERVED_NAME, max_model_len: int | None = None,
                 extra: tuple[str, ...] = (), timeout: float = 420.0) -> VLLMServer:
    """Start vLLM's OpenAI server on 127.0.0.1 and wait until /health answers (CPU, fp32, eager). The context
    is the model's own (n_positions) unless `max_model_len` says otherwise, so trimming compares with ours."""
    if max_model_len is None:
        max_model_len = json.loads((Path(model_dir) / "config.json").read_text())["n_positions"]
    port = free_port()
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
               VLLM_CPU_OMP_THREADS_BIND="nobind")
    env.pop("PYTHONPATH", None)                     # the server must not see our packages (or our transformers)
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", str(max_model_len), "--enforce-eager", "--seed", "0",
           # vllm-cpu 0.32 dies when a seeded request's prefill is split over steps (its CPU generator has
           # no offset to rewind): whole prefills only, with room for many at once
           "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(8192, max_model_len)), *extra]
    fh = open(log, "w")
    process = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(log.parent))
    server = VLLMServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited with {process.returncode} while starting:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        time.sleep(1.0)
    server.stop()
    raise RuntimeError(f"vLLM did not answer /health within {timeout:.0f} s:\n{server.log_tail()}")


def running_requests(url: str) -> float:
    """vLLM's gauge of requests in generation now."""
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running"))


def main() -> None:
    """Serve the demo model's dense copy until interrupted; prints the URL (for STARCODER_TEST_VLLM_URL)."""
    import tempfile
    from scripts.dense_copy import write_dense_copy
    ensure_venv()
    with tempfile.TemporaryDirectory() as tmp:
        dense = write_dense_copy(ROOT / "models" / "starcoder-demo", Path(tmp) / "starcoder-demo-dense")
        server = start_server(dense, Path(tmp) / "vllm.log")
        print(server.url, flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()


if __name__ == "__main__":
    main()
