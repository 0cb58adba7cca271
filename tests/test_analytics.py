"""Call-centre analytics in the core (`bioserc.analytics`): the valence of every label set, per-role trends and
escalations on hand-made calls, the calls-table row, and the archive accumulator (partials merged in any order give
the single pass, bit for bit, in bounded memory).

    .venv/bin/python -m pytest -q tests/test_analytics.py
"""

from __future__ import annotations

import json
import random

import pytest

from bioserc.analytics.archive import BINS, NO_ROLE, ArchiveTotals, bin_edges, score_bin
from bioserc.analytics.calls import CALLS_COLUMNS, calls_row, end_weighted, summarise
from bioserc.analytics.thresholds import Thresholds
from bioserc.analytics.valence import VALENCE, unmapped, valence_of, valence_score
from bioserc.labels import LABEL_SETS
from bioserc.schema import ROLES


EXPECTED = {  # the table of the README and of bioserc/analytics/valence.py
    "meld": ({"anger", "disgust", "fear", "sadness"}, {"neutral", "surprise"}, {"joy"}),
    "emorynlp": ({"Mad", "Sad", "Scared"}, {"Neutral"}, {"Joyful", "Peaceful", "Powerful"}),
    "iemocap": ({"angry", "frustrated", "sad"}, {"neutral"}, {"excited", "happy"}),
}


def probs_for(score: float) -> dict[str, float]:
    """MELD probabilities whose valence score is `score` (anger or joy against neutral)."""
    mass = round(abs(score), 6)
    return {"anger" if score < 0 else "joy": mass, "neutral": round(1 - mass, 6)}


def call(conversation_id: str, turns: list[tuple], model_id: str = "m") -> list[dict]:
    """Utterance rows as `bioserc label` writes them; a turn is (speaker, role, score[, start_ms])."""
    rows = []
    for i, (speaker, role, score, *start) in enumerate(turns):
        probs = probs_for(score)
        rows.append(
            {
                "conversation_id": conversation_id,
                "index": i,
                "speaker": speaker,
                "role": role,
                "text": "...",
                "label": max(probs, key=probs.get),
                "probs": probs,
                "start_ms": start[0] if start else None,
                "end_ms": None,
                "model_id": model_id,
                "source_path": f"{conversation_id}.json",
                "source_format": "aws-tca",
                "bio": None,
            }
        )
    return rows


@pytest.mark.parametrize("name", sorted(LABEL_SETS))
def test_every_label_set_maps_each_label_to_the_documented_valence(name):
    negative, neutral, positive = EXPECTED[name]
    assert set(LABEL_SETS[name].labels) == set(VALENCE[name]) == negative | neutral | positive
    for label in LABEL_SETS[name].labels:
        assert valence_of(label) == (-1 if label in negative else 1 if label in positive else 0)
    assert unmapped(LABEL_SETS[name].labels) == []
    uniform = {label: round(1 / len(LABEL_SETS[name]), 6) for label in LABEL_SETS[name].labels}
    assert valence_score(uniform) == pytest.approx((len(positive) - len(negative)) / len(LABEL_SETS[name]), abs=1e-4)


def test_the_score_weighs_every_probability_not_the_argmax():
    probs = {"neutral": 0.35, "anger": 0.33, "disgust": 0.32}  # argmax neutral, but mostly negative
    assert valence_score(probs) == -0.65
    assert valence_score({"joy": 0.5, "anger": 0.5}) == 0.0
    assert valence_score({"Joyful": 1.0}) == 1.0 and valence_score({"frustrated": 1.0}) == -1.0
    assert valence_score({"anger": 0.6, "sadness": 0.400001}) == -1.0  # rounding past 1 is clipped
    mixed = {"sadness": 0.123457, "joy": 0.2, "fear": 0.076543, "neutral": 0.6}
    assert valence_score(mixed) == valence_score(dict(reversed(mixed.items()))) == 0.0  # order never matters


def test_a_label_of_another_label_set_counts_as_neutral_and_is_named():
    assert valence_of("bored") == 0 and valence_score({"bored": 0.5, "joy": 0.5}) == 0.5
    assert unmapped(["joy", "tired", "bored", "Mad"]) == ["bored", "tired"]


def test_negative_runs_and_shifts_of_one_role_with_indices_and_times():
    rows = call(
        "c1",
        [
            ("AGENT", "agent", 0.0, 0),
            ("CUSTOMER", "customer", -0.1, 5000),
            ("AGENT", "agent", 0.0, 9000),
            ("CUSTOMER", "customer", -0.7, 12000),
            ("AGENT", "agent", -0.75, 15000),
            ("CUSTOMER", "customer", -0.8, 21000),
            ("AGENT", "agent", 0.1, 25000),
            ("CUSTOMER", "customer", 0.6, 61000),
            ("AGENT", "agent", 0.1, 65000),
            ("CUSTOMER", "customer", -0.6, 72000),
        ],
    )
    a = summarise(rows)["analytics"]
    customer = next(g for g in a["roles"] if g["group"] == "customer")
    run, shift = customer["escalations"]
    assert run == {
        "kind": "negative_run",
        "group": "customer",
        "first": 3,
        "last": 5,
        "indices": [3, 5],
        "start_ms": 12000,
        "end_ms": 21000,
        "score": -0.8,
    }
    assert shift == {
        "kind": "shift",
        "group": "customer",
        "first": 7,
        "last": 9,
        "indices": [7, 9],
        "start_ms": 61000,
        "end_ms": 72000,
        "from": 0.6,
        "score": -0.6,
    }
    agent = next(g for g in a["roles"] if g["group"] == "agent")
    assert agent["escalations"] == []  # one negative turn is no run, a drop of 0.75 no shift; nor do agent turns
    # break the customer's run
    assert a["escalations"] == 2 and a["flagged"]
    assert a["reasons"] == [
        "customer: 2 negative turns in a row (turns 3-5, at 0:12)",
        "customer: fell from +0.60 to -0.60 (turns 7-9, at 1:01)",
    ]
    assert a["lowest"] == {"group": "customer", "index": 5, "score": -0.8, "start_ms": 21000}
    assert a["duration_ms"] == 72000
    strict = summarise(rows, Thresholds(min_negative_run=3, shift_delta=1.5))["analytics"]
    assert strict["escalations"] == 0 and strict["reasons"] == [] and not strict["flagged"]
    loose = summarise(rows, Thresholds(negative=0.05))["analytics"]  # -0.1 counts now: a run of three
    assert [e["indices"] for g in loose["roles"] for e in g["escalations"] if e["kind"] == "negative_run"] == [
        [1, 3, 5]
    ]


def test_trend_end_weighted_score_lowest_point_and_dominant_emotion():
    scores = [0.9, 0.3, 0.0, -0.3, -0.6, -0.9]
    rows = call("c2", [("CUSTOMER", "customer", s) for s in scores])
    g = summarise(rows, Thresholds(end_weight=2.0))["analytics"]["roles"][0]
    weights = [1, 1.2, 1.4, 1.6, 1.8, 2.0]
    assert (g["start"], g["end"], g["mean"]) == (0.6, -0.75, -0.1)
    assert g["score"] == round(sum(w * s for w, s in zip(weights, scores, strict=True)) / sum(weights), 4)
    assert end_weighted(scores, 1.0) == g["mean"]  # weight 1: the plain mean
    assert g["lowest"] == {"index": 5, "score": -0.9, "start_ms": None}
    assert g["dominant_emotion"] == "neutral"  # three neutral (|score| < 0.5), two angry, one joyful turn
    a = summarise(rows)["analytics"]
    assert a["call_score"] == g["score"] and a["scored_group"] == "customer"
    assert [e["kind"] for e in g["escalations"]] == ["negative_run"]  # -0.6, -0.9; -0.3 -> -0.6 is no shift
    assert a["escalations"] == 1 and a["reasons"] == ["customer: 2 negative turns in a row (turns 4-5)"]


def test_without_roles_each_speaker_is_a_group_and_every_turn_scores_the_call():
    rows = call("c3", [("Ross", None, -0.8), ("Rachel", None, 0.5), ("Ross", None, -0.9), ("Rachel", None, 0.7)])
    s = summarise(rows)
    a = s["analytics"]
    assert [(g["group"], g["role"], g["speakers"]) for g in a["roles"]] == [
        ("Ross", None, ["Ross"]),
        ("Rachel", None, ["Rachel"]),
    ]
    assert a["scored_group"] == "all" and a["call_score"] == end_weighted([-0.8, 0.5, -0.9, 0.7], 2.0)
    assert [e["group"] for g in a["roles"] for e in g["escalations"]] == ["Ross"]
    assert [v for info in s["speakers"] for v in info["valence"]] == [[0, -0.8], [2, -0.9], [1, 0.5], [3, 0.7]]


def test_a_transfer_keeps_one_agent_group_with_both_agents():
    rows = call("c4", [("AGENT", "agent", 0.0), ("CUSTOMER", "customer", -0.2), ("AGENT_2", "agent", 0.1)])
    groups = summarise(rows)["analytics"]["roles"]
    assert [(g["group"], g["speakers"], g["utterances"]) for g in groups] == [
        ("agent", ["AGENT", "AGENT_2"], 2),
        ("customer", ["CUSTOMER"], 1),
    ]


def test_the_calls_row_has_every_column_in_order():
    rows = call(
        "c5", [("AGENT", "agent", 0.2, 0), ("CUSTOMER", "customer", -0.9, 3000), ("CUSTOMER", "customer", -0.8, 7000)]
    )
    row = calls_row(summarise(rows))
    assert list(row) == [name for name, _ in CALLS_COLUMNS]
    assert (row["schema_version"], row["conversation_id"], row["utterances"], row["flagged"]) == (1, "c5", 3, 1)
    assert (row["negative_runs"], row["first_escalation_index"], row["first_escalation_ms"]) == (1, 1, 3000)
    assert (row["customer_utterances"], row["customer_lowest"], row["agent_score"]) == (2, -0.9, 0.2)
    assert row["reasons"].startswith("call score -0.8") and row["source_format"] == "aws-tca"
    kinds = {"int": int, "float": float, "string": str}
    assert all(row[name] is None or isinstance(row[name], kinds[kind]) for name, kind in CALLS_COLUMNS)
    no_roles = calls_row(summarise(call("c6", [("A", None, 0.1)])))
    assert no_roles["customer_score"] is None and no_roles["agent_utterances"] is None


def random_archive(n: int, seed: int = 0) -> list[dict]:
    """`n` summaries of random calls: roles known or not, 1-30 turns, scores across [-1, 1]."""
    rng = random.Random(seed)
    out = []
    for c in range(n):
        named = rng.random() < 0.8
        turns = [
            (("AGENT", "agent") if i % 2 == 0 else ("CUSTOMER", "customer"))
            if named
            else (rng.choice(["Ross", "Monica"]), None)
            for i in range(rng.randint(1, 30))
        ]
        out.append(
            summarise(
                call(
                    f"call-{c:04d}", [(s, r, round(rng.uniform(-1, 1), 4), 1000 * i) for i, (s, r) in enumerate(turns)]
                )
            )
        )
    return out


def single_pass(summaries: list[dict], review_calls: int = 7) -> ArchiveTotals:
    totals = ArchiveTotals(review_calls)
    for s in summaries:
        totals.add(s)
    return totals


def test_partials_merged_in_any_order_equal_the_single_pass_bit_for_bit():
    summaries = random_archive(400)
    expected = json.dumps(single_pass(summaries).extract(Thresholds()), sort_keys=True)
    rng = random.Random(1)
    for _ in range(3):
        shuffled = summaries[:]
        rng.shuffle(shuffled)
        cuts = sorted(rng.sample(range(1, len(shuffled)), 12))
        parts = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
        partials = [ArchiveTotals.from_dict(json.loads(json.dumps(single_pass(p).to_dict()))) for p in parts]
        rng.shuffle(partials)
        merged = ArchiveTotals(7)
        for partial in partials:
            merged.merge(partial)
        assert json.dumps(merged.extract(Thresholds()), sort_keys=True) == expected


def test_the_archive_counts_every_utterance_and_stays_bounded():
    summaries = random_archive(500, seed=2)
    totals = ArchiveTotals(5)
    for s in summaries:
        totals.add(s)
        assert len(totals.review) <= 10  # trimmed in chunks of review_calls: bounded whatever the archive size
    archive = totals.extract(Thresholds())
    assert archive["calls"] == 500 and archive["utterances"] == sum(s["utterances"] for s in summaries)
    assert sum(archive["labels"].values()) == archive["utterances"]
    assert sum(r["utterances"] for r in archive["roles"].values()) == archive["utterances"]
    assert set(archive["roles"]) <= {*ROLES, NO_ROLE}  # speakers without a role never become keys
    assert sum(archive["call_scores"]["histogram"]) == 500 and len(archive["call_scores"]["bin_edges"]) == BINS + 1
    flagged = sorted(
        (s for s in summaries if s["analytics"]["flagged"]),
        key=lambda s: (s["analytics"]["call_score"], -s["analytics"]["escalations"], s["conversation_id"]),
    )
    assert archive["flagged_calls"] == len(flagged)
    assert [r["conversation_id"] for r in archive["review"]] == [s["conversation_id"] for s in flagged[:5]]
    assert [r["rank"] for r in archive["review"]] == [1, 2, 3, 4, 5]
    assert all(r["reasons"] and len(r["reasons"]) <= 6 for r in archive["review"])


def test_histogram_bins_have_exact_edges():
    assert bin_edges()[0] == -1.0 and bin_edges()[10] == 0.0 and bin_edges()[-1] == 1.0
    assert [score_bin(x) for x in (-1.0, -0.9999, -0.7, -0.0001, 0.0, 0.35, 0.9999, 1.0)] == [
        0,
        0,
        3,
        9,
        10,
        13,
        19,
        19,
    ]
