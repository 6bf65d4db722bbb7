"""Engine.chat_prompt on the demo model's tokenizer: the preamble gives up few-shot turns, then the dialogue its
oldest turns, so chat fits a 512-token context (whatever context the shipped model has, set by context_length); a context that holds it all keeps
the whole preamble (tests/api/test_openai_routes.py, 2048 positions)."""
import dataclasses

import pytest

from backend import prompts
from backend.engine import Engine
from backend.generate import GenerationParams


@pytest.fixture(scope="module")
def engine(demo_dir):
    engine = Engine(demo_dir.parent)
    engine.load(demo_dir.name, device="cpu")
    return engine


def at(context: int, **overrides) -> GenerationParams:
    return GenerationParams(context_length=context, temperature=0, **overrides)


def test_the_whole_preamble_does_not_fit_512_tokens(engine):
    assert engine.count_tokens(prompts.DEFAULT_PREAMBLE) > 512 - 128


def test_hi_fits_512_by_giving_up_few_shot_turns(engine):
    messages = [{"role": "user", "content": "hi"}]
    text, prompt, params = engine.chat_prompt(messages, at(512, max_new_tokens=4096))
    assert prompt.context == 512 and prompt.room >= 128
    assert text.startswith(prompts.preamble_forms()[-1]) and text.endswith("Human: hi\nAssistant:")
    assert text in list(prompts.dialogue_forms(messages))
    assert params.max_new_tokens == prompt.room                     # capped: the answer ends with "length"
    assert set(prompts.DIALOGUE_STOPS) <= set(params.stop)
    last = list(engine.complete(text, dataclasses.replace(params, max_new_tokens=3)))[-1]
    assert last.truncated_tokens == 0


def test_the_oldest_turns_go_next_the_system_message_and_last_turn_stay(engine):
    chatter = "please explain this code to me in detail " * 8
    messages = [{"role": "system", "content": "Answer in Python."}]
    for i in range(6):
        messages += [{"role": "user", "content": f"question {i}: {chatter}"},
                     {"role": "assistant", "content": f"answer {i}: {chatter}"}]
    messages.append({"role": "user", "content": "and the last one?"})
    text, prompt, params = engine.chat_prompt(messages, at(512, max_new_tokens=100))
    assert prompt.room >= 100 and params.max_new_tokens == 100
    assert "Answer in Python." in text and text.endswith("Human: and the last one?\nAssistant:")
    assert "question 0" not in text and "answer 5" in text
    assert text.startswith(prompts.preamble_forms()[-1])


def test_a_last_turn_longer_than_the_context_is_left_to_the_caller(engine):
    messages = [{"role": "user", "content": "x = 1\n" * 600}]
    _, prompt, params = engine.chat_prompt(messages, at(512, max_new_tokens=50))
    assert prompt.room < 1 and params.max_new_tokens == 50


def test_preamble_forms():
    forms = prompts.preamble_forms()
    assert forms[0] == prompts.DEFAULT_PREAMBLE and len(forms) == prompts.DEFAULT_PREAMBLE.count("-----\n")
    assert all(len(a) > len(b) for a, b in zip(forms, forms[1:]))
    assert prompts.preamble_forms("Be helpful.") == ["Be helpful."]
