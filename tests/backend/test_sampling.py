"""The device samplers, and the eager path's candidate sampler, compute what transformers' logits processors compute."""
from __future__ import annotations

import pytest
import torch

from backend import generate, sampling
from backend.generate import GenerationParams, build_processors

V = 500


def state_for(prompt: list[int], params: GenerationParams, seed: int = 0) -> sampling.SamplerState:
    state = sampling.SamplerState(V, 512, torch.device("cpu"))
    state.start(prompt, params, seed)
    return state


def hf_scores(prompt: list[int], logits: torch.Tensor, params: GenerationParams) -> torch.Tensor:
    return build_processors(params)(torch.tensor([prompt]), logits.clone())


CASES = [
    dict(temperature=0.0),
    dict(temperature=0.0, repetition_penalty=1.3),
    dict(temperature=0.0, no_repeat_ngram_size=2),
    dict(temperature=0.0, no_repeat_ngram_size=3, repetition_penalty=0.7),
    dict(temperature=0.7, top_p=1.0),
    dict(temperature=0.2, top_p=0.95),                          # the app's defaults
    dict(temperature=1.3, top_k=40, top_p=1.0),
    dict(temperature=0.9, top_k=7, top_p=0.5),
    dict(temperature=1.0, top_k=V + 50, top_p=0.8),             # k beyond the vocab
    dict(temperature=1.0, top_p=1.0, min_p=0.05),
    dict(temperature=0.8, top_p=0.9, typical_p=0.6),
    dict(temperature=1.0, top_k=30, top_p=0.9, typical_p=0.95, min_p=0.02, repetition_penalty=1.2,
         no_repeat_ngram_size=2),
    dict(temperature=1.0, top_p=1.0, no_repeat_ngram_size=1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_device_processors_equal_transformers_processors_on_random_logits(case):
    params = GenerationParams(**case)
    flags = sampling.SamplerFlags.of(params)
    gen = torch.Generator().manual_seed(len(str(case)))
    for trial in range(8):
        # a short history with repeats, so n-grams and the penalty have something to act on
        prompt = torch.randint(0, 12, (3 + trial * 4,), generator=gen).tolist()
        logits = torch.randn(1, V, generator=gen) * (1 + trial)
        ours = sampling.process(logits.clone(), state_for(prompt, params), flags)
        theirs = hf_scores(prompt, logits, params)
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs)), f"different tokens removed, trial {trial}"
        finite = torch.isfinite(theirs)
        torch.testing.assert_close(ours[finite], theirs[finite], rtol=1e-6, atol=1e-6)


def test_history_grows_on_the_device_as_tokens_are_chosen():
    params = GenerationParams(temperature=0.0, no_repeat_ngram_size=2)
    state = state_for([5, 6, 7], params)
    logits = torch.full((1, V), -5.0)
    logits[0, 9] = 3.0
    assert sampling.choose(logits, state, sampling.SamplerFlags.of(params)).tolist() == [9]
    assert int(state.length) == 4 and state.history[:4].tolist() == [5, 6, 7, 9]
    assert bool(state.seen[0, 9]) and not bool(state.seen[0, 8])
    # the sequence now ends in 9; after 5 6 7 9 5 6 the bigram (6, 7) is banned
    for token in (5, 6):
        state.record(torch.tensor([token]))
    logits[0, 7] = 10.0
    assert sampling.choose(logits, state, sampling.SamplerFlags.of(params)).tolist() == [9]


def test_the_same_seed_draws_the_same_token_and_other_seeds_differ():
    params = GenerationParams(temperature=1.0, top_p=1.0)
    logits = torch.zeros(1, V)
    draws = {}
    for seed in range(20):
        a = sampling.choose(logits, state_for([1], params, seed), sampling.SamplerFlags.of(params))
        b = sampling.choose(logits, state_for([1], params, seed), sampling.SamplerFlags.of(params))
        assert torch.equal(a, b)
        draws[seed] = int(a)
    assert len(set(draws.values())) > 10


def test_gumbel_draws_follow_the_softmax_distribution():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    logits = probs.log().view(1, -1)
    state = sampling.SamplerState(4, 4096, torch.device("cpu"))
    state.start([0], GenerationParams(temperature=1.0, top_p=1.0, max_new_tokens=1), 1234)
    counts = torch.zeros(4)
    n = 4000
    flags = sampling.SamplerFlags(greedy=False)
    for step in range(n):
        state.length.fill_(step + 1)      # a fresh counter each draw, as successive positions give
        token = int(sampling.process(logits, state, flags).add(
            -torch.log(-torch.log(sampling.uniform_noise(state.seed, state.length, 4)))).argmax())
        counts[token] += 1
    # four standard deviations of a binomial count
    tolerance = 4 * (n * probs * (1 - probs)).sqrt()
    assert ((counts - n * probs).abs() < tolerance).all(), counts / n


def test_noise_lies_strictly_inside_zero_one():
    u = sampling.uniform_noise(torch.tensor(7), torch.tensor(3), 1 << 16)
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert torch.isfinite(-torch.log(-torch.log(u))).all()


# ---------------------------------------------------------------- the eager path's candidate sampler

@pytest.mark.parametrize("case", [c for c in CASES if c["temperature"] > 0 and c.get("typical_p", 1.0) == 1.0],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_candidates_are_what_the_processors_leave(case):
    params = GenerationParams(**case)
    before_filters = build_processors(params, filters=False)
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        # peaked (a trained model at low temperature) and flat (a nucleus wider than the candidates)
        logits = torch.randn(1, V, generator=gen) * (8.0 if seed % 2 else 1.0)
        prompt = torch.randint(0, V, (30,), generator=gen).tolist()
        scores = before_filters(torch.tensor([prompt]), logits.clone())
        want = hf_scores(prompt, logits, params)
        kept = torch.isfinite(want[0]).nonzero().flatten()
        found = generate.candidates(scores, params)
        if found is None:
            # the processors leave more than the candidates hold (or top-k reaches the whole vocabulary)
            assert params.top_k >= V or (params.top_k == 0 and len(kept) >= generate.CANDIDATES)
            continue
        ids, probs = found
        assert sorted(ids) == kept.tolist()
        torch.testing.assert_close(torch.tensor(probs), torch.softmax(want[0], -1)[ids], rtol=1e-5, atol=1e-7)


def test_candidates_give_way_to_the_processors_where_they_cannot_be_exact():
    flat = torch.zeros(1, V)
    assert generate.candidates(flat, GenerationParams(temperature=1.0, top_p=0.9)) is None        # wide nucleus
    assert generate.candidates(flat, GenerationParams(temperature=1.0, top_k=10)) is None          # top-k ties
    peaked = torch.arange(V, dtype=torch.float32).view(1, V)
    assert generate.candidates(peaked, GenerationParams(temperature=1.0, top_p=0.9, typical_p=0.5)) is None
    ids, probs = generate.candidates(peaked, GenerationParams(temperature=1.0, top_p=0.9))
    assert ids[0] == V - 1 and abs(sum(probs) - 1) < 1e-6


def test_eager_sampling_draws_from_the_candidates_with_a_seed(monkeypatch):
    # the fast path is the one that runs for the app's defaults, and one seed gives one draw
    calls = []
    real = generate.candidates
    monkeypatch.setattr(generate, "candidates", lambda *a: calls.append(1) or real(*a))
    params = GenerationParams(temperature=0.2, top_p=0.95, repetition_penalty=1.2)
    scores = torch.randn(1, V, generator=torch.Generator().manual_seed(0)) * 4
    draws = {generate.sample_candidates(scores, params, torch.Generator().manual_seed(5)) for _ in range(3)}
    assert len(draws) == 1 and calls
