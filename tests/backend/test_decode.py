"""The static-cache decoder gives the eager path's greedy tokens, compiled or not, and keeps its promises.

Inductor compiles only the demo model here (minutes on two cores); the library fixtures trace the same
graphs with the aot_eager backend (dynamo capture + functionalization, no code generation), which is
where a graph break or a wrong in-place cache update would show.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
import torch

from backend import decode
from backend.generate import GenerationParams, _eager_tokens, fim_ids, stream
from backend.loader import from_quantized, load_tokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FOLDERS = sorted(p.parent for lib in ("autogptq", "gptqmodel")
                 for p in (FIXTURES / lib).glob("*/expected_logits.safetensors"))
GREEDY = GenerationParams(max_new_tokens=24, temperature=0.0)


@pytest.fixture(autouse=True, scope="module")
def _no_compile_trace_in_captured_logs():
    # pytest's log capture would otherwise receive torch's structured compile trace, whose payloads
    # (whole graphs as text) are built for every compiled function
    trace = logging.getLogger("torch.__trace")
    saved = trace.propagate
    trace.propagate = False
    yield
    trace.propagate = saved


def eager_greedy(model, prompt: list[int], params: GenerationParams = GREEDY) -> list[int]:
    steps = _eager_tokens(model, prompt, params, seed=0)
    with torch.inference_mode():
        return [next(steps) for _ in range(params.max_new_tokens)]


NEAR_TIE = 0.125   # logits: a bf16 rounding step at their size; fused kernels may break such a tie the other way


def assert_same_or_near_tie(model, prompt: list[int], compiled: list[int], eager: list[int]) -> None:
    """The compiled tokens are eager's; or, where they first differ, eager's own logits for the two tokens
    chosen are within NEAR_TIE (a tie that rounding in inductor's fused kernels may break the other way;
    from there on the two texts legitimately differ)."""
    if compiled == eager:
        return
    i = next(i for i, (a, b) in enumerate(zip(compiled, eager)) if a != b)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + eager[:i]])).logits[0, -1].float()
    gap = abs(logits[eager[i]] - logits[compiled[i]]).item()
    assert gap < NEAR_TIE, f"token {i}: compiled chose {compiled[i]}, eager {eager[i]}: logits {gap:.3f} apart"


@pytest.fixture(scope="module")
def demo(demo_dir):
    """The demo model with an inductor-compiled decoder, and its tokenizer."""
    model = from_quantized(demo_dir, compile="off")
    decoder = decode.Decoder(model)
    report = decoder.compile()
    assert report.path == "compiled (inductor)", report
    yield model, decoder, load_tokenizer(demo_dir)
    decoder.close()


PROMPTS = ["import os\n\ndef walk(path):\n", "class Stack:\n    def __init__(self):\n", "x"]


@pytest.mark.parametrize("text", PROMPTS)
def test_compiled_greedy_tokens_equal_the_eager_path_on_the_demo_model(demo, text):
    model, decoder, tokenizer = demo
    prompt = tokenizer.encode(text)
    assert_same_or_near_tie(model, prompt, list(decoder.tokens(prompt, GREEDY, seed=0)), eager_greedy(model, prompt))


def test_compiled_fim_prompt_and_a_longer_window_match_too(demo):
    # 300 new tokens take the window from 256 to 512 positions: the same graph, a new size
    model, decoder, tokenizer = demo
    params = GenerationParams(max_new_tokens=300, temperature=0.0)
    prompt, _ = fim_ids(tokenizer, "def add(a, b):\n    ", "\n    return c\n", params, 512)
    assert_same_or_near_tie(model, prompt, list(decoder.tokens(prompt, params, seed=0)),
                            eager_greedy(model, prompt, params))


def test_compiled_sampling_repeats_with_a_seed_and_varies_without(demo):
    model, decoder, tokenizer = demo
    prompt = tokenizer.encode(PROMPTS[0])
    params = GenerationParams(max_new_tokens=20, temperature=0.9, top_p=0.9, top_k=50, repetition_penalty=1.1)
    first = list(decoder.tokens(prompt, params, seed=7))
    assert list(decoder.tokens(prompt, params, seed=7)) == first
    others = {tuple(decoder.tokens(prompt, params, seed=s)) for s in range(8, 12)}
    assert len(others | {tuple(first)}) > 1


def test_rare_flags_run_eagerly_on_the_device_and_ban_repeated_ngrams(demo):
    model, decoder, tokenizer = demo
    prompt = tokenizer.encode(PROMPTS[0])
    params = GenerationParams(max_new_tokens=40, temperature=0.0, no_repeat_ngram_size=2)
    tokens = prompt + list(decoder.tokens(prompt, params, seed=0))
    bigrams = list(zip(tokens, tokens[1:]))
    assert len(bigrams) == len(set(bigrams))
    assert_same_or_near_tie(model, prompt, tokens[len(prompt):], eager_greedy(model, prompt, params))


def test_stream_through_a_compiled_decoder_stops_at_cancel_within_one_token(demo):
    model, decoder, tokenizer = demo
    model.decoder = decoder
    try:
        cancel = threading.Event()
        params = GenerationParams(max_new_tokens=200, temperature=0.0)
        seen = []
        for chunk in stream(model, tokenizer, tokenizer.encode(PROMPTS[0]), params, cancel):
            seen.append(chunk)
            if chunk.finish_reason is None and chunk.completion_tokens >= 3:
                cancel.set()
                tokens_at_cancel = chunk.completion_tokens
        assert seen[-1].finish_reason == "cancelled"
        assert seen[-1].completion_tokens == tokens_at_cancel
        prompt = tokenizer.encode(PROMPTS[1])
        full = "".join(c.text for c in stream(model, tokenizer, prompt, GREEDY))
        model.decoder = None
        eager = "".join(c.text for c in stream(model, tokenizer, prompt, GREEDY))
        if full != eager:   # only where the two paths split at a near tie (checked on their tokens)
            assert_same_or_near_tie(model, prompt, list(decoder.tokens(prompt, GREEDY, seed=0)),
                                    eager_greedy(model, prompt))
            assert full != "" and eager != ""
    finally:
        model.decoder = None


def fixture_run(folder: Path):
    model = from_quantized(folder, compile="off")
    prompt = json.loads((folder / "input_ids.json").read_text())["input_ids"][0][:8]
    params = GenerationParams(max_new_tokens=16, temperature=0.0)
    return model, prompt, params, eager_greedy(model, prompt, params)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_static_cache_greedy_tokens_equal_the_eager_path_on_every_library_fixture(folder):
    model, prompt, params, expected = fixture_run(folder)
    assert list(decode.Decoder(model).tokens(prompt, params, seed=0)) == expected


# tracing costs ~45 s a model here: the two that cover the reference kernel (3-bit words spanning
# boundaries, act-order gathers) and the packed-int4 op (act-order perm, v2 zero points)
TRACED = [FIXTURES / "autogptq" / "b3_g32_act_asym", FIXTURES / "gptqmodel" / "b4_g32_act_asym_gptq_v2"]


@pytest.mark.parametrize("folder", TRACED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_traced_greedy_tokens_equal_the_eager_path_on_library_fixtures(folder):
    model, prompt, params, expected = fixture_run(folder)
    decoder = decode.Decoder(model)
    report = decoder.compile(backend="aot_eager")
    assert report.path == "compiled (aot_eager)", report
    try:
        assert list(decoder.tokens(prompt, params, seed=0)) == expected
    finally:
        decoder.close()


def test_a_compile_failure_falls_back_to_eager_with_the_reason(demo_dir, monkeypatch):
    model = from_quantized(demo_dir, compile="off")
    decoder = decode.Decoder(model)

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(torch, "compile", broken)
    report = decoder.compile()
    assert report.path == "eager" and "no compiler here" in report.reason
    prompt = [5, 6, 7]
    assert list(decoder.tokens(prompt, GREEDY, seed=0)) == eager_greedy(model, prompt)


def test_compile_setting_is_checked_and_auto_stays_eager_on_cpu(demo_dir):
    with pytest.raises(decode.CompileSettingError, match="auto, on, off"):
        from_quantized(demo_dir, compile="yes")
    model = from_quantized(demo_dir)
    assert model.decoder is None
    assert model.decode_report.path == "eager" and "auto" in model.decode_report.reason


def test_window_is_a_power_of_two_within_the_cache():
    assert decode.window_for(10, 8192) == decode.MIN_WINDOW
    assert decode.window_for(257, 8192) == 512
    assert decode.window_for(512, 8192) == 512
    assert decode.window_for(5000, 8192) == 8192
    assert decode.window_for(100, 64) == 64


def test_compiled_kernels_are_kept_in_the_models_folder_unless_the_user_chose_a_cache(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir
    import torch._dynamo  # noqa: F401  (its import writes torch's default folder into the variable)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    decode.use_cache_dir(tmp_path / "models" / ".compile-cache")
    assert cache_dir() == str((tmp_path / "models" / ".compile-cache").resolve())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "chosen"))
    decode.use_cache_dir(tmp_path / "models" / ".compile-cache")
    assert cache_dir() == str(tmp_path / "chosen")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_greedy_tokens_equal_the_eager_path_on_the_demo_model(demo_dir):
    # the CUDA twin of test_compiled_greedy_tokens_equal_the_eager_path_on_the_demo_model
    model = from_quantized(demo_dir, device="cuda:0", compile="on")
    assert model.decode_report.path == "compiled (CUDA graphs)", model.decode_report
    tokenizer = load_tokenizer(demo_dir)
    decoder, model.decoder = model.decoder, None
    try:
        for text in PROMPTS:
            prompt = tokenizer.encode(text)
            assert list(decoder.tokens(prompt, GREEDY, seed=0)) == eager_greedy(model, prompt)
        params = GenerationParams(max_new_tokens=20, temperature=0.9, top_p=0.9)
        prompt = tokenizer.encode(PROMPTS[0])
        assert list(decoder.tokens(prompt, params, seed=3)) == list(decoder.tokens(prompt, params, seed=3))
    finally:
        decoder.close()
