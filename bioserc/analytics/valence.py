"""Valence: each emotion label as negative (-1), neutral (0) or positive (+1), and a turn's score in [-1, 1].

The score is the expected valence under the classifier's probabilities, sum over labels of p(label) * v(label), so
it uses the whole distribution, not the argmax alone: a turn the model finds 40% angry, 30% disgusted and 30% neutral
scores -0.7 although "anger" is only a plurality, and one split between joy and anger scores near 0.

    | label set | negative (-1)                 | neutral (0)       | positive (+1)              |
    |-----------|-------------------------------|-------------------|----------------------------|
    | meld      | anger, disgust, fear, sadness | neutral, surprise | joy                        |
    | emorynlp  | Mad, Sad, Scared              | Neutral           | Joyful, Peaceful, Powerful |
    | iemocap   | angry, frustrated, sad        | neutral           | excited, happy             |

Surprise is neutral: on a call it goes both ways ("oh, that was quick" / "you charged me what?"). Rows carry label
names, not the label set, so scores look labels up by name (the sets agree on the one name they share, neutral). A
label outside the three sets (a model trained on labels of its own) counts as neutral: `bioserc label` names such
labels in a warning (`unmapped`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


NEGATIVE, NEUTRAL, POSITIVE = -1, 0, 1

VALENCE: dict[str, dict[str, int]] = {
    "meld": {
        "neutral": NEUTRAL,
        "surprise": NEUTRAL,
        "fear": NEGATIVE,
        "sadness": NEGATIVE,
        "joy": POSITIVE,
        "disgust": NEGATIVE,
        "anger": NEGATIVE,
    },
    "emorynlp": {
        "Joyful": POSITIVE,
        "Mad": NEGATIVE,
        "Peaceful": POSITIVE,
        "Neutral": NEUTRAL,
        "Sad": NEGATIVE,
        "Powerful": POSITIVE,
        "Scared": NEGATIVE,
    },
    "iemocap": {
        "happy": POSITIVE,
        "sad": NEGATIVE,
        "neutral": NEUTRAL,
        "angry": NEGATIVE,
        "excited": POSITIVE,
        "frustrated": NEGATIVE,
    },
}
LABEL_VALENCE: dict[str, int] = {name: v for table in VALENCE.values() for name, v in table.items()}

MICRO = 1_000_000  # probabilities are written with 6 decimals: summed as integers, the score is exact


def valence_of(label: str) -> int:
    """-1, 0 or +1; 0 for a label outside the three label sets."""
    return LABEL_VALENCE.get(label, NEUTRAL)


def unmapped(labels: Iterable[str]) -> list[str]:
    """The labels without a valence of their own (scored as neutral), sorted."""
    return sorted(set(labels) - set(LABEL_VALENCE))


def valence_score(probs: Mapping[str, float]) -> float:
    """sum p(label) * v(label), rounded to 4 decimals and clipped to [-1, 1].

    Summed in integer micro-units, so the result does not depend on the order of `probs` (a row parsed back from
    JSON has its keys sorted): the pipeline and `bioserc summarize` get the same bits.
    """
    total = sum(valence_of(name) * round(p * MICRO) for name, p in probs.items())
    return max(-1.0, min(1.0, round(total / MICRO, 4)))
