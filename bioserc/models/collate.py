"""Conversations + speaker bios -> the tensors `BiosercBert.forward` takes, and length-sorted batching.

Every utterance becomes one encoder sequence: its ±window neighbours as " SPEAKER: text" pieces (past and future),
with the target wrapped in the tokenizer's separator token before and after it, as the paper does. Each piece is
tokenised once per conversation and windows are assembled from token ids, so truncation trims the far context first
and never cuts a target marker (string-level truncation, as in the reference code, can drop the second `</s>`).
Speaker profiles are bio texts (tokenised here, encoded by the model) or, for the scores/latent profiles, vectors
passed as they are. Batches are built as numpy arrays and handed over as torch tensors (training, PyTorch serving)
or as they are (`tensors="np"`: the ONNX runtime, which then never imports torch).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bioserc.bios.profiles import PROFILES, VECTOR_PROFILES
from bioserc.errors import RecordError
from bioserc.jsonio import open_text
from bioserc.schema import Conversation


if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

BioKey = tuple[str, str]  # (conversation_id, speaker)
Bio = str | Sequence[float]  # a bio text, or a scores/latent profile vector
IGNORE = -100  # label of padding and unlabelled utterances; cross-entropy skips it
# The `profile` of the bios.jsonl rows each classifier profile reads: any text profile is a bio text.
ROW_KINDS = {"text": tuple(p for p in PROFILES if p not in VECTOR_PROFILES), **{p: (p,) for p in VECTOR_PROFILES}}


def load_bios(paths: str | Iterable[str], profile: str = "text", dim: int | None = None) -> dict[BioKey, Bio]:
    """`bios.jsonl` rows written by `bioserc bios` (plain or .gz) -> {(conversation_id, speaker): bio}.

    `profile` is the model's: "text" reads the `bio` of text and emotion rows, "scores" / "latent" read each row's
    `vector`, which must hold `dim` finite numbers (None: as many as the first vector read). A row of another profile
    or a vector of another size is a `RecordError` naming the file, line and field (`row_bio`). Failed rows (`error`
    set) belong to the dead-letter output and are skipped.
    """
    if profile not in ROW_KINDS:
        raise ValueError(f"profile must be one of {tuple(ROW_KINDS)}, got {profile!r}")
    bios: dict[BioKey, Bio] = {}
    first = "the model's profile_dim"  # what fixed `dim`, for the error message
    for path in [paths] if isinstance(paths, str) else paths:
        with open_text(path) as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row, where = _bio_row(path, number, line), f"line {number}"
                bio = row_bio(path, where, row, profile, dim, first)
                if bio is None:
                    continue
                key = _bio_key(path, where, row)
                if dim is None and not isinstance(bio, str):
                    dim, first = len(bio), f"the first vector, {path} line {number}"
                bios[key] = bio
    return bios


def row_bio(
    path: str,
    where: str,
    row: dict[str, Any],
    profile: str,
    dim: int | None = None,
    source: str = "the model's profile_dim",
) -> Bio | None:
    """What one bios.jsonl row gives a model of `profile`: its bio text, its vector (of `dim` numbers unless None;
    `source` says where `dim` came from), or None for a failed row. A row of another profile or a bad vector is a
    `RecordError` (the record is `where`): a model silently fed profiles it was not trained on would still predict,
    only worse. Shared by `load_bios` and the labelling pipeline's reading of `--bios`."""
    if (kind := row.get("profile", "text")) not in ROW_KINDS[profile]:
        raise RecordError(
            path,
            where,
            "profile",
            f"{kind!r} rows cannot feed a model of profile {profile} (it reads "
            f"{' or '.join(ROW_KINDS[profile])} rows, from `bioserc bios --profile`)",
        )
    if row.get("error") or (profile == "text" and not row.get("bio")):
        return None  # failed bios belong to the dead-letter output
    if profile == "text":
        return str(row["bio"])
    vector = _vector(path, where, row.get("vector"))
    if dim is not None and len(vector) != dim:
        raise RecordError(path, where, "vector", f"has {len(vector)} entries, expected {dim} ({source})")
    return vector


def _bio_row(path: str, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as err:
        raise RecordError(path, f"line {number}", None, f"not JSON: {err}") from None
    if not isinstance(row, dict):
        raise RecordError(path, f"line {number}", None, f"a bio row is a JSON object, got {type(row).__name__}")
    return row


def _bio_key(path: str, where: str, row: dict[str, Any]) -> BioKey:
    for name in ("conversation_id", "speaker"):
        if name not in row:
            raise RecordError(path, where, name, "missing")
    return str(row["conversation_id"]), str(row["speaker"])


def _vector(path: str, where: str, value: Any) -> list[float]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise RecordError(path, where, "vector", "must be a non-empty list of finite numbers")
    return [float(v) for v in value]


def missing_bios(conversations: Iterable[Conversation], bios: Mapping[BioKey, Bio] | None) -> list[BioKey]:
    """The (conversation, speaker) pairs without a bio: they are encoded as an empty bio (a zero profile vector),
    which users should know."""
    bios = bios or {}
    return [(c.id, s) for c in conversations for s in c.speakers if (c.id, s) not in bios]


def length_sorted_batches(
    conversations: Sequence[Conversation],
    batch_size: int,
    shuffle_seed: int | None = None,
    max_utterances: int | None = None,
) -> list[list[int]]:
    """Index batches of conversations with similar utterance counts, so little padding gets encoded.

    A batch closes at `batch_size` conversations or, when `max_utterances` is set, before its utterance count would
    pass that budget (a conversation longer than the budget gets a batch of its own): memory then follows the work in
    a batch, not the number of calls in it. With a seed, ties are broken at random and the batch order is shuffled;
    the same seed gives the same batches, which is what lets a resumed run rebuild an epoch and skip the batches it
    already trained on.
    """
    order = list(range(len(conversations)))
    rng = random.Random(shuffle_seed)
    if shuffle_seed is not None:
        rng.shuffle(order)
    order.sort(key=lambda i: len(conversations[i].utterances))  # stable: shuffled ties stay shuffled
    batches: list[list[int]] = []
    used = 0
    for i in order:
        n = len(conversations[i].utterances)
        over_budget = max_utterances is not None and used + n > max_utterances
        if not batches or len(batches[-1]) >= batch_size or over_budget:
            batches.append([])
            used = 0
        batches[-1].append(i)
        used += n
    if shuffle_seed is not None:
        rng.shuffle(batches)
    return batches


@dataclass
class Batch:
    """One batch of B conversations padded to L utterances (N real ones) and S speakers."""

    conversation_ids: list[str]
    utterance_indices: list[list[int]]  # Utterance.index of each real position, per conversation
    inputs: dict[str, Any]  # keyword arguments of BiosercBert.forward: torch tensors, or numpy arrays ("np")
    labels: Any  # (B, L) label ids, IGNORE for padding and unlabelled utterances
    bio_missing: list[BioKey]  # speakers of this batch encoded with an empty bio (or a zero profile vector)

    def to(self, device: torch.device | str) -> Batch:
        inputs = {k: v.to(device) for k, v in self.inputs.items()}
        return Batch(self.conversation_ids, self.utterance_indices, inputs, self.labels.to(device), self.bio_missing)


class Collator:
    """Builds `Batch`es for one tokenizer and model config (window, lengths, bio mode, profile, label order), of
    torch tensors (`tensors="pt"`) or numpy arrays ("np")."""

    def __init__(self, tokenizer, config, tensors: str = "pt") -> None:
        if tensors not in ("pt", "np"):
            raise ValueError(f"tensors must be 'pt' or 'np', got {tensors!r}")
        self.tensors = tensors
        self.tokenizer, self.window = tokenizer, config.window
        self.max_length, self.bio_max_length = config.max_length, config.bio_max_length
        self.use_bios = config.bio_mode != "none"
        self.vectors = self.use_bios and config.profile in VECTOR_PROFILES
        self.profile, self.profile_dim = config.profile, config.profile_dim
        self.label_ids = {name: i for i, name in enumerate(config.labels)}
        self.sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if self.sep is None:
            raise ValueError(f"{type(tokenizer).__name__} has neither a sep nor an eos token to mark the target")
        # Where the tokenizer's own special tokens go ([CLS] x [SEP], <s> x </s>, ...), read off one real encoding.
        bare = tokenizer("x", add_special_tokens=False)["input_ids"]
        full = tokenizer("x")["input_ids"]
        start = next(i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare)
        self.prefix, self.suffix = full[:start], full[start + len(bare) :]
        if max(self.max_length, self.bio_max_length) > tokenizer.model_max_length:
            raise ValueError(f"max_length/bio_max_length exceed the encoder's limit of {tokenizer.model_max_length}")
        self.budget = self.max_length - len(self.prefix) - len(self.suffix) - 2  # 2 target markers
        if self.budget < 1:
            raise ValueError(f"max_length {self.max_length} leaves no room for the target utterance")

    def window_ids(self, pieces: list[list[int]], i: int) -> tuple[list[int], int, int]:
        """Token ids of utterance i's window and the [start, end) span of its marked target (markers included)."""
        target = pieces[i][: self.budget]
        left = [t for p in pieces[max(0, i - self.window) : i] for t in p]
        right = [t for p in pieces[i + 1 : i + 1 + self.window] for t in p]
        room = self.budget - len(target)
        # Keep the context nearest the target: split the room evenly and hand what one side cannot use to the other.
        n_left = min(len(left), max(room // 2, room - len(right)))
        n_right = min(len(right), room - n_left)
        left, right = left[len(left) - n_left :], right[:n_right]
        ids = self.prefix + left + [self.sep] + target + [self.sep] + right + self.suffix
        start = len(self.prefix) + len(left)
        return ids, start, start + len(target) + 2

    def __call__(self, conversations: Sequence[Conversation], bios: Mapping[BioKey, Bio] | None = None) -> Batch:
        assert conversations and all(c.utterances for c in conversations), "every conversation needs an utterance"
        n_conv, n_utt = len(conversations), max(len(c.utterances) for c in conversations)
        windows: list[tuple[list[int], int, int]] = []
        positions: list[int] = []
        utt_mask = np.zeros((n_conv, n_utt), dtype=bool)
        utt_speaker = np.zeros((n_conv, n_utt), dtype=np.int64)
        labels = np.full((n_conv, n_utt), IGNORE, dtype=np.int64)
        for b, conv in enumerate(conversations):
            slot = {s: k for k, s in enumerate(conv.speakers)}
            texts = [f" {u.speaker}: {u.text}" for u in conv.utterances]  # leading space: BPE pieces as in the paper
            pieces = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            for i, utt in enumerate(conv.utterances):
                windows.append(self.window_ids(pieces, i))
                positions.append(b * n_utt + i)
                utt_speaker[b, i] = slot[utt.speaker]
                if utt.label is not None:
                    if utt.label not in self.label_ids:
                        raise ValueError(
                            f"conversation {conv.id} utterance {utt.index}: label {utt.label!r} is not "
                            f"one of the model's labels {list(self.label_ids)}"
                        )
                    labels[b, i] = self.label_ids[utt.label]
            utt_mask[b, : len(conv.utterances)] = True

        width = max(len(ids) for ids, _, _ in windows)
        input_ids = np.full((len(windows), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        attention_mask = np.zeros((len(windows), width), dtype=np.int64)
        target_mask = np.zeros((len(windows), width), dtype=np.float32)
        for n, (ids, start, end) in enumerate(windows):
            input_ids[n, : len(ids)] = ids
            attention_mask[n, : len(ids)] = 1
            target_mask[n, start:end] = 1.0
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "target_mask": target_mask,
            "utt_position": np.asarray(positions, dtype=np.int64),
            "utt_mask": utt_mask,
            "utt_speaker": utt_speaker,
        }
        missing: list[BioKey] = []
        if self.vectors:
            inputs.update(self.profile_inputs(conversations, bios or {}, missing))
        elif self.use_bios:
            inputs.update(self.bio_inputs(conversations, bios or {}, missing))
        if self.tensors == "pt":
            import torch

            inputs, labels = {k: torch.from_numpy(v) for k, v in inputs.items()}, torch.from_numpy(labels)
        return Batch(
            [c.id for c in conversations],
            [[u.index for u in c.utterances] for c in conversations],
            inputs,
            labels,
            missing,
        )

    def bio_inputs(
        self, conversations: Sequence[Conversation], bios: Mapping[BioKey, str], missing: list[BioKey]
    ) -> dict[str, np.ndarray]:
        """Each distinct bio text of the batch is tokenised (and later encoded) once; speakers index into them."""
        unique: dict[str, int] = {}
        n_spk = max(len(c.speakers) for c in conversations)
        speaker_bio = np.zeros((len(conversations), n_spk), dtype=np.int64)
        speaker_mask = np.zeros((len(conversations), n_spk), dtype=bool)
        for b, conv in enumerate(conversations):
            for k, speaker in enumerate(conv.speakers):
                text = bios.get((conv.id, speaker))
                if text is None:
                    missing.append((conv.id, speaker))
                    text = ""
                speaker_bio[b, k] = unique.setdefault(text, len(unique))
                speaker_mask[b, k] = True
        enc = self.tokenizer(
            list(unique), padding=True, truncation=True, max_length=self.bio_max_length, return_tensors="np"
        )
        return {
            "bio_input_ids": enc["input_ids"],
            "bio_attention_mask": enc["attention_mask"],
            "speaker_bio": speaker_bio,
            "speaker_mask": speaker_mask,
        }

    def profile_inputs(
        self, conversations: Sequence[Conversation], bios: Mapping[BioKey, Bio], missing: list[BioKey]
    ) -> dict[str, np.ndarray]:
        """Each speaker's profile vector, zeros for a speaker without one (as a missing text bio is encoded empty)."""
        n_spk = max(len(c.speakers) for c in conversations)
        speaker_profile = np.zeros((len(conversations), n_spk, self.profile_dim), dtype=np.float32)
        speaker_mask = np.zeros((len(conversations), n_spk), dtype=bool)
        for b, conv in enumerate(conversations):
            for k, speaker in enumerate(conv.speakers):
                vector = bios.get((conv.id, speaker))
                if vector is None:
                    missing.append((conv.id, speaker))
                elif isinstance(vector, str) or len(vector) != self.profile_dim:
                    got = "a text bio" if isinstance(vector, str) else f"{len(vector)} numbers"
                    raise ValueError(
                        f"conversation {conv.id} speaker {speaker}: the model reads {self.profile} "
                        f"profiles of {self.profile_dim} numbers, got {got}"
                    )
                else:
                    speaker_profile[b, k] = np.asarray(vector, dtype=np.float32)
                speaker_mask[b, k] = True
        return {"speaker_profile": speaker_profile, "speaker_mask": speaker_mask}
