"""Label sets in the paper's index order, and the paper's speaker display names.

The order matters: BiosERC JSON stores label *indices*, and trained classifiers emit logits in this order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LabelSet:
    name: str
    labels: tuple[str, ...]

    def index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(f"label {label!r} is not in the {self.name} label set {list(self.labels)}") from None

    def name_of(self, idx: int) -> str:
        if not 0 <= idx < len(self.labels):
            raise ValueError(f"label id {idx} is out of range for {self.name} (0..{len(self.labels) - 1})")
        return self.labels[idx]

    def __len__(self) -> int:
        return len(self.labels)


LABEL_SETS: dict[str, LabelSet] = {
    "meld": LabelSet("meld", ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")),
    "emorynlp": LabelSet("emorynlp", ("Joyful", "Mad", "Peaceful", "Neutral", "Sad", "Powerful", "Scared")),
    "iemocap": LabelSet("iemocap", ("happy", "sad", "neutral", "angry", "excited", "frustrated")),
}


def get_label_set(name: str) -> LabelSet:
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(f"unknown label set {name!r}; choose one of {sorted(LABEL_SETS)}") from None


# IEMOCAP has only genders; the paper gives each session's two actors fixed pseudo-names (paper-notes 2.3).
IEMOCAP_NAMES: dict[str, dict[str, str]] = {
    "Ses01": {"F": "MARY", "M": "JAMES"},
    "Ses02": {"F": "PATRICIA", "M": "JOHN"},
    "Ses03": {"F": "JENNIFER", "M": "ROBERT"},
    "Ses04": {"F": "LINDA", "M": "MICHAEL"},
    "Ses05": {"F": "ELIZABETH", "M": "WILLIAM"},
}


def speaker_k(k: int) -> str:
    """MELD/EmoryNLP display name for the speaker whose one-hot index is k."""
    return f"SPEAKER_{k}"
