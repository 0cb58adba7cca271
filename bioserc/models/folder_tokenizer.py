"""A saved Hugging Face tokenizer folder read with the `tokenizers` library alone, for the ONNX runtime.

`transformers.AutoTokenizer` imports torch; labelling with an ONNX artifact needs only the fast tokenizer that
`tokenizer.json` holds. `FolderTokenizer` answers the calls `Collator` makes, with the same ids as the
`PreTrainedTokenizerFast` over the same file (tests/test_folder_tokenizer.py compares them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer


class FolderTokenizer:
    """tokenizer.json + tokenizer_config.json (special tokens, model_max_length) of one folder."""

    def __init__(self, directory: str) -> None:
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory!r} has no tokenizer.json (a fast tokenizer is needed without torch)")
        self.backend = Tokenizer.from_file(path)
        # As PreTrainedTokenizerFast does per call: the file's own truncation/padding settings do not apply.
        self.backend.no_truncation()
        self.backend.no_padding()
        config: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config's entries win, as in HF
            if os.path.isfile(os.path.join(directory, name)):
                with open(os.path.join(directory, name), encoding="utf-8") as fh:
                    config.update(json.load(fh))
        self.model_max_length = int(config.get("model_max_length", 512))
        self.sep_token_id = self._token_id(config.get("sep_token"))
        self.eos_token_id = self._token_id(config.get("eos_token"))
        self.pad_token_id = self._token_id(config.get("pad_token"))

    def _token_id(self, token: str | dict[str, Any] | None) -> int | None:
        if isinstance(token, dict):  # an AddedToken as saved: {"content": ..., "lstrip": ...}
            token = token.get("content")
        return None if token is None else self.backend.token_to_id(token)

    def __call__(
        self,
        texts: str | Sequence[str],
        add_special_tokens: bool = True,
        padding: bool = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """input_ids of one text (a list) or of several (lists), or int64 input_ids and attention_mask arrays with
        return_tensors="np", which needs padding (the bios' call)."""
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if truncation:
            self.backend.enable_truncation(max_length or self.model_max_length)
        try:
            encodings = self.backend.encode_batch(batch, add_special_tokens=add_special_tokens)
        finally:
            if truncation:
                self.backend.no_truncation()
        ids = [e.ids for e in encodings]
        if return_tensors is None:  # the per-conversation call: Collator reads only the ids
            return {"input_ids": ids[0] if single else ids}
        if return_tensors != "np" or not padding:
            raise ValueError("FolderTokenizer returns arrays only as return_tensors='np' with padding=True")
        width = max((len(row) for row in ids), default=0)
        input_ids = np.full((len(ids), width), self.pad_token_id or 0, dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        for n, row in enumerate(ids):
            input_ids[n, : len(row)], attention_mask[n, : len(row)] = row, 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
