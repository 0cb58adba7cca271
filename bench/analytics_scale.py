"""What the call-centre analytics cost: their share of a label run's wall, and their memory from 1k to 100k calls.

    python bench/analytics_scale.py --data ../shared/data/raw/meld/meld.valid.json --sizes 1000 10000 100000 \
        --out docs/bench/analytics_scale.json

1. Share of the wall: `bioserc label DATA --no-bios` with the default model, then what `bioserc summarize` does on
   its output (`archive_scale.timed_recompute`: every per-call and archive output recomputed from utterances.jsonl,
   timed without the start-up): its wall over the label run's is an upper bound of what the analytics add to a run
   (goal <= 0.05), since the label run does the same work in its emitting step and this also parses every row again.
2. Memory: synthetic utterances.jsonl files of N calls (MELD-length calls, 2-14 turns, agent and customer turns,
   probabilities drawn from a Dirichlet over the MELD labels; no model needed, so 100k calls take minutes, not the
   hours of labelling them) are recomputed the same way; the peak RSS (os.wait4) must stay flat from the smallest to
   the largest N (goal <= 1.2x), and the throughput with it.

Every recompute is checked: archive.json counts every row of utterances.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from archive_scale import timed_recompute, waited
from report_io import emit


MELD = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")


def label_wall(argv: list[str]) -> float:
    """`bioserc label ARGV` in a child process: its wall seconds."""
    start = time.perf_counter()
    exit_code, _ = waited(
        subprocess.Popen(
            [sys.executable, "-m", "bioserc.cli", "label", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    )
    if exit_code != 0:
        raise SystemExit(f"bioserc label {' '.join(argv)} exited {exit_code}")
    return time.perf_counter() - start


def synthetic_rows(calls: int, seed: int):
    rng = random.Random(seed)
    for c in range(calls):
        t = 0
        for i in range(rng.randint(2, 14)):
            weights = [rng.gammavariate(0.3, 1.0) for _ in MELD]
            total = sum(weights)
            probs = {name: round(w / total, 6) for name, w in zip(MELD, weights, strict=True)}
            role = ("customer", "agent")[i % 2]
            duration = rng.randint(800, 9000)
            yield {
                "conversation_id": f"call-{c:07d}",
                "index": i,
                "speaker": role.upper(),
                "role": role,
                "text": "synthetic turn",
                "original_text": "synthetic turn",
                "start_ms": t,
                "end_ms": t + duration,
                "source_path": "synthetic.jsonl",
                "source_format": "jsonl",
                "source_id": None,
                "gold_label": None,
                "label": max(probs, key=probs.get),
                "probs": probs,
                "bio": None,
                "model_id": "synthetic",
            }
            t += duration + rng.randint(100, 1500)


def recompute_checked(folder: Path) -> tuple[float, float, int]:
    """(wall, peak RSS in MiB, rows) of recomputing folder's analytics into folder/again, checked against its rows."""
    again = folder / "again"
    again.mkdir()
    wall, exit_code, rss = timed_recompute(folder / "utterances.jsonl", again)
    with open(folder / "utterances.jsonl", encoding="utf-8") as fh:
        rows = sum(1 for _ in fh)
    archive = json.loads((again / "archive.json").read_text(encoding="utf-8"))
    if exit_code or archive["utterances"] != rows or sum(archive["labels"].values()) != rows:
        raise SystemExit(f"{folder}: exit {exit_code}; archive.json counts {archive['utterances']}, the file {rows}")
    return wall, rss, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/raw/meld/meld.valid.json", help="labelled for the wall share")
    p.add_argument("--model", default=None, help="classifier for the label run (default: the installed default)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="synthetic archive sizes")
    p.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args()

    report: dict = {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "label"
        label = [args.data, "-o", str(out), "--no-bios", "--report-calls", "0"]
        wall_label = label_wall(label + (["--model", args.model] if args.model else []))
        wall, _, rows = recompute_checked(out)
        report["label_run"] = {
            "data": args.data,
            "utterances": rows,
            "label_wall_s": round(wall_label, 2),
            "analytics_wall_s": round(wall, 3),
            "share_of_label_wall": round(wall / wall_label, 4),
        }
        report["synthetic"] = []
        for calls in args.sizes:
            folder = Path(tmp) / f"synthetic-{calls}"
            folder.mkdir()
            with open(folder / "utterances.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in synthetic_rows(calls, calls))
            wall, rss, rows = recompute_checked(folder)
            report["synthetic"].append(
                {
                    "calls": calls,
                    "utterances": rows,
                    "analytics_wall_s": round(wall, 2),
                    "utterances_per_s": round(rows / wall),
                    "peak_rss_mb": rss,
                }
            )
    sizes = report["synthetic"]
    report["rss_ratio_largest_to_smallest"] = round(sizes[-1]["peak_rss_mb"] / sizes[0]["peak_rss_mb"], 3)
    report["loadavg_after"] = os.getloadavg()
    emit(report, args.out)


if __name__ == "__main__":
    main()
