"""Prompt rendering shared by every backend that applies a model's own chat template (transformers, ONNX Runtime,
tensorrt-llm, and the HTTP backend's completions endpoint), so one model gets byte-identical prompts whichever
runtime executes it. Backend modules import this, never the factory in `backends`.
"""

from __future__ import annotations

from typing import Any

from bioserc.bios.base import Messages


def render_chat(tokenizer: Any, messages: Messages) -> str:
    """Chat template with the generation prompt; a trailing assistant message is continued, not closed.

    Bio prompts pre-fill the answer with the speaker's name, so the template must leave that turn open.
    """
    if messages and messages[-1]["role"] == "assistant":
        prefix = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        return prefix + messages[-1]["content"]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
