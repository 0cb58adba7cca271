"""Speaker profile sources: what `bioserc bios --profile` makes for each (conversation, speaker).

    text     the free-text bio (prompt bio-v1): the paper's recipe and the default
    emotion  an emotion-focused bio in three fixed fields (emotion-v1): mood, what changes it, reactions to others
    scores   no decoding: one prefill of a one-word feeling question whose answer is pre-filled up to the emotion word
             (scores-v1); the profile is each label word's next-token probability, renormalised over the labels
    latent   the same prefill; the profile is the final-layer hidden state at the prompt's last token

The vector profiles need the model's outputs, so only backends that run it here can make them
(`LLMBackend.prefill_outputs`); a server returns text. Scores read each label's first token, so two labels whose words
start with the same token cannot be told apart: that is an error naming them, never a silent merge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bioserc.prompts.bio import (
    BIO_PROMPT_VERSION,
    EMOTION_PROMPT_VERSION,
    SCORES_PROMPT_VERSION,
    BioPrompt,
    emotion_prompt,
    feeling_prompt,
    label_words,
    speaker_prompt,
)
from bioserc.schema import Conversation


PROFILES = ("text", "emotion", "scores", "latent")
VECTOR_PROFILES = ("scores", "latent")
PROMPT_VERSIONS = {
    "text": BIO_PROMPT_VERSION,
    "emotion": EMOTION_PROMPT_VERSION,
    "scores": SCORES_PROMPT_VERSION,
    "latent": SCORES_PROMPT_VERSION,
}
# What each local backend kind's `prefill_last` returns, for the pipelines' checks before a model loads.
PREFILL_OUTPUTS = {"transformers": ("logits", "hidden"), "onnx": ("logits",)}
ANSWER_END = "emotion:"  # how the feeling prompt's pre-filled answer ends (`bioserc.prompts.bio.feeling_messages`)


def check_profile(profile: str, backend: str, outputs: Sequence[str], labels: Sequence[str] | None) -> None:
    """Raise ValueError when `profile` cannot be made with this backend and label set.

    `outputs` is what the backend's `prefill_last` returns (`LLMBackend.prefill_outputs` or `PREFILL_OUTPUTS`).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if profile == "scores" and not labels:
        raise ValueError("profile scores needs the label set whose words it scores (--dataset meld, emorynlp, ...)")
    if profile in VECTOR_PROFILES and not outputs:
        raise ValueError(
            f"profile {profile} needs a local backend (transformers or onnx); the {backend} backend "
            f"only returns generated text"
        )
    if profile == "latent" and "hidden" not in outputs:
        raise ValueError(
            f"profile latent needs the transformers backend: the {backend} backend returns logits but no hidden states"
        )


def profile_prompt(
    profile: str,
    conv: Conversation,
    speaker: str,
    words: int,
    labels: Sequence[str] | None,
    count_tokens: Callable,
    budget: int,
) -> BioPrompt:
    """The per-speaker prompt of `profile`, shortened to `budget` tokens like a bio prompt."""
    if profile == "text":
        return speaker_prompt(conv, speaker, words, count_tokens, budget)
    if profile == "emotion":
        return emotion_prompt(conv, speaker, words, count_tokens, budget)
    return feeling_prompt(conv, speaker, tuple(labels) if labels else None, count_tokens, budget)


def label_token_ids(encode: Callable[[str], list[int]], labels: Sequence[str]) -> list[int]:
    """Each label word's first token where the feeling prompt's answer continues (after `ANSWER_END` and a space).

    Read in context rather than from the word alone, so tokenizers that mark a leading space (byte-level BPE's "Ġ",
    SentencePiece's "▁") all give the token the model would emit there.
    """
    context = encode(ANSWER_END)
    owner: dict[int, str] = {}
    ids = []
    for label, word in zip(labels, label_words(tuple(labels)), strict=True):
        tokens = encode(f"{ANSWER_END} {word}")
        if tokens[: len(context)] != context or len(tokens) == len(context):
            raise ValueError(f"label {label!r} does not tokenize as a continuation of {ANSWER_END!r}")
        first = tokens[len(context)]
        if first in owner:
            raise ValueError(
                f"labels {owner[first]!r} and {label!r} start with the same token (id {first}) in this "
                f"model's tokenizer, so the scores profile cannot tell them apart; use a label set whose "
                f"words start differently"
            )
        owner[first] = label
        ids.append(first)
    return ids


def label_probabilities(logits: Any, ids: Sequence[int]) -> list[float]:
    """Next-token probabilities of the label tokens renormalised over them (a softmax over their logits alone)."""
    scores = np.asarray(logits, dtype=np.float64)[list(ids)]
    scores = np.exp(scores - scores.max())
    return (scores / scores.sum()).tolist()


def rounded(values: Any) -> list[float]:
    """A vector as written to bios.jsonl and the cache: plain floats, 6 decimals."""
    return [round(float(v), 6) for v in values]
