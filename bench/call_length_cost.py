"""Labelling cost per utterance of long calls (IEMOCAP, ~48 turns) against short ones (MELD, ~9 turns), same model.

    python bench/call_length_cost.py --model iemocap --long ../shared/data/raw/iemocap/iemocap.valid.json \
        --short ../shared/data/raw/meld/meld.valid.json --out docs/bench/call_length_cost.json

One classifier is loaded once; its `predict` then labels every utterance of each file (no bios: the shipped models
read none; gold labels are not read), alternating the two files over --rounds rounds in one process so machine drift
hits both alike. The conversation-level layer attends over a whole call, so its cost per utterance grows with the
call's length; the encoder's does not. The ratio long / short of seconds per utterance is the number issue 31 bounds
(goal: <= 1.5).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import replace

from report_io import emit

from bioserc.artifacts import resolve_model_arg
from bioserc.models.classifier import load_classifier
from bioserc.readers import read_conversations
from bioserc.schema import Conversation


def unlabelled(path: str) -> list[Conversation]:
    """The calls in `path` without their gold labels (the short file's are another label set's)."""
    return [replace(c, utterances=[replace(u, label=None) for u in c.utterances]) for c in read_conversations(path)]


def seconds_per_utterance(model, convs, batch_utterances: int) -> float:
    start = time.perf_counter()
    preds = model.predict(convs, {}, batch_size=len(convs), max_utterances=batch_utterances)
    wall = time.perf_counter() - start
    assert len(preds) == sum(len(c.utterances) for c in convs)
    return wall / len(preds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="iemocap", help="a shipped model's name or an artifact folder")
    p.add_argument("--long", default="../shared/data/raw/iemocap/iemocap.valid.json", help="long calls")
    p.add_argument("--short", default="../shared/data/raw/meld/meld.valid.json", help="short calls")
    p.add_argument("--batch-utterances", type=int, default=256, help="utterances per forward pass (label's default)")
    p.add_argument("--threads", type=int, default=0, help="runtime CPU threads (0: automatic)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args()

    model = load_classifier(resolve_model_arg(args.model), threads=args.threads or None)
    data = {"long": unlabelled(args.long), "short": unlabelled(args.short)}
    seconds: dict[str, list[float]] = {name: [] for name in data}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for name, convs in data.items():
            seconds[name].append(seconds_per_utterance(model, convs, args.batch_utterances))
    median = {name: statistics.median(v) for name, v in seconds.items()}
    rows = []
    for name, convs in data.items():
        n = sum(len(c.utterances) for c in convs)
        rows.append(
            {
                "calls": name,
                "file": getattr(args, name),
                "conversations": len(convs),
                "utterances": n,
                "mean_turns": round(n / len(convs), 1),
                "ms_per_utterance": [round(1000 * s, 3) for s in seconds[name]],
                "median_ms_per_utterance": round(1000 * median[name], 3),
                "utterances_per_s": round(1 / median[name], 1),
            }
        )
    report = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "model": args.model,
        "rounds": args.rounds,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "rows": rows,
        "long_over_short": round(median["long"] / median["short"], 3),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
