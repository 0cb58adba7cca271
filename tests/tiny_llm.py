"""A tiny random Llama and BPE tokenizer built locally (no downloads), shared by the backend and export tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TEXTS = [
    "Ann is cheerful and talks fast.",
    "Bob sounds tired, answers briefly.",
    "They argue about the rent.",
    "Describe the speaker's mood and way of speaking.",
    "Conversation transcript: hello there, how are you?",
]


def tiny_tokenizer(directory: Path) -> Any:
    """A byte-level BPE trained on a few sentences, with a chat template: no downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        TEXTS,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="</s>", pad_token="<pad>", model_input_names=["input_ids", "attention_mask"]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return tokenizer


def tiny_llama(directory: Path) -> None:
    """A random 2-layer Llama (peaked logits, so greedy has no near-ties) beside the tiny tokenizer.

    2048 positions: the byte-level tokenizer spends ~300 tokens on a bio prompt's instructions alone (rotary
    positions have no table, so the context length changes no weight)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).eval().save_pretrained(directory)
