"""The generation loop with a scripted model: stop strings, EOS, length, cancel, UTF-8, truncation, FIM."""
import threading
import types

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from backend.generate import (GenerationError, GenerationParams, fim_ids, fit_context, generate_text, stream)
from tests.helpers.checkpoints import write_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(folder)
    return AutoTokenizer.from_pretrained(str(folder))


class ScriptedModel(torch.nn.Module):
    """Emits a fixed token sequence, one per forward call, whatever the input."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0
        self.embed = torch.nn.Embedding(vocab, 4)
        self.generation_config = GenerationConfig(eos_token_id=0)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids=None, use_cache=True, cache=None, logits_to_keep=0):
        # logits_to_keep as transformers' models take it: 0 keeps every position, n the last n
        logits = torch.full((1, logits_to_keep or input_ids.shape[1], self.vocab), -10.0)
        logits[0, -1, self.script[min(self.calls, len(self.script) - 1)]] = 10.0
        self.calls += 1
        return types.SimpleNamespace(logits=logits, cache=object())


def run(tokenizer, script, **params):
    model = ScriptedModel(script, len(tokenizer))
    chunks = list(stream(model, tokenizer, [5, 6], GenerationParams(**{"temperature": 0, **params})))
    return chunks, model


def test_stop_string_spanning_tokens_is_not_emitted(tokenizer):
    script = tokenizer.encode("ab cd STOP ef")
    chunks, _ = run(tokenizer, script, stop=("STOP",), max_new_tokens=50)
    assert "".join(c.text for c in chunks) == "ab cd "
    assert chunks[-1].finish_reason == "stop"
    assert all("S" not in c.text for c in chunks)


def test_partial_stop_string_is_released_when_generation_ends(tokenizer):
    script = tokenizer.encode("ab ST")
    chunks, _ = run(tokenizer, script, stop=("STOP",), max_new_tokens=len(script))
    assert "".join(c.text for c in chunks) == "ab ST" and chunks[-1].finish_reason == "length"


def test_eos_ends_generation(tokenizer):
    script = tokenizer.encode("xy") + [tokenizer.eos_token_id] + tokenizer.encode("zz")
    chunks, model = run(tokenizer, script, max_new_tokens=50)
    assert "".join(c.text for c in chunks) == "xy"
    assert chunks[-1].finish_reason == "eos" and chunks[-1].completion_tokens == 2


def test_length_limit_and_counts(tokenizer):
    script = tokenizer.encode("a b c d e f g h")
    chunks, _ = run(tokenizer, script, max_new_tokens=3)
    last = chunks[-1]
    assert last.finish_reason == "length" and last.completion_tokens == 3 and last.prompt_tokens == 2
    assert last.tokens_per_s > 0


def test_cancel_stops_within_one_token(tokenizer):
    model = ScriptedModel(tokenizer.encode("a b c d e f g h i j"), len(tokenizer))
    cancel = threading.Event()
    chunks = []
    for chunk in stream(model, tokenizer, [5], GenerationParams(temperature=0, max_new_tokens=50), cancel):
        chunks.append(chunk)
        cancel.set()
    assert chunks[-1].finish_reason == "cancelled"
    assert chunks[-1].completion_tokens == 1 and model.calls == 1


def test_multibyte_character_split_across_tokens(tokenizer):
    script = tokenizer.encode("é→x")
    assert len(script) > 3          # the tiny vocabulary has no merges for these bytes
    chunks, _ = run(tokenizer, script, max_new_tokens=len(script))
    assert all("\ufffd" not in c.text for c in chunks)
    assert "".join(c.text for c in chunks) == "é→x"


def test_left_truncation_is_reported():
    params = GenerationParams(max_new_tokens=10, context_length=30)
    ids, dropped = fit_context(list(range(50)), params, n_positions=64)
    assert ids == list(range(30, 50)) and dropped == 30
    assert fit_context([1, 2], params, 64) == ([1, 2], 0)
    with pytest.raises(GenerationError, match="leaves no room.*lower max_new_tokens"):
        fit_context([1], GenerationParams(max_new_tokens=64), 64)


def test_fim_prompts_psm_and_spm(tokenizer):
    params = GenerationParams(max_new_tokens=8)
    p, s, m = (tokenizer.convert_tokens_to_ids(t) for t in ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"))
    pre, suf = tokenizer.encode("def f(x):\n"), tokenizer.encode("\n    return y\n")
    ids, dropped = fim_ids(tokenizer, "def f(x):\n", "\n    return y\n", params, 512)
    assert ids == [p] + pre + [s] + suf + [m] and dropped == 0
    ids, _ = fim_ids(tokenizer, "def f(x):\n", "\n    return y\n", params, 512, order="spm")
    assert ids == [p, s] + suf + [m] + pre
    with pytest.raises(GenerationError, match="'xyz' is unknown"):
        fim_ids(tokenizer, "a", "b", params, 512, order="xyz")


def test_fim_truncation_keeps_the_text_next_to_the_gap(tokenizer):
    prefix, suffix = "a = 1\n" * 40, "b = 2\n" * 10
    ids, dropped = fim_ids(tokenizer, prefix, suffix, GenerationParams(max_new_tokens=8), n_positions=64)
    assert len(ids) <= 64 - 8 and dropped > 0
    text = tokenizer.decode(ids)
    assert text.endswith("<fim_middle>") and "<fim_suffix>b = 2\n" in text
    assert text.split("<fim_suffix>")[0].endswith("a = 1\n")


def test_fim_needs_fim_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    raw.train_from_iterator(["hello"], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"]))
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    with pytest.raises(GenerationError, match="no <fim_prefix> token.*completion mode"):
        fim_ids(plain, "a", "b", GenerationParams(), 64)


@pytest.mark.parametrize("values,expect", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"top_k": "many"}, "top_k must be a whole number"), ({"min_p": 1.5}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
])
def test_bad_parameters_are_named(values, expect):
    with pytest.raises(GenerationError, match=expect):
        GenerationParams.from_dict(values)


def test_from_dict_ignores_unknown_keys_and_takes_a_single_stop_string():
    params = GenerationParams.from_dict({"stop": "\n\n", "mode": "fim", "top_k": "5"})
    assert params.stop == ("\n\n",) and params.top_k == 5


def test_sampling_is_deterministic_with_a_seed(tiny_models_dir):
    from backend.loader import from_quantized, load_tokenizer
    folder = tiny_models_dir / "tiny"
    model, tok = from_quantized(folder, torch_dtype=torch.float32), load_tokenizer(folder)
    ids = tok.encode("def f(x):")
    sampled = dict(temperature=1.0, top_p=0.9, top_k=50, min_p=0.01, typical_p=0.95, repetition_penalty=1.1,
                   no_repeat_ngram_size=3, max_new_tokens=12)
    first, last = generate_text(model, tok, ids, GenerationParams(seed=7, **sampled))
    again, _ = generate_text(model, tok, ids, GenerationParams(seed=7, **sampled))
    others = {generate_text(model, tok, ids, GenerationParams(seed=s, **sampled))[0] for s in (1, 2, 3)}
    assert first == again and last.completion_tokens > 0
    assert len(others | {first}) > 1
    greedy, _ = generate_text(model, tok, ids, GenerationParams(temperature=0, max_new_tokens=12))
    top1, _ = generate_text(model, tok, ids, GenerationParams(temperature=1.0, top_k=1, max_new_tokens=12, seed=3))
    assert greedy == top1


def test_eager_path_computes_logits_for_the_last_position_only(tiny_models_dir):
    # a prompt's other positions through the lm_head cost prompt x vocab x hidden work and prompt x vocab
    # floats (StarCoder, 8k prompt: 1.6 GB) that nobody reads; prefill was 3x slower on the demo model
    from backend.loader import from_quantized, load_tokenizer
    folder = tiny_models_dir / "tiny"
    model, tok = from_quantized(folder, torch_dtype=torch.float32, compile="off"), load_tokenizer(folder)
    assert getattr(model, "decoder", None) is None
    positions = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: positions.append(out.shape[1]))
    try:
        ids = tok.encode("def add(a, b):\n    return a + b\n")[:40]      # the tiny model has 64 positions
        _, last = generate_text(model, tok, ids, GenerationParams(temperature=0, max_new_tokens=4))
    finally:
        hook.remove()
    assert len(ids) > 8 and last.completion_tokens >= 1
    assert positions and set(positions) == {1}
