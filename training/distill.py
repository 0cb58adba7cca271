"""Knowledge distillation: the averaged probabilities of trained classifiers as a second target beside the gold label.

An ensemble of classifiers beats its members (`bench/seed_ensemble.py`: +1.1 W-F1 over their mean on MELD valid for
8 models) but labelling with it costs one encoder pass per member. Training one student on the ensemble's averaged
probabilities as well as on the gold labels keeps the single-model cost. The teachers label the train data once,
before training; the result is cached (by default TEACHER_FILE in the run's folder), keyed by the teacher list, the
train data and the label order, so a resumed run, or another seed given the same cache, does not label it again.

`unlabelled_conversations` adds text without gold labels (another corpus of the same domain): on it the student
learns the teachers' probabilities only, which gives a small student more of the teacher to imitate than the labelled
train data alone.

`teacher_states` and `hidden_loss` add DistilBERT's cosine loss for a student of the teacher's family (mpnet's bottom
layers under the default): the student's pooled utterance vector (what its head reads) is pulled towards the
teacher's, which passes on more than 7 probabilities per utterance. The states are cached beside the probabilities.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from bioserc.artifacts import CLASSIFIER_KINDS, read_manifest
from bioserc.models import load_bios
from bioserc.models.classifier import TorchClassifier, load_classifier
from bioserc.models.collate import Collator
from bioserc.readers import read_conversations
from bioserc.schema import Conversation
from bioserc.training.evaluate import bio_profile


logger = logging.getLogger(__name__)

TEACHER_FILE = "teacher_probs.jsonl.gz"
STATES_FILE = "teacher_states.npz"
UtteranceKey = tuple[str, int]  # (conversation_id, Utterance.index)
UNLABELLED_PREFIX = "unlabelled"  # ids of unlabelled conversations: `unlabelled{file}/{id}`, apart from the train ids
OVERLAP_WORDS = 5  # an utterance this long found in the dev data marks its conversation as the dev data's text


def _normalized(text: str) -> str:
    return " ".join(re.sub(r"[^\w']+", " ", text.lower()).split())


def unlabelled_conversations(paths: Sequence[str], dev: Sequence[Conversation]) -> list[Conversation]:
    """The conversations of `paths` (any format `read_conversations` takes) without their labels, ids prefixed so
    they never meet a train id. A conversation that shares an utterance of >= OVERLAP_WORDS words with `dev` is
    left out: the best checkpoint is chosen on dev, so the student must not have learnt the teachers' labels of that
    text (corpora cut from the same show, like MELD and EmoryNLP, share scenes)."""
    dev_texts = {t for c in dev for u in c.utterances if len((t := _normalized(u.text)).split()) >= OVERLAP_WORDS}
    kept: list[Conversation] = []
    for k, path in enumerate(paths):
        conversations = read_conversations([path])
        clean = [c for c in conversations if not any(_normalized(u.text) in dev_texts for u in c.utterances)]
        logger.info(
            "unlabelled data %s: %d conversations, %d left out for sharing an utterance with the dev data",
            path,
            len(conversations),
            len(conversations) - len(clean),
        )
        kept += [
            replace(c, id=f"{UNLABELLED_PREFIX}{k}/{c.id}", utterances=[replace(u, label=None) for u in c.utterances])
            for c in clean
        ]
    return kept


def split_spec(spec: str) -> tuple[str, str | None]:
    """ "DIR" or "DIR=BIOS" (a teacher that reads speaker profiles, with its bios.jsonl for the train data)."""
    model_dir, _, bios = spec.partition("=")
    return model_dir, bios or None


def check_teachers(specs: Sequence[str], labels: Sequence[str]) -> None:
    """Fail before training starts: every teacher is a classifier of the student's labels, and one that reads
    speaker profiles is given them."""
    for spec in specs:
        model_dir, bios = split_spec(spec)
        manifest = read_manifest(model_dir)
        if manifest.get("kind") not in CLASSIFIER_KINDS:
            raise ValueError(
                f"teacher {model_dir}: a {manifest.get('kind')} artifact; teachers are utterance "
                "classifiers (training's best/ folders or their ONNX exports)"
            )
        if set(manifest.get("labels") or ()) != set(labels):
            raise ValueError(f"teacher {model_dir} predicts {manifest.get('labels')}, the student {list(labels)}")
        if bios is None and manifest.get("bio_mode", "none") != "none":
            raise ValueError(
                f"teacher {model_dir} reads speaker profiles: pass it as {model_dir}=BIOS with the "
                "bios.jsonl of the train data"
            )


def member_probs(
    spec: str, conversations: Sequence[Conversation], labels: Sequence[str]
) -> dict[UtteranceKey, list[float]]:
    """One classifier's ("DIR" or "DIR=BIOS", `check_teachers`-checked) probabilities, in `labels` order, for every
    utterance of `conversations`; also what `bench/seed_ensemble.py` averages."""
    model_dir, bios_path = split_spec(spec)
    classifier = load_classifier(model_dir, int8="off")  # the shipped graph: the same targets on every CPU
    order = [list(classifier.labels).index(y) for y in labels]
    bios = load_bios([bios_path], *bio_profile(model_dir, read_manifest(model_dir))) if bios_path else None
    logger.info("teacher %s: labelling %d train conversations", model_dir, len(conversations))
    return {
        (p.conversation_id, p.index): [p.probs[i] for i in order]
        for p in classifier.predict(conversations, bios, progress=True)
    }


def teacher_probs(
    specs: Sequence[str],
    train_data: Sequence[str],
    conversations: Sequence[Conversation],
    labels: Sequence[str],
    cache: str,
) -> dict[UtteranceKey, list[float]]:
    """The teachers' mean probabilities (in `labels` order) for every utterance of `conversations` (read from
    `train_data`): from the `cache` file when the same teachers made it from the same data for the same labels, else
    computed and written there."""
    key = {"teachers": list(specs), "train_data": list(train_data), "labels": list(labels)}
    if os.path.exists(cache):
        with gzip.open(cache, "rt", encoding="utf-8") as fh:
            header, *rows = map(json.loads, fh)
        if header == key:
            return {(r["conversation_id"], r["index"]): r["probs"] for r in rows}
        logger.warning("%s was made by other teachers, data or labels (%s): labelling again", cache, header)
    summed: dict[UtteranceKey, list[float]] = {}
    for spec in specs:
        for k, probs in member_probs(spec, conversations, labels).items():
            summed[k] = [a + b for a, b in zip(summed.get(k, [0.0] * len(probs)), probs, strict=True)]
    mean = {k: [v / len(specs) for v in probs] for k, probs in summed.items()}
    os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
    with gzip.open(f"{cache}.tmp", "wt", encoding="utf-8") as fh:  # renamed into place: never a half-written cache
        fh.write(json.dumps(key) + "\n")
        fh.writelines(json.dumps({"conversation_id": c, "index": i, "probs": p}) + "\n" for (c, i), p in mean.items())
    os.replace(f"{cache}.tmp", cache)
    return mean


def soft_targets(
    conversation_ids: Sequence[str],
    utterance_indices: Sequence[Sequence[int]],
    probs: Mapping[UtteranceKey, Sequence[float]],
    n_utt: int,
    n_labels: int,
) -> torch.Tensor:
    """(B, L, C) teacher probabilities of a collated batch; zeros at padding positions."""
    out = torch.zeros(len(conversation_ids), n_utt, n_labels)
    for b, (conv, indices) in enumerate(zip(conversation_ids, utterance_indices, strict=True)):
        for i, index in enumerate(indices):
            if (conv, index) in probs:
                out[b, i] = torch.tensor(probs[conv, index])
    return out


def distill_loss(
    logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, ignore: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of (N, C) logits against (N, C) soft targets over the rows that have one (all-zero rows are
    padding), each row weighted as the hard loss weights its gold class, or, without a gold label (`ignore`), the
    teachers' top class (a weighted mean)."""
    keep = targets.sum(-1) > 0
    per_row = -(targets[keep] * logits[keep].log_softmax(-1)).sum(-1)
    classes = torch.where(labels != ignore, labels, targets.argmax(-1))[keep]
    w = weight[classes] if weight is not None else torch.ones_like(per_row)
    return (w * per_row).sum() / w.sum().clamp(min=1e-12)


def _pooled_encoder(model_dir: str) -> tuple[Collator, Callable[..., np.ndarray]]:
    """The collator and the (N, T) windows -> (N, H) pooled-state function of a BERT-based classifier folder."""
    classifier = load_classifier(model_dir, int8="off")
    if isinstance(classifier, TorchClassifier):
        model = classifier.model.eval()

        def encode(input_ids: np.ndarray, attention_mask: np.ndarray, pool_mask: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                args = (torch.from_numpy(a).to(model.device) for a in (input_ids, attention_mask, pool_mask))
                return model.encode(*args).float().cpu().numpy()

        return Collator(model.tokenizer, model.config, tensors="np"), encode
    from bioserc.models.onnx_classifier import OnnxClassifier

    if isinstance(classifier, OnnxClassifier):
        return classifier.collator, classifier.encode
    raise ValueError(
        f"teacher {model_dir}: matching pooled states needs a BERT-based classifier (pytorch- or onnx-classifier)"
    )


def position_keys(
    conversation_ids: Sequence[str], utterance_indices: Sequence[Sequence[int]], utt_position, n_utt: int
) -> list[UtteranceKey]:
    """The utterance of each encoded window of a `Collator` batch: window n sits in slot utt_position[n] of the
    (conversations x n_utt) grid."""
    return [(conversation_ids[b], utterance_indices[b][i]) for b, i in (divmod(int(p), n_utt) for p in utt_position)]


def read_states(path: str) -> tuple[str, dict[UtteranceKey, np.ndarray]]:
    """A `teacher_states` cache: the JSON key it was made for, and the state of each utterance."""
    with np.load(path, allow_pickle=False) as saved:
        rows = zip(saved["conversation_ids"].tolist(), saved["indices"].tolist(), saved["states"], strict=True)
        return str(saved["key"]), {(c, i): v for c, i, v in rows}


def teacher_states(
    spec: str, train_data: Sequence[str], conversations: Sequence[Conversation], cache: str, batch_size: int = 8
) -> dict[UtteranceKey, np.ndarray]:
    """The teacher's pooled state (N-dim, float16) of every utterance of `conversations`: from the `cache` .npz when
    the same teacher made it from the same data, else computed (with a progress bar) and written there."""
    from tqdm import tqdm

    key = json.dumps({"teacher": spec, "train_data": list(train_data)})
    if os.path.exists(cache):
        made_by, states = read_states(cache)
        if made_by == key:
            return states
        logger.warning("%s was made by another teacher or data: encoding again", cache)
    collator, encode = _pooled_encoder(split_spec(spec)[0])
    keys: list[UtteranceKey] = []
    states: list[np.ndarray] = []
    for start in tqdm(range(0, len(conversations), batch_size), desc="teacher states", unit="batch", mininterval=10):
        batch = collator(conversations[start : start + batch_size])
        x = batch.inputs
        states.append(encode(x["input_ids"], x["attention_mask"], x["target_mask"]).astype(np.float16))
        keys += position_keys(
            batch.conversation_ids, batch.utterance_indices, x["utt_position"], x["utt_mask"].shape[1]
        )
    stacked = np.concatenate(states)
    os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
    with open(f"{cache}.tmp", "wb") as fh:  # renamed into place: never a half-written cache
        np.savez(
            fh,
            key=np.array(key),
            conversation_ids=np.array([c for c, _ in keys]),
            indices=np.array([i for _, i in keys], dtype=np.int64),
            states=stacked,
        )
    os.replace(f"{cache}.tmp", cache)
    return dict(zip(keys, stacked, strict=True))


@contextmanager
def pooled_utterances(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collects the (N, H) pooled utterance vectors of the `BiosercBert` forwards run inside the block: the input of
    its `utt_proj`, in `utt_position` order."""
    seen: list[torch.Tensor] = []
    handle = model.utt_proj.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def hidden_loss(
    pooled: torch.Tensor,
    conversation_ids: Sequence[str],
    utterance_indices: Sequence[Sequence[int]],
    utt_position: torch.Tensor,
    n_utt: int,
    states: Mapping[UtteranceKey, np.ndarray],
) -> torch.Tensor:
    """Mean (1 - cosine) between the student's (N, H) pooled utterance vectors and the teacher's states of the same
    utterances (rows without one are skipped)."""
    keys = position_keys(conversation_ids, utterance_indices, utt_position, n_utt)
    rows = [n for n, k in enumerate(keys) if k in states]
    if not rows:
        return pooled.sum() * 0.0
    target = torch.from_numpy(np.stack([states[keys[n]] for n in rows]).astype(np.float32)).to(pooled.device)
    return (1 - F.cosine_similarity(pooled[rows], target, dim=-1)).mean()
