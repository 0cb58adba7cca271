"""Eager attention for grouped-query models that does not copy K and V once per query head.

transformers' eager attention (the one bioserc uses on CPU, where SDPA with padding masks is slower) expands every
layer's cached keys and values from the KV heads to all query heads before its matmuls (`repeat_kv`): for SmolLM2
(9 query heads on 3 KV heads) each decoding step copies the whole KV cache three times over, the largest single cost
of batched bio generation after the linear layers. Here the query heads that share a KV head are stacked into one
matrix instead, so each K and V is read once by one matrix product. Same arithmetic, same mask semantics (eager's
additive float mask); `register()` makes it selectable as `attn_implementation=GROUPED_ATTENTION`.
"""

from __future__ import annotations

from typing import Any

import torch


GROUPED_ATTENTION = "bioserc_grouped"


def grouped_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """query (B, H, Q, D), key/value (B, KV, L, D), mask (B, 1 or H, Q, >= L) -> output (B, Q, H, D), weights."""
    batch, heads, q_len, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    group = heads // kv_heads  # query head h uses KV head h // group, as repeat_kv lays them out
    weights = torch.matmul(query.reshape(batch, kv_heads, group * q_len, dim), key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        mask = attention_mask[..., :length]
        mask = mask.view(batch, kv_heads, group, q_len, length) if mask.shape[1] == heads else mask[:, :, None]
        weights = (weights.view(batch, kv_heads, group, q_len, length) + mask).view(batch, kv_heads, -1, length)
    weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).view(batch, heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), weights.view(batch, heads, q_len, length)


def register() -> str:
    """Make GROUPED_ATTENTION a transformers attention implementation (with eager's masks); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(GROUPED_ATTENTION, grouped_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED_ATTENTION, eager_mask)
    return GROUPED_ATTENTION
