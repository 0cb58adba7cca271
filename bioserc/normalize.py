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
_C0 = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # C0 controls except tab, newline and carriage return
_SPACES = re.compile(r"[^\S ]\s*| \s+")  # any whitespace run except a lone space (which needs no rewriting)
_ASCII_PUNCT = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201a": "'",
    "\u201b": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u2013": "-",
    "\u2014": "-",
    "\u2026": "...",
    "\u00a0": " ",
}
# A regex touches only the characters it replaces; str.translate with a dict costs a lookup per character on
# non-ASCII text (4 s for 17 MB), which made normalisation the slowest part of reading an archive.
_TYPOGRAPHIC = re.compile("[" + "".join(_ASCII_PUNCT) + "]")


def _repair_c1(match: re.Match[str]) -> str:
    try:
        return bytes([ord(match.group())]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d have no cp1252 character
        return ""


def normalize_text(text: str) -> str:
    """Repair cp1252 mojibake, fold typographic punctuation to ASCII, drop control characters, squeeze spaces."""
    text = _C1.sub(_repair_c1, text)
    text = _TYPOGRAPHIC.sub(lambda m: _ASCII_PUNCT[m.group()], unicodedata.normalize("NFC", text))
    text = _CONTROL.sub("", text)
    return _SPACES.sub(" ", text).strip()


def find_control_character(text: str) -> int | None:
    """Position of the first C0 control character (NUL and the like, not tab/newline/CR) in `text`, or None.

    Text taken as written (canonical JSONL, `normalize=False`) must not carry them: they are binary debris, and
    tokenizers and downstream tools treat NUL inconsistently.
    """
    match = _C0.search(text)
    return match.start() if match else None
