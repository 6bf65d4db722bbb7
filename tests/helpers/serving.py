"""A throwaway model, a recording Engine, and uvicorn on a free 127.0.0.1 port, for API tests and benchmarks."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import openai
import torch
import uvicorn
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from backend.engine import Engine
from backend.generate import Chunk, GenerationParams
from tests.helpers.checkpoints import tiny_config, write_checkpoint, write_tokenizer

API_KEY = "test-key-123"
N_POSITIONS = 2048        # room for the tech-assistant preamble (~1.5k tokens with the tiny tokenizer)


def write_tiny_model(folder: Path, seed: int = 0) -> None:
    """A random model whose <|endoftext|> logit is pushed far down, so generation always runs to max_tokens:
    lengths and timings in the tests do not depend on when a random model happens to stop."""
    write_tokenizer(folder)
    vocab = len(AutoTokenizer.from_pretrained(str(folder)))
    write_checkpoint(folder, config=tiny_config(vocab_size=vocab, n_positions=N_POSITIONS), seed=seed)
    path = folder / "model.safetensors"
    state = load_file(str(path))
    # ln_f's output ≈ 1 + noise in every dimension; an all -1 embedding row then scores ≈ -n_embd
    state["transformer.ln_f.bias"] = torch.ones_like(state["transformer.ln_f.bias"])
    for key in ("transformer.wte.weight", "lm_head.weight"):
        state[key][0] = -1.0
    save_file(state, str(path), metadata={"format": "pt"})


class RecordingEngine(Engine):
    """An Engine that remembers how each generation ended, to check that a vanished client cancelled it."""

    def __init__(self, models_dir: Path) -> None:
        super().__init__(models_dir)
        self.runs: list[dict] = []

    def _record(self, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        record = {"last": None, "done": threading.Event()}
        self.runs.append(record)
        try:
            for chunk in chunks:
                record["last"] = chunk
                yield chunk
        finally:
            record["done"].set()

    def complete(self, prompt, params, cancel=None, affinity=None):
        return self._record(super().complete(prompt, params, cancel, affinity))

    def infill(self, prefix, suffix, params, order="psm", cancel=None, affinity=None):
        return self._record(super().infill(prefix, suffix, params, order, cancel, affinity))


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """Run `app` under uvicorn in a background thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def make_client(url: str, key: str = "unused") -> openai.OpenAI:
    # no retries: the tests check the first answer (the client would otherwise retry 5xx)
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def ended_run(engine: RecordingEngine, before: int, timeout: float = 10.0) -> dict:
    """The first generation started after `before` runs, once it has ended; fails if it keeps running."""
    deadline = time.monotonic() + timeout
    while len(engine.runs) <= before and time.monotonic() < deadline:
        time.sleep(0.01)
    record = engine.runs[before]
    assert record["done"].wait(timeout), "the generation kept running after its client left"
    return record


def served_params(engine, **overrides) -> GenerationParams:
    """The parameters the API generates with when a request sets `overrides`: the table's defaults, then the
    loaded model folder's generation_config.json, then the request."""
    from backend.settings import DEFAULTS, GENERATION_KEYS
    folder = {k: v for k, v in engine.loaded.info.defaults.items() if k in GENERATION_KEYS}
    return GenerationParams.from_dict({**{k: DEFAULTS[k] for k in GENERATION_KEYS}, **folder, **overrides})
