"""Text normalisation shared by every reader.

MELD's processed JSON was decoded with the wrong codec, so apostrophes arrive as U+0092 and dashes as U+0097 (C1
control characters). Re-reading those through cp1252 recovers the intended character; typographic punctuation is
then folded to ASCII so that the JSON and CSV releases of the same corpus give identical text. Remaining control
characters are dropped. Readers keep the untouched string as `original_text`.
"""

from __future__ import annotations

import re
import unicodedata


_C1 = re.compile(r"[\x80-\x9f]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")
_SPACES = re.compile(r"\s+")
_ASCII_PUNCT = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"',
        "\u2013": "-", "\u2014": "-", "\u2026": "...", "\u00a0": " ",
    }
)


def _repair_c1(match: re.Match[str]) -> str:
    try:
        return bytes([ord(match.group())]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d have no cp1252 character
        return ""


def normalize_text(text: str) -> str:
    """Repair cp1252 mojibake, fold typographic punctuation to ASCII, drop control characters, squeeze spaces."""
    text = _C1.sub(_repair_c1, text)
    text = unicodedata.normalize("NFC", text).translate(_ASCII_PUNCT)
    text = _CONTROL.sub("", text)
    return _SPACES.sub(" ", text).strip()
