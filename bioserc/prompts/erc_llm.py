"""Versioned prompts for the LLM-based BiosERC classifier: one chat sample per utterance (paper-notes 5.1).

The wording is the paper's: `spdescV2` with a bio, `default` without one (the "LoRA without bios" ablation). The
system turn holds the task, the target speaker's bio and a ±window of " SPEAKER: text" lines (past *and* future);
the user turn asks for the emotion of the target utterance; the assistant answer is the bare label word.

One deliberate change: the user turn also lists the dataset's labels ("Answer with one of: ..."). The paper's prompt
never did, so its model had to learn the label vocabulary from fine-tuning alone (paper-notes 5.1, 7);
`list_labels=False` restores the paper's prompt. The model's own chat template renders the messages (ChatML for
SmolLM2) and no tokens are added; `CHATML_TEMPLATE` is for base models that ship no template (Llama-2).
Token ids (prompt and answers) are built by `bioserc.models.llm_encoding`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from bioserc.prompts.bio import MAX_LINE_CHARS
from bioserc.schema import Conversation


ERC_PROMPT_VERSION = "erc-llm-v1"
PROMPT_BIO_MODES = ("prompt", "none")  # prompt: the target speaker's bio goes into the system turn; none: no bio

SYSTEM = "### You are an expert at analyzing the emotion of utterances among speakers in a conversation."
SYSTEM_BIO = "\n### Given the characteristic of this speaker, {speaker}: \n{bio}"
SYSTEM_CONTEXT = "\n### Given the following conversation as a context \n{context}"
USER_BIO = (
    "Based on above conversation and characteristic of the speakers, which emotional label of {speaker} "
    'in the utterance "{text}".'
)
USER_NO_BIO = 'Based on above conversation, which emotional label of {speaker} in the utterance "{text}".'
LABEL_LIST = " Answer with one of: {labels}."  # ours: not in the paper's prompt

# The paper's ChatML (trl.setup_chat_format), as plain text: for tokenizers without a chat template. Unlike trl we add
# no special tokens, so on Llama-2 the markers are ordinary text pieces and the embeddings stay untouched.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True, slots=True)
class ErcPromptConfig:
    """What shapes a prompt; saved in every LLM artifact's manifest so inference rebuilds the training prompts."""

    window: int = 5  # ± utterances of context around the target (the paper's --window 5)
    bio_mode: str = "prompt"  # one of PROMPT_BIO_MODES
    list_labels: bool = True  # list the label set in the user turn (the paper did not)

    def __post_init__(self) -> None:
        if self.bio_mode not in PROMPT_BIO_MODES:
            raise ValueError(f"bio_mode {self.bio_mode!r} is not one of {PROMPT_BIO_MODES}")
        if self.window < 0:
            raise ValueError(f"window must be >= 0, got {self.window}")

    def to_dict(self) -> dict:
        return {"version": ERC_PROMPT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> ErcPromptConfig:
        version = data.get("version", ERC_PROMPT_VERSION)
        if version != ERC_PROMPT_VERSION:
            raise ValueError(f"prompt version {version!r} is not {ERC_PROMPT_VERSION!r}, the one this bioserc builds")
        return cls(**{k: v for k, v in data.items() if k != "version"})


def _clip(text: str) -> str:
    return text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS] + " [...]"


def context_lines(conv: Conversation, i: int, window: int) -> list[str]:
    """Utterances i-window .. i+window (the target included) as " SPEAKER: text" lines (leading space: paper)."""
    lo, hi = max(0, i - window), min(len(conv.utterances), i + window + 1)
    return [f" {u.speaker}: {_clip(u.text)}" for u in conv.utterances[lo:hi]]


def erc_messages(
    conv: Conversation,
    i: int,
    labels: Sequence[str],
    config: ErcPromptConfig,
    bio: str | None = None,
    answer: str | None = None,
    window: int | None = None,
) -> list[dict[str, str]]:
    """The chat sample of utterance position i (0-based in `conv.utterances`).

    Args:
        labels: the dataset's label words, listed in the user turn when `config.list_labels`.
        bio: the target speaker's bio; with bio_mode "prompt" a missing bio is rendered empty (as BERT training does).
        answer: the gold label word, appended as the assistant turn (training); None for inference prompts.
        window: overrides `config.window` (used to shrink a prompt that is over the length budget).
    Returns:
        [system, user] or [system, user, assistant] messages.
    """
    target = conv.utterances[i]
    context = "\n".join(context_lines(conv, i, config.window if window is None else window))
    system = SYSTEM
    if config.bio_mode == "prompt":
        system += SYSTEM_BIO.format(speaker=target.speaker, bio=bio or "")
    system += SYSTEM_CONTEXT.format(context=context)
    user = (USER_BIO if config.bio_mode == "prompt" else USER_NO_BIO).format(
        speaker=target.speaker, text=_clip(target.text)
    )
    if config.list_labels:
        user += LABEL_LIST.format(labels=", ".join(labels))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages
