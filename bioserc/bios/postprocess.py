"""Clean a generated bio and decide whether it is usable.

Small models sometimes stop mid-sentence (max_new_tokens), loop on a phrase, or emit nothing; such output is
reported as a failure with a reason rather than silently fed to the classifier.
"""

from __future__ import annotations

import re


_SPACES = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
MIN_WORDS = 4


def clean_bio(text: str, hit_length_limit: bool) -> str:
    """Collapse whitespace; when generation was cut off, drop the unfinished last sentence if one is complete."""
    text = _SPACES.sub(" ", text).strip()
    if hit_length_limit:
        ends = [m.end() for m in _SENTENCE_END.finditer(text)]
        if ends:
            text = text[: ends[-1]]
    return text


def degenerate_reason(text: str) -> str | None:
    """Why a bio is unusable, or None when it is fine."""
    words = text.split()
    if len(words) < MIN_WORDS:
        return f"empty or too short output ({len(words)} words)"
    if len(words) >= 20:
        trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
        if len(set(trigrams)) / len(trigrams) < 0.4:
            return "degenerate output (the same phrase repeated)"
    return None
