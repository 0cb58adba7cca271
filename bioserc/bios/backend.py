"""The interface every LLM backend implements (transformers, ONNX Runtime, OpenAI-compatible HTTP, TensorRT-LLM).

Backends take chat messages, not strings: local backends apply the model's own chat template, HTTP backends send the
messages to a chat endpoint. They return the generated text only (the prompt is sliced off by token count, never by
string replacement: the reference implementation's string replacement left prompts in outputs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass


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


class LLMBackend(ABC):
    """One loaded model. `model_id` names it stably in caches and outputs (a path's basename is not enough)."""

    name: str = "base"
    model_id: str = ""
    max_context: int = 8192

    @abstractmethod
    def count_tokens(self, messages: Messages) -> int:
        """Prompt length in tokens after the chat template; used to fit long conversations into the context."""

    @abstractmethod
    def generate(self, batch: list[Messages], config: GenerationConfig) -> list[Generation]:
        """Generate one completion per prompt, in input order."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release servers, sessions or GPU memory; a no-op by default."""
