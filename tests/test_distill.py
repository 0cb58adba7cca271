"""Distillation from trained classifiers (`teachers`): the cached teacher probabilities and the soft-target loss, on
the tiny random encoder and generated corpus of test_bert_classifier.

    .venv/bin/python -m pytest -q tests/test_distill.py
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from test_bert_classifier import MELD, corpus, make_corpus, train_config, write_jsonl  # noqa: F401 (corpus: a fixture)

from bioserc.models import BiosercBert
from bioserc.models.classifier import load_classifier
from bioserc.models.collate import Collator
from bioserc.readers import read_conversations
from bioserc.schema import Conversation, Utterance
from bioserc.training import distill
from bioserc.training.distill import (
    STATES_FILE,
    TEACHER_FILE,
    distill_loss,
    hidden_loss,
    pooled_utterances,
    read_states,
    unlabelled_conversations,
)
from bioserc.training.train_bert import train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teachers(corpus, tmp_path_factory) -> list[str]:  # noqa: F811
    root = tmp_path_factory.mktemp("teachers")
    return [
        train(train_config(corpus, root / f"t{seed}", bio_mode="none", max_steps=3, eval_every=3, seed=seed))[
            "best_dir"
        ]
        for seed in (1, 2)
    ]


def test_the_student_learns_from_the_teachers_mean_and_resumes_and_seeds_reuse_it(
    corpus,  # noqa: F811
    teachers,
    tmp_path,
    monkeypatch,
):
    stopped = train(train_config(corpus, tmp_path, bio_mode="none", max_steps=2, eval_every=1, teachers=teachers))
    with gzip.open(tmp_path / TEACHER_FILE, "rt") as fh:
        header, *rows = map(json.loads, fh)
    assert header == {"teachers": teachers, "train_data": [corpus["train"]], "labels": list(MELD)}
    train_convs = read_conversations(corpus["train"])
    members = [
        {(p.conversation_id, p.index): p.probs for p in load_classifier(t).predict(train_convs)} for t in teachers
    ]
    assert {(r["conversation_id"], r["index"]) for r in rows} == set(members[0])
    for r in rows:
        key = (r["conversation_id"], r["index"])
        mean = [(a + b) / 2 for a, b in zip(*(m[key] for m in members), strict=True)]
        assert r["probs"] == pytest.approx(mean, abs=1e-6)
    assert stopped["steps"] == 2

    def relabel(*_):
        raise AssertionError("a resumed run labelled the train data again instead of reading its cache")

    monkeypatch.setattr(distill, "member_probs", relabel)
    resumed = train(
        train_config(corpus, tmp_path, bio_mode="none", max_steps=4, eval_every=1, teachers=teachers, resume=True)
    )
    assert resumed["steps"] == 4
    other_seed = train(
        train_config(
            corpus,
            tmp_path / "seed-2",
            bio_mode="none",
            max_steps=1,
            eval_every=1,
            seed=2,
            teachers=teachers,
            teacher_cache=str(tmp_path / TEACHER_FILE),
        )
    )
    assert other_seed["steps"] == 1 and not (tmp_path / "seed-2" / TEACHER_FILE).exists()


def test_soft_loss_is_weighted_cross_entropy_skips_padding_and_weights_unlabelled_rows_by_the_teachers_top_class():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, -100, 1, 2])
    one_hot = torch.nn.functional.one_hot(labels.clamp(min=0), 3).float()
    one_hot[2] = 0.0  # padding: no gold label and no teacher target
    weight = torch.tensor([0.5, 1.0, 2.0])
    hard = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=-100)(logits, labels)
    assert distill_loss(logits, one_hot, labels, -100, weight) == pytest.approx(hard.item(), rel=1e-6)
    soft = torch.softmax(torch.randn(5, 3), -1)
    soft[1] = 0.0
    kept = [0, 2, 3, 4]
    per_row = -(soft[kept] * logits[kept].log_softmax(-1)).sum(-1)
    assert distill_loss(logits, soft, labels, -100) == pytest.approx(per_row.mean().item(), rel=1e-6)
    w = weight[torch.tensor([0, soft[2].argmax().item(), 1, 2])]  # row 2 has no gold label: its teacher's top class
    weighted = (w * per_row).sum() / w.sum()
    assert distill_loss(logits, soft, labels, -100, weight) == pytest.approx(weighted.item(), rel=1e-6)


def test_unlabelled_conversations_lose_their_labels_get_their_own_ids_and_leave_out_the_dev_text(tmp_path):
    dev = [Conversation("d0", [Utterance(0, "A", "Oh my God, I can't believe it!", label="surprise")])]
    kept = Conversation("0", [Utterance(0, "A", "I can't believe it", label="Joyful"), Utterance(1, "B", "ok")])
    shares = Conversation("1", [Utterance(0, "A", "no"), Utterance(1, "B", "oh my god... i CAN'T believe it")])
    first = write_jsonl(tmp_path / "a.jsonl", [kept.to_dict(), shares.to_dict()])
    second = write_jsonl(tmp_path / "b.jsonl", [kept.to_dict()])
    out = unlabelled_conversations([first, second], dev)
    assert [c.id for c in out] == ["unlabelled0/0", "unlabelled1/0"]  # "1" shares a 7-word utterance with dev
    assert [u.text for u in out[0].utterances] == ["I can't believe it", "ok"]  # 4 words in common: kept
    assert all(u.label is None for c in out for u in c.utterances)


def test_the_student_learns_the_teachers_probabilities_on_unlabelled_data(corpus, teachers, tmp_path):  # noqa: F811
    other = make_corpus(n=4, seed=7)  # ids conv0..conv3, as in the train data
    for c in other:
        for u in c.utterances:
            u.label = "Joyful"  # another corpus's labels: ignored
    unlabelled = write_jsonl(tmp_path / "other.jsonl", (c.to_dict() for c in other))
    config = dict(bio_mode="none", epochs=1, teachers=teachers, unlabelled_data=[unlabelled])
    report = train(train_config(corpus, tmp_path / "s", **config))
    assert report["steps"] == (14 + 4) // 2  # 14 train + 4 unlabelled conversations, 2 a batch
    with gzip.open(tmp_path / "s" / TEACHER_FILE, "rt") as fh:
        header, *rows = map(json.loads, fh)
    assert header["train_data"] == [corpus["train"], unlabelled]
    ids = {r["conversation_id"] for r in rows}
    assert {f"unlabelled0/{c.id}" for c in other} <= ids and {c.id for c in other} <= ids  # apart from the train ids
    assert len(rows) == sum(len(c.utterances) for c in corpus["convs"][:14] + other)
    with pytest.raises(ValueError, match="set teachers"):
        train_config(corpus, tmp_path / "t", bio_mode="none", unlabelled_data=[unlabelled])
    with pytest.raises(ValueError, match="bio_mode none"):
        train_config(corpus, tmp_path / "t", bio_mode="mlp", teachers=teachers, unlabelled_data=[unlabelled])


def test_teachers_must_share_the_labels_and_get_their_profiles_and_the_weight_is_checked(corpus, teachers, tmp_path):  # noqa: F811
    with_bios = train(train_config(corpus, tmp_path / "bios", bio_mode="mlp", max_steps=1, eval_every=1))["best_dir"]
    with pytest.raises(ValueError, match="reads speaker profiles"):
        train(train_config(corpus, tmp_path / "s", bio_mode="none", teachers=[with_bios]), dry_run=True)
    with pytest.raises(ValueError, match="predicts"):  # MELD teachers for an EmoryNLP student
        train(
            train_config(corpus, tmp_path / "s", bio_mode="none", label_set="emorynlp", teachers=teachers),
            dry_run=True,
        )
    with pytest.raises(ValueError, match="distill_weight"):
        train_config(corpus, tmp_path / "s", teachers=teachers, distill_weight=0.0)
    with_its_bios = f"{with_bios}={corpus['train_bios']}"
    report = train(train_config(corpus, tmp_path / "s", bio_mode="none", teachers=[with_its_bios]), dry_run=True)
    assert report["dry_run"]


def test_hidden_loss_is_one_minus_cosine_over_the_utterances_the_teacher_has():
    pooled = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    # conversation "a" has utterances 0 and 5 in slots 0 and 1; "b" has utterance 0 in slot 2 (n_utt = 2)
    ids, indices, positions = ["a", "b"], [[0, 5], [0]], torch.tensor([0, 1, 2])
    same = {("a", 0): np.array([2.0, 0.0]), ("a", 5): np.array([0.0, 1.0]), ("b", 0): np.array([1.0, 1.0])}
    assert hidden_loss(pooled, ids, indices, positions, 2, same).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    opposite = {("a", 0): np.array([-1.0, 0.0]), ("a", 5): np.array([1.0, 0.0])}  # "b" 0 has no state: skipped
    assert hidden_loss(pooled, ids, indices, positions, 2, opposite).item() == pytest.approx((2.0 + 1.0) / 2)
    assert hidden_loss(pooled.requires_grad_(), ids, indices, positions, 2, {}).item() == 0.0


def test_the_student_matches_the_teachers_pooled_states_from_a_cache_the_seeds_share(
    corpus,  # noqa: F811
    teachers,
    tmp_path,
    monkeypatch,
):
    config = dict(bio_mode="none", max_steps=2, eval_every=2, teachers=teachers[:1], distill_hidden_weight=1.0)
    report = train(train_config(corpus, tmp_path / "s", **config))
    assert report["steps"] == 2 and np.isfinite(report["history"][-1]["train_loss"])
    _, cached = read_states(str(tmp_path / "s" / STATES_FILE))
    train_convs = read_conversations(corpus["train"])
    assert set(cached) == {(c.id, u.index) for c in train_convs for u in c.utterances}
    teacher = BiosercBert.from_pretrained(teachers[0]).eval()
    conv = train_convs[3]  # alone in its batch here, with 7 others in the cache's
    batch = Collator(teacher.tokenizer, teacher.config)([conv])
    with torch.no_grad(), pooled_utterances(teacher) as pooled:
        teacher(**batch.inputs)
    expected = pooled[0].numpy()
    np.testing.assert_allclose(np.stack([cached[conv.id, u.index] for u in conv.utterances]), expected, atol=2e-3)

    def encode_again(*_):
        raise AssertionError("a seed given the cache encoded the train data again")

    monkeypatch.setattr(distill, "_pooled_encoder", encode_again)
    shared = dict(
        teacher_states_cache=str(tmp_path / "s" / STATES_FILE), teacher_cache=str(tmp_path / "s" / TEACHER_FILE)
    )
    assert train(train_config(corpus, tmp_path / "seed-2", seed=2, **config, **shared))["steps"] == 2

    narrow = tmp_path / "narrow.npz"  # the same key, but states of another width
    with np.load(tmp_path / "s" / STATES_FILE, allow_pickle=False) as saved:
        np.savez(
            narrow, **{k: saved[k] for k in ("key", "conversation_ids", "indices")}, states=saved["states"][:, :3]
        )
    with pytest.raises(ValueError, match="of the teacher's width"):
        train(train_config(corpus, tmp_path / "seed-3", **config, teacher_states_cache=str(narrow)))
    with pytest.raises(ValueError, match="exactly one teacher"):
        train_config(corpus, tmp_path / "t", **config | {"teachers": teachers})
    with pytest.raises(ValueError, match=">= 0"):
        train_config(corpus, tmp_path / "t", **config | {"distill_hidden_weight": -1.0})
