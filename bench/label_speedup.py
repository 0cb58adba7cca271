"""`bioserc label` of this checkout against another checkout's code, or of one model against another, side by side
in one run (issue 32's speed bar).

    git worktree add /tmp/before <commit>
    python bench/label_speedup.py --before /tmp/before --data ../shared/data/raw/meld/meld.valid.json \
        --model default --rounds 2 --out docs/bench/label_speedup.json
    python bench/label_speedup.py --before-model default --model fast --data ../shared/data/raw/meld/meld.valid.json
    python bench/label_speedup.py --before /tmp/before --data ../shared/data/raw/meld/meld.train.json \
        --utterances 2610 --model default     # the issue's "held-out-size MELD test": its 2,610 utterances
    python bench/label_speedup.py ... --also "--int8 off"   # a third side: this checkout with these options

Both sides run the real CLI (`--no-bios`, default threads and batching) in a child process with this venv, the
"before" side with the other checkout's code first on PYTHONPATH (`--before`) and/or its own model
(`--before-model`), and with `--also ARGS` a third side (this checkout and model, with those `bioserc label`
options), in alternating rounds; reported per side: median wall, utterances/s, peak RSS and speed-up over "before",
and how many rows carry the same label as the "after" side.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import tempfile
from pathlib import Path

from call_memory import run_label
from report_io import emit


def label(tree: str | None, data: str, model: str, out: Path, extra: list[str]) -> tuple[float, float]:
    code, wall, peak = run_label(tree, data, out, model, extra)
    if code != 0:
        raise SystemExit(f"bioserc label failed ({tree or 'this checkout'}): see {out}.log")
    return wall, peak


def held_out_size(data: str, utterances: int, work: Path) -> str:
    """The first dialogues of a BiosERC JSON file that hold `utterances` or more, as a file in `work`: the speed bar
    is set on MELD test's size, which is not shipped, and start-up weighs more in a smaller input."""
    with open(data, encoding="utf-8") as fh:
        dialogues = json.load(fh)
    taken, total = {}, 0
    for key, dialogue in dialogues.items():
        if total >= utterances:
            break
        taken[key], total = dialogue, total + len(dialogue["sentences"])
    if total < utterances:
        raise SystemExit(f"{data}: {total} utterances, fewer than --utterances {utterances}")
    path = work / f"{Path(data).stem}.first-{utterances}.json"  # the reader tells MELD from the name
    path.write_text(json.dumps(taken), encoding="utf-8")
    return str(path)


def labels(out: Path) -> dict[tuple[str, int], str]:
    rows = (json.loads(line) for line in (out / "utterances.jsonl").read_text(encoding="utf-8").split("\n") if line)
    return {(r["conversation_id"], r["index"]): r["label"] for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="the other checkout (e.g. a git worktree of the old commit)")
    parser.add_argument("--before-model", help="the before side's model (default: --model)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--utterances", type=int, help="label only the first dialogues of a BiosERC JSON --data holding this many"
    )
    parser.add_argument("--also", metavar="ARGS", help='a third side: --model with these options (e.g. "--int8 off")')
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="write the report here (JSON)")
    args = parser.parse_args()
    if not (args.before or args.before_model):
        parser.error("give --before (another checkout), --before-model (another model), or both")
    work = Path(tempfile.mkdtemp(prefix="label-speedup-"))
    data = held_out_size(args.data, args.utterances, work) if args.utterances else args.data
    sides = {"before": (args.before, args.before_model or args.model, []), "after": (None, args.model, [])}
    if args.also:
        sides[f"after {args.also}"] = (None, args.model, shlex.split(args.also))
    walls: dict[str, list[float]] = {s: [] for s in sides}
    peaks: dict[str, list[float]] = {s: [] for s in sides}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for i, (side, (tree, model, extra)) in enumerate(sides.items()):
            wall, peak = label(tree, data, model, work / f"side{i}-{r}", extra)
            walls[side].append(wall)
            peaks[side].append(peak)
            print(f"round {r} {side}: {wall:.1f} s, {peak:.0f} MB", flush=True)
    after = labels(work / "side1-0")
    n = len(after)
    same = {}
    for i, side in enumerate(sides):
        other = labels(work / f"side{i}-0")
        same[side] = {
            "same_labels": sum(other.get(k) == v for k, v in after.items()),
            "same_rows": other.keys() == after.keys(),
        }
    report = {
        "model": args.model,
        "data": args.data,
        "first_utterances": args.utterances,
        "before": args.before,
        "before_model": args.before_model or args.model,
        "utterances": n,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "sides": {
            s: {
                "wall_s": walls[s],
                "utterances_per_s": n / statistics.median(walls[s]),
                "peak_rss_mb": max(peaks[s]),
                "speedup": statistics.median(walls["before"]) / statistics.median(walls[s]),
                **same[s],
            }
            for s in sides
        },
        "speedup": statistics.median(walls["before"]) / statistics.median(walls["after"]),
        "same_labels": same["before"]["same_labels"],
        "same_rows": same["before"]["same_rows"],
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
