"""The CPU decoding path of the bio backends: grouped-query attention without K/V copies gives eager attention's
logits, and the greedy loop that drops finished rows gives `generate`'s tokens while computing fewer slots."""

from __future__ import annotations

from collections import Counter

import pytest
from tiny_llm import TEXTS, tiny_llama

from bioserc.bios.base import GenerationConfig
from bioserc.bios.chat import render_chat
from bioserc.bios.transformers_backend import TransformersBackend
from bioserc.models.grouped_attention import register


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(folder)
    return folder


def test_grouped_attention_matches_eager_with_padding_cache_and_4d_masks(tiny, one_thread):
    """Left-padded prefill, a cached decoding step, and the 4D mask of label scoring: logits within float rounding
    of transformers' eager attention (the tiny Llama has 4 query heads on 2 KV heads)."""
    import torch
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(tiny, attn_implementation="eager").eval()
    grouped = AutoModelForCausalLM.from_pretrained(tiny, attn_implementation=register()).eval()
    assert grouped.config.num_attention_heads == 2 * grouped.config.num_key_value_heads
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, :7] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    step = torch.randint(5, 200, (3, 1))
    block = torch.zeros(3, 1, 4, 24)  # 4 new tokens that see the prompt and one another except the last
    block[:, :, 3, 23] = torch.finfo(torch.float32).min
    block[1, :, :, :7] = torch.finfo(torch.float32).min
    outs = []
    with torch.inference_mode():
        for model in (eager, grouped):
            first = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            second = model(
                input_ids=step,
                attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1),
                position_ids=positions[:, -1:] + 1,
                past_key_values=first.past_key_values,
            )
            again = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            scored = model(
                input_ids=torch.randint(5, 200, (3, 4), generator=torch.Generator().manual_seed(1)),
                attention_mask=block,
                position_ids=positions[:, -1:] + torch.arange(1, 5),
                past_key_values=again.past_key_values,
            )
            outs.append([first.logits[mask.bool()], second.logits, scored.logits])
    for a, b in zip(*outs, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


def _reference(tokenizer, model, prompts, config):
    """`generate` on each prompt alone: the tokens the bios had before the greedy loop existed."""
    import torch

    out = []
    for messages in prompts:
        ids = tokenizer(render_chat(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            row = model.generate(
                **ids,
                max_new_tokens=config.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                repetition_penalty=config.repetition_penalty,
                no_repeat_ngram_size=config.no_repeat_ngram_size,
            )[0, ids["input_ids"].shape[1] :]
        out.append(row.tolist())
    return out


def test_greedy_loop_matches_generate_and_drops_finished_rows(tiny, one_thread):
    """Rows that end early leave the batch: the tokens equal `generate`'s on each prompt alone, and the decode slots
    are the tokens computed (not rows x longest). The stop token is chosen from the reference output so that the
    rows end at different steps."""
    config = GenerationConfig(max_new_tokens=16)
    backend = TransformersBackend(str(tiny), batch_size=4, device="cpu")
    prompts = [
        [
            {"role": "system", "content": "Describe people."},
            {"role": "user", "content": f"Conversation transcript: {text} Describe speaker {k}."},
        ]
        for k, text in enumerate(TEXTS[:4])
    ]
    free = _reference(backend.tokenizer, backend.model, prompts, config)
    stop = Counter(free[0][2:]).most_common(1)[0][0]  # a token row 0 writes, after a few others
    backend.model.generation_config.eos_token_id = stop
    expected = _reference(backend.tokenizer, backend.model, prompts, config)
    ends = [row.index(stop) if stop in row else len(row) for row in expected]
    assert len(set(ends)) > 1 and min(ends) < config.max_new_tokens  # the case under test: rows end apart

    gens = backend.generate(prompts, config)
    assert [g.new_tokens for g in gens] == ends
    assert [g.text for g in gens] == [
        backend.tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(expected, ends, strict=True)
    ]
    assert [g.finish_reason for g in gens] == ["stop" if n < config.max_new_tokens else "length" for n in ends]
    # every row computes its tokens plus the stop token; nothing after
    assert backend.counts["decode_slots"] == sum(min(n + 1, config.max_new_tokens) for n in ends)
