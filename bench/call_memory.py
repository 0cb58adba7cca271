"""Peak memory of `bioserc label` on one very long call, per shipped model (issue 32: under 1 GB per call).

    python bench/call_memory.py --turns 3000 5000 --models default meld-minilm emorynlp iemocap \
        --out docs/bench/call_memory.json [--tree /path/to/another/checkout]

Each case writes one canonical call of N turns (two speakers, 3-30 words a turn from a fixed vocabulary, seeded) and
labels it with the real CLI (`--no-bios`, default threads) in a child process; peak RSS is the child's `ru_maxrss`
(os.wait4). `--tree` runs another checkout's code (PYTHONPATH) with this venv, for a before/after in one run.
Memory is not time: a loaded machine changes the wall, not the peak.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from report_io import emit


WORDS = (
    "please refund my bill now I am really upset this is great thanks you know what happened yesterday the agent "
    "said that your account was charged twice and nobody called me back so I want to cancel"
).split()


def write_call(path: Path, turns: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    utterances = [
        {
            "index": i,
            "speaker": ("AGENT", "CUSTOMER")[i % 2],
            "text": " ".join(rng.choices(WORDS, k=rng.randint(3, 30))),
        }
        for i in range(turns)
    ]
    path.write_text(json.dumps({"schema_version": 1, "id": f"call-{turns}", "utterances": utterances}) + "\n")


SUBPACKAGES = ("training", "export", "pipelines", "serving_artifacts")  # bioserc.* from the repository root


def package_view(tree: str) -> str:
    """A folder to put on PYTHONPATH so that `import bioserc` and all of `bioserc.*` come from checkout `tree`.

    The editable install maps bioserc.pipelines (and training, export, serving_artifacts) to this checkout's
    root folders; with only `tree` on PYTHONPATH those subpackages, and the models shipped in them, would still
    come from here. The view is `bioserc/` of symlinks: tree/bioserc's entries plus the four root folders.
    """
    key = hashlib.sha256(os.path.abspath(tree).encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"bioserc-view-{key}"
    package = root / "bioserc"
    if not package.is_dir():
        package.mkdir(parents=True)
        for entry in Path(tree, "bioserc").iterdir():
            (package / entry.name).symlink_to(entry.resolve())
        for name in SUBPACKAGES:
            if Path(tree, name).is_dir():
                (package / name).symlink_to(Path(tree, name).resolve())
    return str(root)


def run_label(
    tree: str | None, inputs: str, out: Path, model: str, extra: Sequence[str] = ()
) -> tuple[int, float, float]:
    """`bioserc label INPUTS -o OUT --no-bios --model MODEL [EXTRA...]` in a child process (all of `tree`'s code
    and shipped models, `package_view`); returns its exit code, wall seconds and peak RSS in MB (its log: OUT.log)."""
    env = {**os.environ, "PYTHONPATH": package_view(tree)} if tree else dict(os.environ)
    argv = [sys.executable, "-m", "bioserc.cli", "label", os.path.abspath(inputs), "-o", str(out), "--no-bios"]
    argv += ["--report-calls", "0", "--model", model, *extra]
    start = time.perf_counter()
    with open(f"{out}.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=tempfile.gettempdir())
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - start, usage.ru_maxrss / 1024


def label_peak(inputs: Path, out: Path, model: str, tree: str | None) -> dict:
    code, wall, peak = run_label(tree, str(inputs), out, model)
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    return {
        "exit": code,
        "peak_rss_mb": round(peak),
        "wall_s": round(wall, 1),
        "utterances_labeled": run.get("counters", {}).get("utterances_labeled"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, nargs="+", default=[3000, 5000])
    parser.add_argument("--models", nargs="+", default=["default"], help="shipped names or artifact folders")
    parser.add_argument("--tree", help="run this checkout's code instead (e.g. a `git worktree` of the old commit)")
    parser.add_argument("--out", help="write the report here (JSON)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="call-memory-"))
    rows = []
    for turns in args.turns:
        (work / f"in-{turns}").mkdir()
        write_call(work / f"in-{turns}" / "call.jsonl", turns, seed=turns)
        for model in args.models:
            row = {"turns": turns, "model": model, "tree": args.tree or "this checkout"}
            row.update(label_peak(work / f"in-{turns}", work / f"out-{turns}-{Path(model).name}", model, args.tree))
            print(json.dumps(row), flush=True)
            rows.append(row)
    emit({"cases": rows, "loadavg": os.getloadavg()}, args.out)


if __name__ == "__main__":
    main()
