"""A synthetic call-centre archive of N calls, in the vendor formats the readers support, with some bad files.

    python bench/make_archive.py --data ../shared/data/raw/meld/meld.train.json --calls 1000 --out /tmp/archive-1k

The dialogues of --data (any format `bioserc stats` reads) are cycled in a shuffled order, each copy a new call with
its own id. Every call gets a random format: one file per call for the vendor exports (AWS TCA, Contact Lens, Google
CCAI, Azure, ...), --calls-per-file calls per file for the multi-call ones (calls CSV, canonical and row JSONL, MELD
and EmoryNLP CSV, BiosERC JSON); --gzip of the files are gzipped. Every --bad-every-th file is spoiled in one of three
ways: cut off mid-document, corrupt gzip (its calls are lost, utterance count unknown), or one torn line appended to
a file of utterance rows (its calls stay readable, plus one unreadable utterance). Files go into folders of 1,000.

Prints (and with --manifest writes) what `bioserc label` must account for: the utterances of the readable calls and
the bad records (with the utterances they are known to hold). The writers are the round-trip tests' (tests/).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from transcript_writers import FORMATS, Call, write_rows  # noqa: E402  (tests/ is not a package)

from bioserc.normalize import normalize_text  # noqa: E402
from bioserc.readers import read_conversations  # noqa: E402


PER_CALL = {"aws-tca", "contact-lens", "google-ccai", "google-ccai-api", "aws-transcribe", "azure-stt"}
SPOILS = ("cut", "bad-gzip", "torn-row")
FILES_PER_FOLDER = 1000


@dataclass
class Archive:
    """What was written, and what a reader must find in it."""

    calls: int = 0
    files: int = 0
    utterances: int = 0  # in readable calls
    calls_lost: int = 0  # in spoiled files that cannot be read at all
    bad_records: int = 0
    unreadable_utterances: int = 0  # held by bad records, where the reader can know it
    formats: dict[str, int] = field(default_factory=dict)


def source_calls(path: str, n: int, seed: int, max_turns: int = 0) -> list[Call]:
    """n calls cycled from the corpus in a shuffled order; ids shaped A_B_C (the EmoryNLP writer needs three parts).

    `max_turns` > 0 keeps only the first turns of each dialogue: many calls at little labeling cost, for measuring
    how memory follows the number of calls."""
    rng = random.Random(seed)
    dialogues = [
        [(u.speaker, u.text) for u in c.utterances if normalize_text(u.text)][: max_turns or None]
        for c in read_conversations(path)
    ]
    dialogues = [d for d in dialogues if d]
    order: list[int] = []
    while len(order) < n:
        order += rng.sample(range(len(dialogues)), len(dialogues))
    return [Call(f"call{i:07d}_x_{order[i]}", dialogues[order[i]]) for i in range(n)]


def spoil(files: dict[str, bytes], kind: str, archive: Archive, calls: list[Call]) -> dict[str, bytes]:
    """One file's content spoiled; the archive's expectations follow."""
    archive.bad_records += 1
    if kind == "torn-row":  # the calls as utterance rows, plus a torn row: one utterance known to be lost
        archive.unreadable_utterances += 1
        rows = b"".join(write_rows(calls).values())
        return {f"{calls[0].id}.rows.jsonl": rows + b'{"conversation_id": "torn", "turn_idx": 0, "spea\n'}
    archive.calls_lost += len(calls)
    archive.utterances -= sum(len(c.turns) for c in calls)
    name, data = next(iter(files.items()))
    if kind == "cut":  # a JSON document cut off: nothing in it can be read
        return {name: data[: len(data) // 2]}
    return {name + ".gz": gzip.compress(data)[:-8] + b"\0" * 8}  # the gzip trailer (CRC, size) overwritten


def build(calls: list[Call], out: Path, calls_per_file: int, gzip_share: float, bad_every: int, seed: int) -> Archive:
    rng = random.Random(seed + 1)
    archive = Archive(calls=len(calls))
    pending: dict[int, list[Call]] = {}

    def write(fmt_index: int, group: list[Call]) -> None:
        fmt = FORMATS[fmt_index]
        archive.formats[fmt.reader] = archive.formats.get(fmt.reader, 0) + len(group)
        archive.utterances += sum(len(c.turns) for c in group)
        files = fmt.write(group)
        archive.files += 1
        if bad_every and archive.files % bad_every == 0:
            kind = SPOILS[archive.files // bad_every % len(SPOILS)]
            whole = fmt.reader in PER_CALL or fmt.reader == "bioserc-json"  # one JSON document: a cut spoils it all
            files = spoil(files, kind if whole or kind != "cut" else "bad-gzip", archive, group)
        folder = out / f"part-{archive.files // FILES_PER_FOLDER:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            if rng.random() < gzip_share and not name.endswith(".gz"):
                name, data = name + ".gz", gzip.compress(data, compresslevel=1)
            (folder / name).write_bytes(data)

    for call in calls:
        k = rng.randrange(len(FORMATS))
        if FORMATS[k].reader in PER_CALL:
            write(k, [call])
            continue
        pending.setdefault(k, []).append(call)
        if len(pending[k]) == calls_per_file:
            write(k, pending.pop(k))
    for k, group in sorted(pending.items()):
        write(k, group)
    return archive


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="training corpus to draw dialogues from, e.g. meld.train.json")
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--out", required=True, help="archive folder (must not exist)")
    p.add_argument("--calls-per-file", type=int, default=50, help="calls in each multi-call file")
    p.add_argument("--gzip", type=float, default=0.2, help="share of files gzipped")
    p.add_argument("--bad-every", type=int, default=100, help="spoil every Nth file (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-turns", type=int, default=0, help="keep the first N turns of each dialogue (0: all)")
    p.add_argument("--manifest", help="also write the expected counts here (JSON)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True)
    calls = source_calls(args.data, args.calls, args.seed, args.max_turns)
    archive = build(calls, out, args.calls_per_file, args.gzip, args.bad_every, args.seed)
    text = json.dumps(archive.__dict__, indent=2)
    print(text)
    if args.manifest:
        Path(args.manifest).write_text(text + "\n")


if __name__ == "__main__":
    main()
