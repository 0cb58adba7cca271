"""Token ids of LLM-BiosERC samples: prompts, label answers and training features, shared by training and inference.

An answer is the label word plus the chat template's end-of-turn marker (`<|im_end|>` for ChatML). Its ids are read
off one rendered sample *in context* (after the generation prompt), once per label, and every sample reuses them: the
tokens trained on are exactly the tokens scored at inference. Prompts are tokenised without added special tokens,
since the chat template decides about BOS.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from bioserc.models.collate import IGNORE, BioKey
from bioserc.prompts.erc_llm import CHATML_TEMPLATE, ErcPromptConfig, erc_messages
from bioserc.schema import Conversation


logger = logging.getLogger(__name__)

CHAT_TEMPLATES = ("auto", "chatml")  # auto: the tokenizer's own template; chatml: CHATML_TEMPLATE (no new tokens)
_PROBE = [{"role": "system", "content": "Context."}, {"role": "user", "content": "Which emotion?"}]


def apply_template_choice(tokenizer: Any, chat_template: str) -> None:
    """Give `tokenizer` the chat template training asked for; save the tokenizer with the artifact afterwards."""
    if chat_template not in CHAT_TEMPLATES:
        raise ValueError(f"chat_template {chat_template!r} is not one of {CHAT_TEMPLATES}")
    if chat_template == "chatml":
        tokenizer.chat_template = CHATML_TEMPLATE
    elif not tokenizer.chat_template:
        raise ValueError(
            "the tokenizer has no chat template (a base model such as Llama-2?): set chat_template: "
            "chatml to render the paper's ChatML as plain text"
        )


class ChatEncoder:
    """Prompt and answer token ids for one tokenizer, label list and prompt config.

    Args:
        tokenizer: a HF tokenizer with a chat template (see `apply_template_choice`).
        labels: the label words, in the artifact's label order.
        prompt: window, bio mode and label listing.
        max_length: token budget of prompt + answer; prompts over it lose context lines, farthest first.
    """

    def __init__(self, tokenizer: Any, labels: Sequence[str], prompt: ErcPromptConfig, max_length: int = 0):
        if not tokenizer.chat_template:
            raise ValueError("the tokenizer has no chat template; train with chat_template: chatml")
        self.tokenizer, self.labels, self.prompt, self.max_length = tokenizer, list(labels), prompt, max_length
        self.end_of_turn = self._end_of_turn()
        self.answers = [self._answer_ids(label) for label in self.labels]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if pad is None else pad
        eot_ids = self.encode(self.end_of_turn)
        # generation stops at the end-of-turn token when it is a single one (ChatML's <|im_end|>), else at EOS
        self.stop_ids = sorted({eot_ids[0]} if len(eot_ids) == 1 else set()) or (
            [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _end_of_turn(self) -> str:
        """What the template writes after an assistant message, trailing whitespace stripped (EOS if nothing)."""
        prompt = self.render(_PROBE, True)
        full = self.render([*_PROBE, {"role": "assistant", "content": "LABEL"}], False)
        if not full.startswith(prompt + "LABEL"):
            raise ValueError(
                "the chat template does not render an assistant answer right after its generation "
                f"prompt ({full[len(prompt) - 20 :]!r}); use chat_template: chatml"
            )
        return full[len(prompt) + len("LABEL") :].rstrip() or (self.tokenizer.eos_token or "")

    def _answer_ids(self, label: str) -> list[int]:
        prompt = self.render(_PROBE, True)
        head, full = self.encode(prompt), self.encode(prompt + label + self.end_of_turn)
        if full[: len(head)] != head:
            raise ValueError(
                f"label {label!r} merges with the generation prompt's last token under this tokenizer; "
                "prompt and answer cannot be split into tokens cleanly"
            )
        return full[len(head) :]

    def prompt_ids(self, conv: Conversation, i: int, bio: str | None = None) -> list[int]:
        """Generation-prompt ids of utterance position i; over the budget, the window shrinks until it fits."""
        budget = self.max_length - max(map(len, self.answers)) if self.max_length else 0
        window = self.prompt.window
        while True:
            ids = self.encode(self.render(erc_messages(conv, i, self.labels, self.prompt, bio, window=window), True))
            if not budget or len(ids) <= budget or window == 0:
                return ids
            window -= 1

    def train_features(self, conv: Conversation, i: int, bio: str | None = None) -> dict[str, list[int]] | None:
        """input_ids / attention_mask / labels of one sample, loss on the answer only; None if the gold label is
        missing or the sample cannot fit max_length."""
        label = conv.utterances[i].label
        if label is None:
            return None
        if label not in self.labels:
            raise ValueError(
                f"conversation {conv.id} utterance {conv.utterances[i].index}: label {label!r} is not "
                f"one of {self.labels}"
            )
        prompt, answer = self.prompt_ids(conv, i, bio), self.answers[self.labels.index(label)]
        if self.max_length and len(prompt) + len(answer) > self.max_length:
            return None
        return {
            "input_ids": prompt + answer,
            "attention_mask": [1] * (len(prompt) + len(answer)),
            "labels": [IGNORE] * len(prompt) + answer,
        }


def utterance_bio(bios: Mapping[BioKey, str] | None, conv: Conversation, i: int) -> str | None:
    return (bios or {}).get((conv.id, conv.utterances[i].speaker))


def pack(features: Sequence[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Concatenate whole samples (in order) into rows of at most max_length tokens; labels keep their -100s.

    Samples in a row attend to the ones before them, as in the paper's packing; unlike it, no sample is cut in two.
    """
    rows: list[dict[str, list[int]]] = []
    for f in features:
        if rows and len(rows[-1]["input_ids"]) + len(f["input_ids"]) <= max_length:
            for key in ("input_ids", "attention_mask", "labels"):
                rows[-1][key] = rows[-1][key] + f[key]
        else:
            rows.append({key: list(f[key]) for key in ("input_ids", "attention_mask", "labels")})
    return rows
