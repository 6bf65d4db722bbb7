"""Multi-query attention for one new token gives what transformers' SDPA path gives, without the copies."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from backend import attention
from backend.generate import _cache_kwarg, _next_logits
from backend.loader import from_quantized


def module(heads: int, kv_heads: int):
    return SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True, training=False)


@pytest.mark.parametrize("masked", [False, True])
def test_one_token_over_one_shared_head_equals_sdpa_with_the_head_repeated(masked):
    gen = torch.Generator().manual_seed(0)
    B, H, T, D = 1, 8, 37, 16
    query = torch.randn(B, H, 1, D, generator=gen)
    key, value = torch.randn(B, 1, T, D, generator=gen), torch.randn(B, 1, T, D, generator=gen)
    mask = (torch.arange(T) < 30).view(1, 1, 1, T) if masked else None
    ours, _ = attention.mqa_attention(module(H, 1), query, key, value, mask, scaling=0.25)
    # transformers repeats the key/value head for every query head when it is compiled
    theirs = torch.nn.functional.scaled_dot_product_attention(
        query, key.expand(B, H, T, D), value.expand(B, H, T, D), attn_mask=mask, scale=0.25).transpose(1, 2)
    assert ours.shape == theirs.shape == (B, 1, H, D)
    torch.testing.assert_close(ours, theirs)
    if masked:   # the masked positions really are left out
        unmasked, _ = attention.mqa_attention(module(H, 1), query, key, value, None, scaling=0.25)
        assert not torch.allclose(ours, unmasked)


def test_prompts_and_several_key_value_heads_go_to_transformers_sdpa():
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(1, 4, 5, 8, generator=gen)           # a prompt of 5 tokens
    key, value = torch.randn(1, 1, 5, 8, generator=gen), torch.randn(1, 1, 5, 8, generator=gen)
    ours, _ = attention.mqa_attention(module(4, 1), query, key, value, None, scaling=0.5)
    theirs, _ = sdpa_attention_forward(module(4, 1), query, key, value, None, scaling=0.5)
    torch.testing.assert_close(ours, theirs)
    query1 = torch.randn(1, 4, 1, 8, generator=gen)          # multi-head: nothing to share
    key4, value4 = torch.randn(1, 4, 5, 8, generator=gen), torch.randn(1, 4, 5, 8, generator=gen)
    ours, _ = attention.mqa_attention(module(4, 4), query1, key4, value4, None, scaling=0.5)
    theirs, _ = sdpa_attention_forward(module(4, 4), query1, key4, value4, None, scaling=0.5)
    torch.testing.assert_close(ours, theirs)


def test_loaded_models_use_it_and_decode_the_logits_of_transformers_sdpa(demo_dir):
    model = from_quantized(demo_dir, compile="off")
    assert model.config._attn_implementation == attention.NAME
    prompt, last = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[10]])

    def next_logits():
        with torch.inference_mode():
            _, cache = _next_logits(model, prompt, None, _cache_kwarg(model))
            return _next_logits(model, last, cache, _cache_kwarg(model))[0]
    ours = next_logits()
    model.set_attn_implementation("sdpa")
    torch.testing.assert_close(ours, next_logits())
