"""The interface every LLM backend implements (transformers, ONNX Runtime, OpenAI-compatible HTTP, TensorRT-LLM).

Backends take chat messages, not strings: local backends apply the model's own chat template, HTTP backends send the
messages to a chat endpoint. They return the generated text only (the prompt is sliced off by token count, never by
string replacement: the reference implementation's string replacement left prompts in outputs).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

from bioserc.bios.cache import model_fingerprint


Messages = list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """Decoding settings; part of the bio cache key, so changing any of them regenerates bios."""

    max_new_tokens: int = 160
    do_sample: bool = False  # greedy by default: bios must be reproducible run to run
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0  # only used when sampling
    repetition_penalty: float = 1.1  # small models loop on a phrase without it
    no_repeat_ngram_size: int = 4  # local backends only; HTTP servers ignore it

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int
    finish_reason: str | None = None  # "stop" (end of sequence) or "length" (hit max_new_tokens)
    error: str | None = None  # this prompt alone failed (e.g. the server refused it); the batch's others did not


@dataclass(slots=True)
class LastState:
    """What the model computed at the last token of one prompt: the source of the `scores` and `latent` profiles."""

    logits: Any  # numpy float32 (vocab,): next-token scores after the prompt
    hidden: Any | None  # numpy float32 (hidden size,): final-layer hidden state there; None unless asked for
    prompt_tokens: int


class LLMBackend(ABC):
    """One loaded model. `model_id` names it in outputs; `identity()` names it in cache keys."""

    name: str = "base"
    model_id: str = ""
    model_dir: str | None = None  # the local folder the model was loaded from, when there is one
    max_context: int = 8192

    def identity(self) -> dict[str, Any]:
        """Everything about the model that decides its output, for the bio cache key.

        A local folder counts by its content (`model_fingerprint`), never its name: a model retrained in the same
        folder must not serve its predecessor's bios. Backends with no local folder (a hub id, a server) fall back to
        `model_id`; the HTTP backend adds its server and request options.
        """
        if self.model_dir is not None and os.path.isdir(self.model_dir):
            return {"backend": self.name, "content": model_fingerprint(self.model_dir)}
        return {"backend": self.name, "model": self.model_id}

    @abstractmethod
    def count_tokens(self, messages: Messages) -> int:
        """Prompt length in tokens after the chat template; used to fit long conversations into the context."""

    @abstractmethod
    def generate(self, batch: list[Messages], config: GenerationConfig) -> list[Generation]:
        """Generate one completion per prompt, in input order.

        A prompt that fails on its own comes back with `error` set while the others still succeed; an exception
        means the whole batch failed.
        """

    def prefill_outputs(self) -> tuple[str, ...]:
        """What `prefill_last` can return: "logits" and/or "hidden"; empty for backends that only return text."""
        return ()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens; backends without a local tokenizer cannot say."""
        raise NotImplementedError(f"the {self.name} backend has no local tokenizer")

    def prefill_last(self, batch: list[Messages], hidden: bool = False) -> list[LastState]:
        """One prefill per prompt, no decoding: the last token's logits (and final hidden state when `hidden`)."""
        raise NotImplementedError(f"the {self.name} backend only returns generated text")

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release servers, sessions or GPU memory; a no-op by default."""
