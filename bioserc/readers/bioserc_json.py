"""BiosERC / per_erc processed JSON: `{conv_id: {"labels": [...], "sentences": [...], "genders": [...]}}`.

Speakers follow the paper exactly: MELD/EmoryNLP genders are one-hot vectors and the speaker is SPEAKER_k for the
hot index k; IEMOCAP genders are "M"/"F" and become the session's pseudo-names (MARY, JAMES, ...). Labels are
indices into the dataset's label set, taken from `dataset` or from the file name (meld.valid.json -> meld).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from bioserc.errors import BadRecord, RecordError
from bioserc.labels import IEMOCAP_NAMES, LABEL_SETS, LabelSet, get_label_set, speaker_k
from bioserc.readers.base import BaseReader, ReadItem, decode_utf8, load_json, register_reader, strip_gz


@register_reader
class BiosercJsonReader(BaseReader):
    name = "bioserc-json"
    priority = 10
    description = "BiosERC/per_erc processed JSON for meld, emorynlp, iemocap"

    @classmethod
    def detect(cls, path: str, head: str) -> bool:
        if not head.lstrip().startswith("{") or strip_gz(path).endswith(".jsonl"):
            return False
        named = os.path.basename(strip_gz(path)).lower().startswith(tuple(LABEL_SETS))
        return named or ('"sentences"' in head and '"labels"' in head)

    def label_set_for(self, path: str) -> LabelSet:
        if self.dataset:
            return get_label_set(self.dataset)
        base = os.path.basename(strip_gz(path)).lower()
        for name in LABEL_SETS:
            if base.startswith(name):
                return LABEL_SETS[name]
        raise RecordError(
            path, "file", None, f"cannot tell the dataset from the file name; pass --dataset {'|'.join(LABEL_SETS)}"
        )

    def parse(self, path: str, data: bytes) -> Iterator[ReadItem]:
        labels = self.label_set_for(path)
        doc = load_json(path, decode_utf8(path, data))
        if not isinstance(doc, dict):
            raise RecordError(path, "file", None, f"top level is a JSON {type(doc).__name__}, expected an object")
        for conv_id, record in doc.items():
            try:
                yield self.conversation(path, conv_id, record, labels)
            except RecordError as err:
                n = len(record.get("sentences") or []) if isinstance(record, dict) else 0
                yield BadRecord.from_error(err, utterances=n)

    def conversation(self, path: str, conv_id: str, record: Any, labels: LabelSet):
        if not isinstance(record, dict):
            raise RecordError(path, conv_id, None, "conversation is not a JSON object", raw=json.dumps(record)[:2000])
        for key in ("sentences", "labels", "genders"):
            if not isinstance(record.get(key), list):
                raise RecordError(path, conv_id, key, "missing or not a list", raw=json.dumps(record)[:2000])
        sentences, label_ids, genders = record["sentences"], record["labels"], record["genders"]
        if not (len(sentences) == len(label_ids) == len(genders)):
            raise RecordError(
                path,
                conv_id,
                "labels",
                f"lengths differ: {len(sentences)} sentences, {len(label_ids)} labels, {len(genders)} genders",
                raw=json.dumps(record)[:2000],
            )
        utterances = []
        for i, (text, label_id, gender) in enumerate(zip(sentences, label_ids, genders, strict=True)):
            speaker = self.speaker_name(path, conv_id, i, gender)
            if not isinstance(label_id, int) or isinstance(label_id, bool):
                raise RecordError(path, conv_id, f"labels[{i}]", f"label id {label_id!r} is not an integer")
            try:
                label = labels.name_of(label_id)
            except ValueError as err:
                raise RecordError(path, conv_id, f"labels[{i}]", str(err)) from None
            utterances.append(self.make_utterance(path, conv_id, i, speaker, text, label=label))
        return self.make_conversation(path, conv_id, utterances, label_set=labels.name, split=_split_of(path))

    def speaker_name(self, path: str, conv_id: str, i: int, gender: Any) -> str:
        if isinstance(gender, list):
            if sorted(gender) != [0] * (len(gender) - 1) + [1]:
                raise RecordError(path, conv_id, f"genders[{i}]", f"not a one-hot vector: {gender}")
            return speaker_k(gender.index(1))
        names = IEMOCAP_NAMES.get(conv_id[:5])
        if names is None or gender not in names:
            raise RecordError(
                path,
                conv_id,
                f"genders[{i}]",
                f"gender {gender!r} in a conversation id without an IEMOCAP session prefix",
            )
        return names[gender]


def _split_of(path: str) -> str | None:
    parts = os.path.basename(strip_gz(path)).split(".")
    return parts[1] if len(parts) >= 3 else None
