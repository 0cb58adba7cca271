"""How much averaging trained classifiers would gain: the headroom for an ensemble (or its distillation).

    python bench/seed_ensemble.py --data ../shared/data/raw/meld/meld.valid.json \
        --model runs/sweeps/meld_profiles/meld/nobio/seed-1/best \
        --model runs/sweeps/meld_profiles/meld/latent/seed-1/best=data/profiles/meld.valid.latent.jsonl.gz ... \
        --out docs/bench/seed_ensemble.json

Each `--model DIR[=BIOS]` (a training `best` folder or an export, with its own profiles if it reads any) labels --data
once; then every subset of 2 or more models is scored by the mean of their softmax probabilities. The report gives
each model alone, the full ensemble, and the mean and best W-F1 per subset size. The best subset is picked on the
data it is scored on, so it is an optimistic ceiling, not a result.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import numpy as np
from report_io import emit

from bioserc.artifacts import read_manifest
from bioserc.metrics import classification_report
from bioserc.readers import read_conversations
from bioserc.training.distill import check_teachers, member_probs, split_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="labelled conversations (any supported format)")
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="DIR[=BIOS]",
        help="a classifier folder, with `=bios.jsonl` when it reads profiles; repeat for each member",
    )
    p.add_argument("--out", help="write the report here as JSON (and print it)")
    args = p.parse_args()
    convs = read_conversations(args.data)
    keys = [(c.id, u.index) for c in convs for u in c.utterances]
    gold = [u.label for c in convs for u in c.utterances]
    labels = read_manifest(split_spec(args.model[0])[0])["labels"]
    check_teachers(args.model, labels)  # the same labels; a member that reads profiles has them
    members: dict[str, np.ndarray] = {}
    for spec in args.model:
        probs = member_probs(spec, convs, labels)
        members[split_spec(spec)[0]] = np.array([probs[k] for k in keys])

    def wf1(names: tuple[str, ...]) -> float:
        mean = sum(members[n] for n in names) / len(names)
        return classification_report(gold, [labels[i] for i in mean.argmax(1)], labels)["weighted_f1"]

    names = tuple(members)
    by_size = {}
    for k in range(2, len(names) + 1):
        scores = {combo: wf1(combo) for combo in itertools.combinations(names, k)}
        best = max(scores, key=scores.get)
        by_size[k] = {
            "subsets": len(scores),
            "mean_weighted_f1": statistics.mean(scores.values()),
            "best_weighted_f1": scores[best],
            "best_subset": list(best),
        }
    emit(
        {
            "data": args.data,
            "utterances": len(gold),
            "members": {n: wf1((n,)) for n in names},
            "all": wf1(names),
            "by_size": by_size,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
