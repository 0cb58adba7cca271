"""Long calls and big batches: memory follows an utterance budget and a fixed context, never the call length.

Uses the committed default artifact (ONNX MiniLM) for the end-to-end checks.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bioserc.models.collate import length_sorted_batches
from bioserc.models.predict import pieces
from bioserc.schema import Conversation, Utterance


ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "serving_artifacts" / "default"
WORDS = "i am so happy today no this is terrible what why the bill is wrong thank you okay sure".split()


def call(conv_id: str, turns: int, seed: int = 0) -> Conversation:
    rng = random.Random(seed)
    return Conversation(
        conv_id, [Utterance(i, ("AGENT", "CUSTOMER")[i % 2], " ".join(rng.choices(WORDS, k=6))) for i in range(turns)]
    )


def test_batches_close_at_the_utterance_budget():
    convs = [call(f"c{i}", n) for i, n in enumerate([3, 50, 7, 120, 2, 300, 40, 40, 40])]
    batches = length_sorted_batches(convs, batch_size=100, max_utterances=128)
    assert sorted(i for b in batches for i in b) == list(range(len(convs)))
    for b in batches:
        total = sum(len(convs[i].utterances) for i in b)
        assert total <= 128 or len(b) == 1  # only a call longer than the budget has a batch of its own
    assert length_sorted_batches(convs, batch_size=2) == length_sorted_batches(convs, 2, max_utterances=None)


@pytest.mark.parametrize("turns", [1, 256, 257, 1000, 5000])
def test_pieces_cover_every_utterance_once_with_context(turns):
    conv = call("long", turns)
    parts = pieces([conv], max_context=256, overlap=32)
    kept = [p.start + k for p in parts for k in p.keep]
    assert kept == list(range(turns))  # every utterance predicted exactly once, in order
    for p in parts:
        assert len(p.conversation.utterances) <= 256
        size = len(p.conversation.utterances)
        for k in p.keep:  # at least `overlap` turns of context each side, unless the call ends there
            assert k >= min(32, p.start + k) and size - 1 - k >= min(32, turns - 1 - p.start - k)
    if turns <= 256:
        assert len(parts) == 1 and parts[0].conversation is conv


@pytest.fixture(scope="module")
def classifier():
    from bioserc.models.onnx_classifier import OnnxClassifier

    return OnnxClassifier(str(DEFAULT), provider="cpu", threads=1)


@pytest.mark.parametrize("limit,value", [("ENCODE_CHUNK", 4), ("ENCODE_TOKENS", 40)])
def test_chunked_encoding_gives_the_same_predictions(classifier, monkeypatch, limit, value):
    from bioserc.models import onnx_classifier

    convs = [call(f"c{i}", n, seed=i) for i, n in enumerate([5, 17, 9, 30])]
    whole = classifier.predict(convs)
    calls = []
    run = classifier.encoder.run
    monkeypatch.setattr(
        classifier, "encoder", type("Spy", (), {"run": lambda self, o, f: calls.append(f) or run(o, f)})()
    )
    monkeypatch.setattr(onnx_classifier, limit, value)
    chunked = classifier.predict(convs)
    sizes = [f["input_ids"].shape for f in calls]
    assert len(sizes) > 1 and all(
        n <= value if limit == "ENCODE_CHUNK" else n == 1 or n * t <= value for n, t in sizes
    )
    assert [p.label for p in chunked] == [p.label for p in whole]
    assert (
        max(abs(a - b) for p, q in zip(chunked, whole, strict=True) for a, b in zip(p.probs, q.probs, strict=True))
        < 1e-5
    )


def test_a_call_longer_than_the_context_is_labelled_in_order(classifier):
    conv = call("marathon", 700)
    short = call("short", 12, seed=3)
    preds = classifier.predict([conv, short], max_utterances=256)
    assert [(p.conversation_id, p.index) for p in preds] == [("marathon", i) for i in range(700)] + [
        ("short", i) for i in range(12)
    ]
    # a call that fits the context is labelled exactly as on its own, whatever it is batched with
    alone = classifier.predict([short])
    got, want = [x for p in preds[700:] for x in p.probs], [x for p in alone for x in p.probs]
    assert got == pytest.approx(want, abs=1e-5)
