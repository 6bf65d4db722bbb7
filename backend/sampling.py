"""Choosing the next token on the model's device: HF's logits processors with tensor parameters, seeded noise.

Each processor below computes what the transformers processor of the same name computes (tests compare
them on random logits), but takes its parameter as a 0-dim tensor and its history as fixed-shape device
buffers, so one compiled graph serves every value and only the chosen id ever reaches the host.

Randomness is a counter-based hash of (seed, position, token id), not a generator object: it needs no
state between steps, traces into a graph, and the same seed gives the same noise on every device.
"""
from __future__ import annotations

import dataclasses

import torch

NEG_INF = float("-inf")
_M32 = 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class SamplerFlags:
    """What changes the graph's shape: compiled once per distinct value (the common ones at load)."""
    greedy: bool
    typical: bool = False          # typical_p < 1: a second sort
    ngram: int = 0                 # no_repeat_ngram_size

    @classmethod
    def of(cls, params) -> "SamplerFlags":
        greedy = params.temperature == 0
        return cls(greedy, not greedy and params.typical_p < 1.0, params.no_repeat_ngram_size)


class SamplerState:
    """Device buffers for one generation: parameters as 0-dim tensors, the token history, what was seen.

    Buffers keep their addresses for the model's lifetime (a CUDA graph replays against them): a new
    generation refills them in place.
    """

    def __init__(self, vocab_size: int, max_len: int, device: torch.device) -> None:
        f32 = dict(dtype=torch.float32, device=device)
        self.temperature = torch.ones((), **f32)
        self.top_p = torch.ones((), **f32)
        self.min_p = torch.zeros((), **f32)
        self.typical_p = torch.ones((), **f32)
        self.penalty = torch.ones((), **f32)
        self.top_k = torch.full((), vocab_size, dtype=torch.long, device=device)
        self.seed = torch.zeros((), dtype=torch.long, device=device)
        self.history = torch.zeros(max_len, dtype=torch.long, device=device)      # [T] prompt + generated
        self.length = torch.zeros((), dtype=torch.long, device=device)            # tokens in history
        # [1, V], 1.0 where seen: inductor's CPU code reads and writes float32 vectors fast, bool and int
        # masks element by element (a compiled greedy step took 2 ms with a bool mask, 0.12 ms with this)
        self.seen = torch.zeros(1, vocab_size, dtype=torch.float32, device=device)
        self.vocab_size, self.max_len = vocab_size, max_len

    def buffers(self) -> list[torch.Tensor]:
        return [self.temperature, self.top_p, self.min_p, self.typical_p, self.penalty, self.top_k, self.seed,
                self.history, self.length, self.seen]

    def start(self, prompt_ids: list[int], params, seed: int) -> None:
        """Fill the buffers for a new generation (host → device copies of a few scalars and the prompt)."""
        if len(prompt_ids) + params.max_new_tokens > self.max_len:
            raise ValueError(f"{len(prompt_ids)} prompt tokens + {params.max_new_tokens} new ones exceed the "
                             f"static cache of {self.max_len}")
        self.temperature.fill_(params.temperature if params.temperature > 0 else 1.0)
        self.top_p.fill_(params.top_p)
        self.min_p.fill_(params.min_p)
        self.typical_p.fill_(params.typical_p)
        self.penalty.fill_(params.repetition_penalty)
        self.top_k.fill_(min(params.top_k, self.vocab_size) if params.top_k > 0 else self.vocab_size)
        self.seed.fill_(seed)
        prompt = torch.tensor(prompt_ids, dtype=torch.long).to(self.history.device, non_blocking=True)
        self.history[:len(prompt_ids)].copy_(prompt)
        self.length.fill_(len(prompt_ids))
        self.seen.zero_()
        self.seen[0].index_fill_(0, prompt.clamp(max=self.vocab_size - 1), 1.0)

    def record(self, token: torch.Tensor) -> None:
        """Append the chosen token (a [1] device tensor) without leaving the device."""
        self.history.index_copy_(0, self.length.view(1), token)
        self.seen[0].index_fill_(0, token, 1.0)
        self.length.add_(1)


# ---------------------------------------------------------------- the processors, HF's semantics

def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    # logits: [1, V]; seen: [1, V] tokens in the prompt or generated so far
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen > 0, penalized, logits)


def no_repeat_ngram(logits: torch.Tensor, history: torch.Tensor, length: torch.Tensor, n: int) -> torch.Tensor:
    """Ban every token that would complete an n-gram already in history[:length]."""
    # history: [T]; windows: [T - n + 1, n]. A window is valid when it lies inside the history.
    windows = history.unfold(0, n, 1)
    starts = torch.arange(windows.shape[0], device=history.device)
    prefix = history.gather(0, (length - (n - 1) + torch.arange(n - 1, device=history.device)).clamp(min=0))
    matches = (windows[:, :-1] == prefix).all(dim=-1) & (starts + n <= length)
    vocab = logits.shape[-1]
    banned = torch.zeros(vocab + 1, dtype=torch.bool, device=logits.device)
    banned.index_fill_(0, torch.where(matches, windows[:, -1].clamp(max=vocab), vocab), True)
    return logits.masked_fill(banned[:vocab].unsqueeze(0), NEG_INF)


def top_k_top_p(logits: torch.Tensor, k: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """HF's top-k then top-p from one sort; k = V and p = 1 are "off"."""
    # k: 0-dim long in [1, V]; ties with the k-th value are kept, as with topk's threshold
    desc, order = torch.sort(logits, dim=-1, descending=True)                  # [1, V]
    cut_k = desc < desc.gather(-1, (k - 1).view(1, 1))
    # top-p as HF computes it: ascending order, cumulative mass, drop while it stays <= 1 - p; the
    # ascending array is this one reversed, with top-k's victims already at -inf
    ascending = desc.masked_fill(cut_k, NEG_INF).flip(-1)
    cut_p = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - p)
    cut_p[..., -1:] = False
    cut_p = cut_p.flip(-1) & (p < 1)    # p = 1 keeps even tokens whose probability underflows
    remove = cut_k | cut_p
    return logits.masked_fill(remove.scatter(1, order, remove), NEG_INF)


def typical_p(logits: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    normalized = torch.log_softmax(logits, dim=-1)
    p = torch.exp(normalized)
    entropy = -(normalized * p).nansum(-1, keepdim=True)
    shifted = torch.abs(-normalized - entropy)
    sorted_scores, order = torch.sort(shifted, dim=-1, descending=False)
    cumulative = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1).clamp(max=sorted_scores.shape[-1] - 1)
    remove = sorted_scores > sorted_scores.gather(1, last.view(-1, 1))
    remove[..., :1] = False
    return logits.masked_fill(remove.scatter(1, order, remove), NEG_INF)


def min_p(logits: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # the most likely token always survives (its probability is the maximum), as HF's min_tokens_to_keep
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill(probs < m * probs.amax(dim=-1, keepdim=True), NEG_INF)


def process(logits: torch.Tensor, state: SamplerState, flags: SamplerFlags) -> torch.Tensor:
    """The processors in generate.build_processors' order; parameters at their "off" value are no-ops."""
    # logits: [1, V] float32
    logits = repetition_penalty(logits, state.seen, state.penalty)
    if flags.ngram:
        logits = no_repeat_ngram(logits, state.history, state.length, flags.ngram)
    if flags.greedy:
        return logits
    logits = logits / state.temperature
    logits = top_k_top_p(logits, state.top_k, state.top_p)
    if flags.typical:
        logits = typical_p(logits, state.typical_p)
    return min_p(logits, state.min_p)


# ---------------------------------------------------------------- choosing

def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2**32 for x < 2**32 and c < 2**31: the product fits int64, so nothing overflows
    return (x * c) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # a 32-bit integer finalizer (xorshift-multiply), constants below 2**31 so int64 never overflows
    x = x ^ (x >> 16)
    x = _mul32(x, 0x21F0AAAD)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x735A2D97)
    return x ^ (x >> 15)


def uniform_noise(seed: torch.Tensor, counter: torch.Tensor, n: int) -> torch.Tensor:
    """n floats in (0, 1) that depend only on (seed, counter): [n] float32 on seed's device."""
    base = _mix32((_mix32(seed & _M32) ^ _mix32(counter & _M32)) & _M32)
    h = _mix32((base + torch.arange(n, device=seed.device)) & _M32)
    # 23 bits: the largest value, 1 - 2**-24, is still below 1 in float32 (so -log(-log u) stays finite)
    return ((h >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def choose(logits: torch.Tensor, state: SamplerState, flags: SamplerFlags) -> torch.Tensor:
    """The next token id as a [1] long tensor on the device, recorded in the state's history."""
    # logits: [1, V] (any float dtype)
    scores = process(logits.float(), state, flags)
    if flags.greedy:
        token = scores.argmax(dim=-1)
    else:
        # Gumbel-max: argmax(log p + g) with g ~ Gumbel(0, 1) is a draw from softmax(scores)
        gumbel = -torch.log(-torch.log(uniform_noise(state.seed, state.length, scores.shape[-1])))
        token = (scores + gumbel).argmax(dim=-1)
    state.record(token)
    return token
