"""Prompt → tokens → streamed text: sampling, stop strings, EOS, cancellation, truncation, FIM prompts."""
from __future__ import annotations

import collections
import dataclasses
import inspect
import math
import threading
import time
import weakref
from typing import Iterator

import torch
from transformers import (LogitsProcessorList, MinPLogitsWarper, NoRepeatNGramLogitsProcessor,
                          RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper, TypicalLogitsWarper)

from backend.errors import GenerationError
from backend.settings.table import GenerationParams

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<fim_prefix>", "<fim_suffix>", "<fim_middle>"


@dataclasses.dataclass
class Chunk:
    """One streamed piece: the new text plus running counts."""
    text: str
    prompt_tokens: int
    completion_tokens: int
    elapsed_s: float
    truncated_tokens: int = 0                   # prompt tokens dropped to fit the context
    finish_reason: str | None = None            # "eos", "stop", "length", "cancelled"
    token_id: int | None = None                 # the last token sampled (TGI's stream names it)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


# ---------------------------------------------------------------- prompts

def fit_context(ids: list[int], params: GenerationParams, n_positions: int) -> tuple[list[int], int]:
    """Left-truncate `ids` so prompt + max_new_tokens fits; returns (ids, dropped count)."""
    context = min(params.context_length or n_positions, n_positions)
    budget = context - params.max_new_tokens
    if budget < 1:
        raise GenerationError(f"max_new_tokens ({params.max_new_tokens}) leaves no room for the prompt in a "
                              f"context of {context} tokens; lower max_new_tokens.")
    if len(ids) <= budget:
        return ids, 0
    return ids[-budget:], len(ids) - budget


# A front door sizes a request (Engine.prompt_ids) before generation tokenizes it again: for a long text the
# second pass is a lookup. Short texts tokenize in well under a millisecond and are not kept.
LONG_TEXT_CHARS = 8192
_RECENT_MAX = 4
_recent: collections.OrderedDict[tuple[int, str], tuple[weakref.ref, tuple[int, ...]]] = collections.OrderedDict()
_recent_lock = threading.Lock()


def encode(tokenizer, text: str) -> list[int]:
    """`text`'s ids; text no tokenizer can read (a lone surrogate from JSON's \\ud800) is the client's error."""
    key = (id(tokenizer), text) if isinstance(text, str) and len(text) >= LONG_TEXT_CHARS else None
    if key is not None:
        with _recent_lock:
            hit = _recent.get(key)
            if hit is not None and hit[0]() is tokenizer:
                _recent.move_to_end(key)
                return list(hit[1])
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except (UnicodeError, TypeError, ValueError) as exc:
        raise GenerationError(f"the prompt cannot be tokenized: {exc}; send valid UTF-8 text (no lone "
                              f"surrogates such as \\ud800).") from None
    if key is not None:
        with _recent_lock:
            _recent[key] = (weakref.ref(tokenizer), tuple(ids))
            while len(_recent) > _RECENT_MAX:
                _recent.popitem(last=False)
    return ids


def fim_split(n_pre: int, n_suf: int, budget: int) -> tuple[int, int]:
    """How many prefix and suffix tokens fit `budget`: the far ends go, the longer side first, then both
    sides alike (the prefix gives the odd token), so the text nearest the gap stays. O(1), not a token at a time."""
    excess = n_pre + n_suf - budget
    if excess <= 0:
        return n_pre, n_suf
    if n_pre - n_suf >= excess:
        return n_pre - excess, n_suf
    if n_suf - n_pre >= excess:
        return n_pre, n_suf - excess
    return budget // 2, budget - budget // 2


def fim_ids(tokenizer, prefix: str, suffix: str, params: GenerationParams, n_positions: int,
            order: str = "psm") -> tuple[list[int], int]:
    """StarCoder's FIM prompt as token ids, trimming the prefix's start and the suffix's end to fit.

    PSM: <fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>; SPM: <fim_prefix><fim_suffix>{suffix}<fim_middle>{prefix}.
    """
    if order not in ("psm", "spm"):
        raise GenerationError(f"FIM order {order!r} is unknown; use 'psm' or 'spm'")
    special = {}
    for token in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE):
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == tokenizer.unk_token_id:
            raise GenerationError(f"this tokenizer has no {token} token, so the model was not trained for "
                                  f"fill-in-the-middle; use completion mode.")
        special[token] = tid
    pre = encode(tokenizer, prefix)
    suf = encode(tokenizer, suffix)
    context = min(params.context_length or n_positions, n_positions)
    budget = context - params.max_new_tokens - 3
    if budget < 0:
        raise GenerationError(f"max_new_tokens ({params.max_new_tokens}) leaves no room for the code around "
                              f"the gap in a context of {context} tokens; lower max_new_tokens.")
    keep_pre, keep_suf = fim_split(len(pre), len(suf), budget)
    dropped = len(pre) - keep_pre + len(suf) - keep_suf
    pre, suf = pre[len(pre) - keep_pre:], suf[:keep_suf]
    p, s, m = special[FIM_PREFIX], special[FIM_SUFFIX], special[FIM_MIDDLE]
    ids = [p] + pre + [s] + suf + [m] if order == "psm" else [p, s] + suf + [m] + pre
    return ids, dropped


# ---------------------------------------------------------------- sampling

def build_processors(params: GenerationParams, filters: bool = True) -> LogitsProcessorList:
    """transformers' processors for `params`, in generation order; `filters=False` stops after the temperature
    (what `sample_candidates` needs: it applies top-k, top-p and min-p itself)."""
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(params.no_repeat_ngram_size))
    if params.temperature > 0:
        if params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(params.temperature))
        if not filters:
            return processors
        if params.top_k > 0:
            processors.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
        if params.typical_p < 1.0:
            processors.append(TypicalLogitsWarper(params.typical_p))
        if params.min_p > 0:
            processors.append(MinPLogitsWarper(params.min_p))
    return processors


def sample(logits: torch.Tensor, params: GenerationParams, generator: torch.Generator) -> int:
    # logits: [1, V] after the processors
    if params.temperature == 0:
        return int(logits.argmax(-1))
    probs = torch.softmax(logits.float(), dim=-1)
    if not bool(torch.isfinite(probs).all()):
        # e.g. a repetition_penalty so small that a logit divided by it overflows
        raise GenerationError(f"the sampling parameters made the token probabilities NaN (repetition_penalty "
                              f"{params.repetition_penalty}, temperature {params.temperature}); use values nearer 1.")
    return int(torch.multinomial(probs, 1, generator=generator))


CANDIDATES = 64     # the most likely tokens the fast path draws from, when top-k or top-p leave no more


def candidates(scores: torch.Tensor, params: GenerationParams) -> tuple[list[int], list[float]] | None:
    """(token ids, probabilities) that TopK, TopP and MinP (transformers' semantics) leave, computed on the
    few most likely tokens instead of sorting and normalizing the whole vocabulary; None when those do not
    hold the answer (a top-p nucleus wider than CANDIDATES, ties at top-k's edge, typical-p set, non-finite
    scores): the caller then runs the processors. scores: [1, V] after penalties and temperature.

    A handful of tensor operations, then plain Python on at most top-k numbers: on a CPU each tensor
    operation costs microseconds of dispatch, which is most of what a choice over 64 numbers costs.
    """
    vocab = scores.shape[-1]
    k = params.top_k if params.top_k > 0 else CANDIDATES
    if params.typical_p < 1.0 or k >= vocab:
        return None
    top_values, top_ids = scores[0].topk(k)                                 # descending
    values, ids = top_values.tolist(), top_ids.tolist()
    if not (math.isfinite(values[0]) and math.isfinite(values[-1])):
        return None
    if params.top_k > 0:
        if int((scores[0] >= top_values[-1]).sum()) > k:                    # TopK keeps ties with the k-th value
            return None
        mass = sum(math.exp(v - values[0]) for v in values)                 # TopP then sees only these k
    else:
        mass = float(scores[0].sub(values[0]).exp_().sum())
    probs = [math.exp(v - values[0]) / mass for v in values]
    if params.top_k == 0:
        # without top-k, what survives must be known to lie within the candidates
        if params.top_p < 1.0 and sum(probs) < params.top_p:                # the nucleus goes past them
            return None
        if params.top_p >= 1.0 and not probs[-1] < params.min_p * probs[0]:
            return None                                                     # no filter, or min-p keeps more
    n = k
    if params.top_p < 1.0:
        # TopP removes a token once the probability of the tokens above it reaches top_p
        above, n = 0.0, 0
        while n < k and (n == 0 or above < params.top_p):
            above += probs[n]
            n += 1
    if params.min_p > 0:
        n = sum(1 for p in probs[:n] if p >= params.min_p * probs[0])
    kept = sum(probs[:n])
    return ids[:n], [p / kept for p in probs[:n]]


def sample_candidates(scores: torch.Tensor, params: GenerationParams, generator: torch.Generator) -> int | None:
    """A draw from `candidates` with one uniform number from `generator`, or None where they do not apply.

    On the demo model's vocabulary a few times cheaper than the processors and a draw over the whole
    vocabulary; on StarCoder's 49,152 tokens ~5x (bench/sampling_cost.py).
    """
    found = candidates(scores, params)
    if found is None:
        return None
    ids, probs = found
    u = float(torch.rand((), generator=generator))
    for token, p in zip(ids, probs):
        u -= p
        if u < 0:
            return token
    return ids[-1]                  # u within rounding of 1


# ---------------------------------------------------------------- the loop

def _cache_kwarg(model) -> str:
    # transformers ≥ 5.2x calls it `cache`; earlier 5.x `past_key_values`
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _next_logits(model, ids: torch.Tensor, cache, cache_kwarg: str):
    # ids: [1, S] -> logits of the last position [1, V], updated cache. Only that position goes through
    # the lm_head: a prompt's other positions would cost S x vocab x hidden multiply-adds and S x vocab
    # floats of memory (StarCoder, 8k prompt: 1.6 GB) for logits nobody reads
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kwarg: cache})
    new_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return out.logits[:, -1, :], new_cache


def _stop_split(text: str, stops: tuple[str, ...], start: int = 0) -> tuple[str, bool]:
    """(text safe to emit, whether a stop string was hit); holds back a possible stop-string start.

    Stop strings are searched from `start` on (text before it was already checked).
    """
    cut = min((i for i in (text.find(s, start) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], True
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return text[:len(text) - hold], False


class _Detokenizer:
    """Incremental, UTF-8 safe decoding: each step decodes only the last few tokens, not all of them.

    Decoding a window that starts a few tokens back keeps byte-level merges and leading spaces right;
    a window whose text ends in U+FFFD holds a character split across tokens and waits for the rest.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.text = tokenizer, [], ""
        self.prefix_offset = self.read_offset = 0

    def add(self, token: int) -> None:
        self.ids.append(token)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        window = decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(window) > len(prefix) and not window.endswith("\ufffd"):
            self.text += window[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def flush(self) -> str:
        """All text, including a trailing incomplete character's replacement dropped."""
        rest = self.tokenizer.decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        return self.text + rest[len(prefix):].rstrip("\ufffd")


def _eager_tokens(model, prompt_ids: list[int], params: GenerationParams, seed: int) -> Iterator[int]:
    """The reference path: transformers' dynamic cache, then the processors and the sampler on the CPU."""
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    processors = build_processors(params)
    # penalties and temperature, then the filters: sample_candidates does the latter's work on a few tokens
    before_filters = build_processors(params, filters=False)
    filters = LogitsProcessorList(processors[len(before_filters):])
    cache_kwarg = _cache_kwarg(model)
    history = torch.tensor([prompt_ids], dtype=torch.long)
    step_input, cache = history.to(device), None
    while True:
        logits, cache = _next_logits(model, step_input, cache, cache_kwarg)
        scores = before_filters(history, logits.float().cpu())
        token = sample_candidates(scores, params, generator) if params.temperature > 0 else None
        if token is None:
            token = sample(filters(history, scores), params, generator)
        yield token
        history = torch.cat([history, torch.tensor([[token]])], dim=1)
        step_input = torch.tensor([[token]], device=device)


@torch.inference_mode()
def stream(model, tokenizer, prompt_ids: list[int], params: GenerationParams,
           cancel: threading.Event | None = None, truncated_tokens: int = 0) -> Iterator[Chunk]:
    """Yield text deltas as tokens are sampled; the last chunk carries finish_reason."""
    cancel = cancel or threading.Event()
    seed = params.seed if params.seed >= 0 else int(torch.randint(0, 2**31 - 1, ()).item())
    eos = {tokenizer.eos_token_id} | set(_as_list(getattr(model.generation_config, "eos_token_id", None)))
    eos.discard(None)
    # a model loaded with a decoder (static cache, compiled step, sampling on the device) uses it
    decoder = getattr(model, "decoder", None)
    steps = (decoder.tokens(prompt_ids, params, seed) if decoder is not None
             else _eager_tokens(model, prompt_ids, params, seed))

    start = time.perf_counter()
    detok = _Detokenizer(tokenizer)
    emitted = ""
    finish = "length"
    longest_stop = max((len(s) for s in params.stop), default=0)

    def chunk(text: str, reason: str | None = None) -> Chunk:
        return Chunk(text, len(prompt_ids), len(detok.ids), time.perf_counter() - start, truncated_tokens, reason,
                     detok.ids[-1] if detok.ids else None)

    while len(detok.ids) < params.max_new_tokens:
        if cancel.is_set():
            finish = "cancelled"
            break
        token = next(steps)
        if token in eos:
            finish = "eos"
            break
        detok.add(token)
        if len(detok.text) == len(emitted) and not params.stop:
            continue
        safe, hit = _stop_split(detok.text, params.stop, max(0, len(emitted) - longest_stop))
        delta = safe[len(emitted):]
        if hit:
            yield chunk(delta, "stop")
            return
        if delta:
            emitted = safe
            yield chunk(delta)
    # held-back text that might have begun a stop string is released once generation ends, unless
    # the final (possibly incomplete) characters complete one
    text = detok.flush()
    safe, hit = _stop_split(text, params.stop, max(0, len(emitted) - longest_stop))
    if hit:
        text, finish = safe, "stop"
    yield chunk(text[len(emitted):], finish)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, set)) else [value]


def generate_text(model, tokenizer, prompt_ids: list[int], params: GenerationParams,
                  cancel: threading.Event | None = None) -> tuple[str, Chunk]:
    """The whole completion and its last chunk (counts, finish reason)."""
    parts, last = [], None
    for last in stream(model, tokenizer, prompt_ids, params, cancel):
        parts.append(last.text)
    return "".join(parts), last
