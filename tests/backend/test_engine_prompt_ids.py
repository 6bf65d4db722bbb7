"""Engine.prompt_ids: the whole prompt's ids and the context, as generation counts them (tiny model, 64 positions)."""
import pytest

from backend.engine import Engine, NoModelLoaded
from backend.generate import GenerationParams


@pytest.fixture
def engine(tiny_models_dir):
    engine = Engine(tiny_models_dir)
    engine.load("tiny", dtype="float32")
    return engine


def test_a_prompt_that_fits_has_the_ids_generation_reads(engine):
    params = GenerationParams(max_new_tokens=2, temperature=0)
    prompt = engine.prompt_ids("def f(x):", params)
    assert prompt.ids == engine.loaded.tokenizer.encode("def f(x):", add_special_tokens=False)
    assert prompt.context == 64 and prompt.room == 64 - len(prompt.ids)
    last = list(engine.complete("def f(x):", params))[-1]
    assert last.prompt_tokens == len(prompt.ids) and last.truncated_tokens == 0


def test_the_context_is_the_smaller_of_the_setting_and_the_model(engine):
    assert engine.prompt_ids("x", GenerationParams(context_length=16)).context == 16
    assert engine.prompt_ids("x", GenerationParams(context_length=1000)).context == 64


def test_a_fim_prompt_counts_its_special_tokens_and_is_never_trimmed(engine):
    tok = engine.loaded.tokenizer
    params = GenerationParams(max_new_tokens=4, temperature=0)
    prefix, suffix = "def f(x):\n    return ", "\n\nprint(f(2))\n"
    psm = engine.prompt_ids(prefix, params, suffix)
    n_pre, n_suf = len(tok.encode(prefix, add_special_tokens=False)), len(tok.encode(suffix, add_special_tokens=False))
    assert len(psm.ids) == n_pre + n_suf + 3 and psm.ids[0] == tok.convert_tokens_to_ids("<fim_prefix>")
    last = list(engine.infill(prefix, suffix, params))[-1]
    assert last.prompt_tokens == len(psm.ids)
    spm = engine.prompt_ids(prefix, params, suffix, "spm")
    assert sorted(spm.ids) == sorted(psm.ids) and spm.ids != psm.ids
    long = engine.prompt_ids("x = 1\n" * 200, params, suffix)
    assert long.room < 0 and len(long.ids) > 64


def test_prompt_ids_needs_a_model(tiny_models_dir):
    with pytest.raises(NoModelLoaded):
        Engine(tiny_models_dir).prompt_ids("x", GenerationParams())


def test_a_long_prompt_is_tokenized_once_for_the_fit_check_and_generation(engine, monkeypatch):
    # the API sizes a request with prompt_ids, then generation reads the same texts: one tokenizer pass each
    from backend.generate import LONG_TEXT_CHARS
    tok = engine.loaded.tokenizer
    seen = []
    real = type(tok).encode
    monkeypatch.setattr(type(tok), "encode", lambda self, text, **kw: seen.append(len(text)) or real(self, text, **kw))
    prefix, suffix = "x = 1\n" * LONG_TEXT_CHARS, "y = 2\n" * LONG_TEXT_CHARS
    params = GenerationParams(max_new_tokens=2, temperature=0)
    whole = engine.prompt_ids(prefix, params, suffix)
    last = list(engine.infill(prefix, suffix, params))[-1]
    assert sorted(seen) == sorted([len(prefix), len(suffix)])       # not twice each
    assert last.prompt_tokens + last.truncated_tokens == len(whole.ids)
    seen.clear()
    assert engine.prompt_ids("def f(x):", params).ids == real(tok, "def f(x):", add_special_tokens=False)
    list(engine.complete("def f(x):", params))
    assert seen == [len("def f(x):")] * 2                           # short texts are not kept
