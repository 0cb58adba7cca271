"""Choosing a backend by name, and the prompt handling every local backend shares.

Backend modules are imported only when chosen: each pulls in a heavy, optional runtime (torch, onnxruntime,
tensorrt-llm) that most installs lack or do not need. Local backends render prompts with `render_chat` so that one
model gets byte-identical prompts whichever runtime executes it.
"""

from __future__ import annotations

from typing import Any

from bioserc.bios.backend import LLMBackend, Messages


KINDS = ("transformers", "onnx", "openai", "trtllm")


def make_backend(kind: str, model: str, **options: Any) -> LLMBackend:
    """Build a backend; for local kinds `model` may be an embedded model name ("smollm2", "minilm") or a folder.

    `options` go to the backend's constructor unchanged (e.g. `batch_size`, `base_url`, `provider`).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown backend {kind!r}; valid kinds: {', '.join(KINDS)}")
    if kind == "openai":
        if "base_url" not in options:
            raise ValueError("the openai backend needs base_url, e.g. http://localhost:8000")
        from bioserc.bios.http_backend import OpenAICompatibleBackend

        return OpenAICompatibleBackend(model=model, **options)

    from bioserc.embedded import resolve_model

    path = resolve_model(model)
    if kind == "transformers":
        from bioserc.bios.transformers_backend import TransformersBackend

        return TransformersBackend(path, **options)
    if kind == "onnx":
        from bioserc.bios.ort_backend import OrtBackend

        return OrtBackend(path, **options)
    from bioserc.bios.trtllm_backend import TrtLlmBackend

    return TrtLlmBackend(path, **options)


def render_chat(tokenizer: Any, messages: Messages) -> str:
    """Chat template with the generation prompt; a trailing assistant message is continued, not closed.

    Bio prompts pre-fill the answer with the speaker's name, so the template must leave that turn open.
    """
    if messages and messages[-1]["role"] == "assistant":
        prefix = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        return prefix + messages[-1]["content"]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def length_sorted_chunks(lengths: list[int], size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so left padding wastes little compute."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start:start + size] for start in range(0, len(order), size)]
