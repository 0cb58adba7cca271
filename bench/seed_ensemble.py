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
from bioserc.models import load_bios
from bioserc.models.classifier import load_classifier
from bioserc.readers import read_conversations
from bioserc.training.evaluate import bio_profile


def probabilities(model_dir: str, bios_path: str | None, convs) -> tuple[list[str], np.ndarray]:
    """(labels, (utterances, labels) softmax) of one model over every utterance of `convs`, in input order."""
    classifier = load_classifier(model_dir, threads=2)
    bios = load_bios([bios_path], *bio_profile(model_dir, read_manifest(model_dir))) if bios_path else None
    preds = classifier.predict(convs, bios)
    return list(classifier.labels), np.array([p.probs for p in preds])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="labelled conversations (any supported format)")
    p.add_argument("--model", action="append", required=True, metavar="DIR[=BIOS]",
                   help="a classifier folder, with `=bios.jsonl` when it reads profiles; repeat for each member")
    p.add_argument("--out", help="write the report here as JSON (and print it)")
    args = p.parse_args()
    convs = read_conversations(args.data)
    gold = [u.label for c in convs for u in c.utterances]
    members: dict[str, np.ndarray] = {}
    labels: list[str] | None = None
    for spec in args.model:
        model_dir, _, bios_path = spec.partition("=")
        model_labels, probs = probabilities(model_dir, bios_path or None, convs)
        if labels is not None and model_labels != labels:
            raise SystemExit(f"{model_dir}: labels {model_labels} differ from the first model's {labels}")
        labels, members[model_dir] = model_labels, probs

    def wf1(names: tuple[str, ...]) -> float:
        mean = sum(members[n] for n in names) / len(names)
        return classification_report(gold, [labels[i] for i in mean.argmax(1)], labels)["weighted_f1"]

    names = tuple(members)
    by_size = {}
    for k in range(2, len(names) + 1):
        scores = {combo: wf1(combo) for combo in itertools.combinations(names, k)}
        best = max(scores, key=scores.get)
        by_size[k] = {"subsets": len(scores), "mean_weighted_f1": statistics.mean(scores.values()),
                      "best_weighted_f1": scores[best], "best_subset": list(best)}
    emit({"data": args.data, "utterances": len(gold),
          "members": {n: wf1((n,)) for n in names}, "all": wf1(names), "by_size": by_size}, args.out)


if __name__ == "__main__":
    main()
