"""`bioserc label` end to end vs a bare loop over the same model and utterances: how much the pipeline costs.

    python bench/label_bench.py --model serving_artifacts/default --data ../shared/data/raw/meld/meld.valid.json \
        --bios data/bios/meld.valid.bios.jsonl.gz --out docs/bench/label.json

Both sides label every utterance of --data with --model and the precomputed --bios, in alternating rounds in one
process (so machine drift hits both alike):

    bare loop   read the file and the bios, load the classifier, `predict` all conversations (batch_size as the
                pipeline's default); nothing written
    pipeline    `bioserc label DATA -o TMP --model M --bios B` in-process (Beam's direct runner): reading,
                de-duplication, bios, RunInference, JSONL + Parquet + summaries (shards, then assembled), counters

The ratio bare_s / pipeline_s is the pipeline's efficiency (goal: >= 0.8). Both include model loading and reading,
so the difference is what Beam and the outputs add. Labels of both sides are compared (they must be identical).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

from report_io import emit

from bioserc.models import load_bios
from bioserc.models.classifier import load_classifier
from bioserc.pipelines.label_pipeline import main as label_main
from bioserc.readers import read_conversations


def bare_loop(args: argparse.Namespace) -> tuple[float, dict]:
    start = time.perf_counter()
    convs = read_conversations(args.data)
    bios = load_bios([args.bios]) if args.bios else {}
    model = load_classifier(args.model)
    preds = model.predict(convs, bios, batch_size=len(convs), max_utterances=args.batch_utterances)
    return time.perf_counter() - start, {(p.conversation_id, p.index): p.label for p in preds}


def pipeline(args: argparse.Namespace, out: str) -> tuple[float, dict]:
    argv = [
        args.data,
        "-o",
        out,
        "--model",
        args.model,
        "--batch-utterances",
        str(args.batch_utterances),
        "--report-calls",
        "0",
    ]
    argv += ["--bios", args.bios] if args.bios else ["--no-bios"]
    start = time.perf_counter()
    if label_main(argv) != 0:
        raise SystemExit("bioserc label failed")
    wall = time.perf_counter() - start
    with open(os.path.join(out, "utterances.jsonl"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    return wall, {(r["conversation_id"], r["index"]): r["label"] for r in rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="serving_artifacts/default")
    p.add_argument("--data", default="../shared/data/raw/meld/meld.valid.json")
    p.add_argument("--bios", default="data/bios/meld.valid.bios.jsonl.gz", help="'' for none")
    p.add_argument("--batch-utterances", type=int, default=256, help="utterances per forward pass (the label default)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args()

    walls: dict[str, list[float]] = {"bare loop": [], "pipeline": []}
    labels: dict[str, dict] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            wall, labels["bare loop"] = bare_loop(args)
            walls["bare loop"].append(wall)
            wall, labels["pipeline"] = pipeline(args, os.path.join(tmp, f"round{r}"))
            walls["pipeline"].append(wall)
    n = len(labels["bare loop"])
    median = {k: statistics.median(v) for k, v in walls.items()}
    report = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "model": args.model,
        "data": args.data,
        "bios": args.bios,
        "utterances": n,
        "rounds": args.rounds,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "rows": [
            {
                "variant": k,
                "walls_s": [round(x, 2) for x in v],
                "median_s": round(median[k], 2),
                "utterances_per_s": round(n / median[k], 1),
            }
            for k, v in walls.items()
        ],
        "efficiency": round(median["bare loop"] / median["pipeline"], 3),
        "same_labels": labels["bare loop"] == labels["pipeline"],
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
