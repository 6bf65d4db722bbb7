"""vLLM serving the shipped GPTQ folder itself (not its dense copy): its CPU GPTQ kernel needs AVX-512."""
from __future__ import annotations

import pytest
import torch

from backend.generate import GenerationParams
from backend.loader import load_dequantized
from backend.remote import RemoteEngine
from scripts.demo_eval import PROMPTS
from tests.remote.vllm_server import SERVED_NAME, ensure_venv, start_server

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(not torch.cpu._is_avx512_supported(),
                                 reason="vLLM's CPU GPTQ kernel needs AVX-512 (its first request kills the engine "
                                        "without it); the dense copy's tests cover this CPU")]

# bf16 activations against our fp32 reference: a token vLLM picks may lose to another by this much in fp32
MARGIN = 0.5


@pytest.fixture(scope="module")
def gptq_remote(demo_dir, remote_models_dir, tmp_path_factory):
    ensure_venv()
    server = start_server(demo_dir, tmp_path_factory.mktemp("vllm-gptq-log") / "vllm.log",
                          extra=("--dtype", "bfloat16"))      # vLLM's GPTQ runs in 16 bits
    try:
        engine = RemoteEngine(remote_models_dir, [server.url])
        engine.load(SERVED_NAME)
        yield engine
    finally:
        server.stop()


@pytest.fixture(scope="module")
def reference(demo_dir):
    return load_dequantized(demo_dir).eval()


@pytest.mark.parametrize("name", ["function", "imports", "fim"])
def test_vllm_gptq_greedy_follows_the_same_weights(gptq_remote, reference, name):
    # every token vLLM chooses greedily is our fp32 reference's choice, or within MARGIN of it, at that position
    tok = gptq_remote.loaded.tokenizer
    params = GenerationParams(max_new_tokens=16, temperature=0.0)
    prefix, suffix = PROMPTS[name] if name == "fim" else (PROMPTS[name], None)
    chunks = list(gptq_remote.infill(prefix, suffix, params, "psm") if suffix is not None
                  else gptq_remote.complete(prefix, params))
    prompt_ids = gptq_remote.prompt_ids(prefix, params, suffix, "psm").ids      # what was sent upstream
    # the text's own tokens (the same inputs give the same text every run, so this is deterministic)
    generated = tok("".join(c.text for c in chunks), add_special_tokens=False).input_ids
    assert generated and chunks[-1].finish_reason == "length"
    ids = torch.tensor([prompt_ids + generated])
    with torch.no_grad():
        logits = reference(ids).logits[0, len(prompt_ids) - 1:-1].float()
    chosen = logits.gather(1, torch.tensor(generated).unsqueeze(1)).squeeze(1)
    gap = logits.max(dim=1).values - chosen
    assert float(gap.max()) <= MARGIN, (gap.tolist(), tok.decode(generated))
