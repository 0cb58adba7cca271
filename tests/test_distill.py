"""Distillation from trained classifiers (`teachers`): the cached teacher probabilities and the soft-target loss, on
the tiny random encoder and generated corpus of test_bert_classifier.

    .venv/bin/python -m pytest -q tests/test_distill.py
"""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from test_bert_classifier import MELD, corpus, train_config  # noqa: F401 (corpus: a fixture)

from bioserc.models.classifier import load_classifier
from bioserc.readers import read_conversations
from bioserc.training import distill
from bioserc.training.distill import TEACHER_FILE, distill_loss
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


def test_soft_loss_is_weighted_cross_entropy_and_skips_unlabelled_rows():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, -100, 1, 2])
    one_hot = torch.nn.functional.one_hot(labels.clamp(min=0), 3).float()
    weight = torch.tensor([0.5, 1.0, 2.0])
    hard = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=-100)(logits, labels)
    assert distill_loss(logits, one_hot, labels, -100, weight) == pytest.approx(hard.item(), rel=1e-6)
    soft = torch.softmax(torch.randn(5, 3), -1)
    unweighted = -(soft[labels != -100] * logits[labels != -100].log_softmax(-1)).sum(-1).mean()
    assert distill_loss(logits, soft, labels, -100) == pytest.approx(unweighted.item(), rel=1e-6)


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
