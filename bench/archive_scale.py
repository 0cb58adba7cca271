"""`bioserc label` on synthetic archives of growing size: peak RSS must stay flat, every utterance accounted for.

    python bench/archive_scale.py --data ../shared/data/raw/meld/meld.train.json --sizes 3000 30000 \
        --out docs/bench/archive_scale.json

An archive of N calls is built from the dialogues of --data (cycled, each copy with a new id) as canonical JSONL files
of --calls-per-file calls each. `bioserc label` (default model, --no-bios, in-process runner) then runs in a child
process, one size at a time; its peak RSS comes from the kernel (os.wait4), its counts from run.json and from the
output files. Goal (issue 13): peak RSS at the largest size <= 1.2x the smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report_io import emit

from bioserc.readers import read_conversations


def build_archive(folder: Path, dialogues: list, calls: int, per_file: int) -> int:
    """Write `calls` conversations into folder/part-*.jsonl; return the number of utterances written."""
    folder.mkdir(parents=True)
    utterances = 0
    for start in range(0, calls, per_file):
        with open(folder / f"part-{start // per_file:05d}.jsonl", "w", encoding="utf-8") as fh:
            for n in range(start, min(calls, start + per_file)):
                conv = dialogues[n % len(dialogues)]
                row = conv.to_dict()
                row["id"] = f"call-{n:07d}"
                for u in row["utterances"]:
                    u.pop("label", None)
                utterances += len(row["utterances"])
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return utterances


def label(archive: Path, out: Path, extra: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bioserc.cli", "label", str(archive), "-o", str(out), "--no-bios",
                             "--report-calls", "0", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    info = json.loads((out / "run.json").read_text())
    with open(out / "utterances.jsonl", "rb") as fh:
        rows = sum(1 for _ in fh)
    return {"exit_code": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 1), "peak_rss_mb":
            round(usage.ru_maxrss / 1024, 1), "rows_written": rows, "counters": info["counters"],
            "problems": info["problems"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/raw/meld/meld.train.json")
    p.add_argument("--sizes", type=int, nargs="+", default=[3000, 30000])
    p.add_argument("--calls-per-file", type=int, default=500)
    p.add_argument("--out", help="also write the JSON report here")
    p.add_argument("label_args", nargs="*", help="extra `bioserc label` flags (after --)")
    args = p.parse_args()
    dialogues = read_conversations(args.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            archive = Path(tmp) / f"archive-{size}"
            utterances = build_archive(archive, dialogues, size, args.calls_per_file)
            result = label(archive, Path(tmp) / f"out-{size}", args.label_args)
            c = result["counters"]
            result.update(calls=size, utterances=utterances,
                          utterances_per_s=round(c["utterances_labeled"] / result["wall_s"], 1),
                          all_accounted=c["utterances_labeled"] == result["rows_written"] == utterances)
            rows.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "counters"}), file=sys.stderr)
    report = {"data": args.data, "cpus": os.cpu_count(), "loadavg_after": os.getloadavg(), "rows": rows,
              "rss_ratio_largest_to_smallest": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3)}
    emit(report, args.out)


if __name__ == "__main__":
    main()
