"""FIM trimming in one step, and tokenizing outside the engine's lock (a huge prompt must not hold the engine)."""
import threading
import time

import pytest

from backend.engine import Engine, NoModelLoaded
from backend.generate import GenerationError, GenerationParams, fim_ids, fim_split
from tests.backend.test_generate import tokenizer  # noqa: F401  (the module-scoped fixture)


def trim_one_at_a_time(n_pre: int, n_suf: int, budget: int) -> tuple[int, int]:
    """The rule as first written: drop a token from the far end of the longer side until it fits."""
    while n_pre + n_suf > budget:
        if n_pre >= n_suf:
            n_pre -= 1
        else:
            n_suf -= 1
    return n_pre, n_suf


def test_one_step_split_keeps_exactly_what_the_token_at_a_time_rule_kept():
    for n_pre in range(0, 30):
        for n_suf in range(0, 30):
            for budget in range(0, 40):
                assert fim_split(n_pre, n_suf, budget) == trim_one_at_a_time(n_pre, n_suf, budget)


def test_a_prefix_of_60k_tokens_is_trimmed_in_linear_time(tokenizer):  # noqa: F811
    class Counted:
        """Hands back precomputed ids, so the test times the trimming alone."""
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def encode(self, text, add_special_tokens=False):
            return [7] * 60_000 if text == "big" else [8] * 10

    start = time.perf_counter()
    ids, dropped = fim_ids(Counted(tokenizer), "big", "small", GenerationParams(max_new_tokens=8), 64)
    assert time.perf_counter() - start < 1.0         # token at a time: ~2·10^9 element copies, seconds
    assert len(ids) == 64 - 8 and dropped == 60_000 + 10 - (64 - 8 - 3)
    assert ids[1:-12] == [7] * (64 - 8 - 3 - 10)


@pytest.fixture
def engine(tiny_models_dir):
    engine = Engine(tiny_models_dir)
    engine.load("tiny", dtype="float32")
    return engine


class SlowTokenizer:
    """The model's tokenizer, whose encode waits on `release` and records whether the engine lock was held."""

    def __init__(self, inner, engine):
        self.inner, self.engine = inner, engine
        self.entered, self.release, self.lock_held = threading.Event(), threading.Event(), []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def encode(self, text, **kwargs):
        self.lock_held.append(self.engine._lock.locked())
        self.entered.set()
        self.release.wait(10)
        return self.inner.encode(text, **kwargs)


def test_tokenizing_a_fim_prompt_does_not_hold_the_engine(engine):
    slow = SlowTokenizer(engine.loaded.tokenizer, engine)
    engine.loaded.tokenizer = slow
    params = GenerationParams(max_new_tokens=2, temperature=0)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(out=list(engine.infill("x = 1\n" * 50, "y", params))))
    worker.start()
    assert slow.entered.wait(10)
    # while that request tokenizes, the lock is free: an unload goes through at once
    acquired = engine._lock.acquire(timeout=2)
    assert acquired, "tokenizing held the engine lock"
    engine._lock.release()
    slow.release.set()
    worker.join(10)
    assert not any(slow.lock_held) and result["out"][-1].finish_reason == "length"


def test_a_request_cancelled_while_tokenizing_never_takes_the_engine(engine):
    slow = SlowTokenizer(engine.loaded.tokenizer, engine)
    engine.loaded.tokenizer = slow
    cancel = threading.Event()
    out: list = []
    worker = threading.Thread(target=lambda: out.extend(
        engine.infill("a", "b", GenerationParams(max_new_tokens=50, temperature=0), cancel=cancel)))
    worker.start()
    assert slow.entered.wait(10)
    cancel.set()
    slow.release.set()
    worker.join(10)
    assert out == [] or out[-1].finish_reason == "cancelled"


def test_an_unload_while_a_prompt_tokenizes_ends_that_request_without_generating(engine):
    slow = SlowTokenizer(engine.loaded.tokenizer, engine)
    engine.loaded.tokenizer = slow
    out: list = []
    worker = threading.Thread(target=lambda: out.extend(engine.complete("def f():", GenerationParams(max_new_tokens=2))))
    worker.start()
    assert slow.entered.wait(10)
    engine.unload()                    # does not wait for the tokenizer
    assert engine.loaded is None
    slow.release.set()
    worker.join(10)
    assert not worker.is_alive() and out == []
    with pytest.raises(NoModelLoaded):
        list(engine.complete("def f():", GenerationParams(max_new_tokens=2)))


def test_a_lone_surrogate_is_the_clients_error(engine):
    with pytest.raises(GenerationError, match="cannot be tokenized"):
        engine.count_tokens("bad \ud800 text")
