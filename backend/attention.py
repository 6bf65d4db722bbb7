"""Multi-query attention for a new token without copying the one key/value head once per query head.

StarCoder's attention has 48 query heads and one key/value head. Given a mask (a static cache always
gives one), transformers' SDPA function packs the heads for one token only when it is not being
compiled; under torch.compile it repeats the key/value head for every query head first, so a compiled
decode step copied heads × window × head_dim keys and values per layer per token. For one new token the query heads can
instead be the rows of a single-head attention over the shared keys: the same numbers, no copy. This
is what GPTBigCode's original implementation did; here it is one registered attention function, and
everything it does not cover (a prompt of several tokens, several key/value heads) goes to
transformers' own SDPA function.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "starcoder_mqa_sdpa"


def mqa_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                  is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, H, 1, D], key/value [B, 1, T, D], mask [B, 1, 1, T] or None -> ([B, 1, H, D], None)."""
    if query.shape[2] != 1 or key.shape[1] != 1 or query.shape[1] == 1 or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    rows = query.transpose(1, 2)                       # [B, 1, H, D]: the heads as rows of the one head
    out = torch.nn.functional.scaled_dot_product_attention(rows, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling)
    return out, None                                   # [B, 1, H, D] is [B, L, H, D], what SDPA's returns


AttentionInterface.register(NAME, mqa_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use(model) -> None:
    """Route a multi-query model's attention through mqa_attention (a no-op for other models)."""
    if getattr(model.config, "multi_query", False):
        model.set_attn_implementation(NAME)
