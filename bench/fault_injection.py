"""Replay the fault-injection cases of issue 13 (and the usage errors of issue 14) against the real `bioserc` CLI.

    python bench/fault_injection.py --out docs/bench/fault_injection.json

Each case builds its inputs in a temporary folder, runs `bioserc label` (default model, --no-bios) or `evaluate` as
a separate process, and compares what happened with what must happen: exit code, labelled and dead-lettered counts
from run.json, the reason in the dead letter or on stderr, previous outputs untouched, peak RSS of the process
(os.wait4). The table ends with "ok" or what was observed instead; the script exits 1 if any row is not ok.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from report_io import emit


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "transcripts"
MODEL = ROOT / "serving_artifacts" / "default"
WORDS = "i am so happy today no this is terrible what why the bill is wrong thank you okay sure".split()


@dataclass
class Run:
    code: int
    stderr: str
    rss_mb: float
    wall_s: float
    out: Path

    def info(self) -> dict:
        path = self.out / "run.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def dead(self) -> list[dict]:
        path = self.out / "dead_letter.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def bioserc(*argv: str, cwd: Path | None = None) -> Run:
    """Run the CLI in a child process; peak RSS from the kernel's accounting of that child."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bioserc.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=cwd,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    out = Path(argv[argv.index("-o") + 1]) if "-o" in argv else Path("/nonexistent")
    return Run(os.waitstatus_to_exitcode(status), text, usage.ru_maxrss / 1024, time.perf_counter() - start, out)


def label(inputs: list[Path], out: Path, *extra: str) -> Run:
    return bioserc("label", *map(str, inputs), "-o", str(out), "--no-bios", "--report-calls", "0", *extra)


def rows_file(path: Path, conversations: int, turns: int, pad: int = 0, seed: int = 0) -> int:
    """Utterance rows (JSONL, gzip if the name says so); `pad` extra characters of metadata per row. Returns rows."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for c in range(conversations):
            for t in range(turns):
                fh.write(
                    json.dumps(
                        {
                            "conversation_id": f"call-{c}",
                            "turn_idx": t,
                            "speaker": ("AGENT", "CUSTOMER")[t % 2],
                            "text": " ".join(rng.choices(WORDS, k=8)),
                            "note": "x" * pad,
                        }
                    )
                    + "\n"
                )
    return conversations * turns


def canonical_call(path: Path, turns: int, conv_id: str = "long-call") -> None:
    rng = random.Random(turns)
    utts = [
        {"index": i, "speaker": ("AGENT", "CUSTOMER")[i % 2], "text": " ".join(rng.choices(WORDS, k=8))}
        for i in range(turns)
    ]
    path.write_text(json.dumps({"schema_version": 1, "id": conv_id, "utterances": utts}) + "\n")


def expect(ok: bool, observed: str) -> str:
    return "ok" if ok else observed


# -- the cases -----------------------------------------------------------------------------------------------------


def big_gzip(tmp: Path) -> tuple[str, str]:
    n = rows_file(tmp / "in" / "rows.jsonl.gz", 400, 5, pad=9000)  # 2,000 rows, > 16 MiB decompressed
    run = label([tmp / "in"], tmp / "out")
    c = run.info().get("counters", {})
    return (
        f"{n} rows in a .jsonl.gz of >16 MiB: all labelled, exit 0",
        expect(
            run.code == 0 and c.get("utterances_labeled") == n,
            f"exit {run.code}, labelled {c.get('utterances_labeled')}, dead {c.get('utterances_dead_lettered')}",
        ),
    )


def turns_over_cap(tmp: Path) -> tuple[str, str]:
    (tmp / "in").mkdir()
    canonical_call(tmp / "in" / "calls.jsonl", 10_000)
    run = label([tmp / "in"], tmp / "out")
    reasons = [d["reason"] for d in run.dead()]
    return (
        "10,000-turn canonical call: dead-lettered (turn cap), exit 1, RSS < 1.5 GB",
        expect(
            run.code == 1 and any("limit" in r for r in reasons) and run.rss_mb < 1536,
            f"exit {run.code}, reasons {reasons[:1]}, {run.rss_mb:.0f} MB",
        ),
    )


def long_call(tmp: Path) -> tuple[str, str]:
    (tmp / "in").mkdir()
    canonical_call(tmp / "in" / "calls.jsonl", 5_000)
    run = label([tmp / "in"], tmp / "out")
    c = run.info().get("counters", {})
    return (
        f"5,000-turn call: labelled, exit 0, peak RSS <= 1.5 GB (measured {run.rss_mb:.0f} MB)",
        expect(
            run.code == 0 and c.get("utterances_labeled") == 5000 and run.rss_mb <= 1536,
            f"exit {run.code}, labelled {c.get('utterances_labeled')}, {run.rss_mb:.0f} MB",
        ),
    )


def one_file_case(name: str, body: bytes, want: str, description: str) -> Callable[[Path], tuple[str, str]]:
    def case(tmp: Path) -> tuple[str, str]:
        (tmp / "in").mkdir()
        shutil.copy(DEMO / "tca-billing-overcharge-2211.json", tmp / "in")
        (tmp / "in" / name).write_bytes(body)
        run = label([tmp / "in"], tmp / "out")
        reasons = [d["reason"] for d in run.dead()]
        c = run.info().get("counters", {})
        ok = (
            run.code == 1
            and any(want in r for r in reasons)
            and c.get("utterances_labeled") == 12
            and "Traceback" not in run.stderr
        )
        return description, expect(ok, f"exit {run.code}, reasons {reasons[:2]}, stderr {run.stderr[-200:]!r}")

    case.__name__ = f"file_{name}"
    return case


def symlink_loop(tmp: Path) -> tuple[str, str]:
    (tmp / "in").mkdir()
    shutil.copy(DEMO / "tca-billing-overcharge-2211.json", tmp / "in")
    os.symlink(tmp / "in" / "b.json", tmp / "in" / "a.json")
    os.symlink(tmp / "in" / "a.json", tmp / "in" / "b.json")
    runs = [label([tmp / "in"], tmp / "out"), label([tmp / "in"], tmp / "out2", "--skip-existing")]
    ok = all(
        r.code == 1
        and len([d for d in r.dead() if "a.json" in d["path"] or "b.json" in d["path"]]) == 2
        and "Traceback" not in r.stderr
        for r in runs
    )
    return (
        "symlink loop (plain and --skip-existing): 2 dead letters, exit 1, no traceback",
        expect(ok, "; ".join(f"exit {r.code}, dead {[d['reason'][:40] for d in r.dead()]}" for r in runs)),
    )


def gzip_bomb(tmp: Path) -> tuple[str, str]:
    (tmp / "in").mkdir()
    with gzip.open(tmp / "in" / "bomb.jsonl.gz", "wb", compresslevel=9) as fh:
        fh.write(b'{"conversation_id": "b", "speaker": "A", "text": "')
        block = b" " * (1 << 20)
        for _ in range(1200):  # 1.2 GB of spaces
            fh.write(block)
        fh.write(b'"}\n')
    run = label([tmp / "in"], tmp / "out")
    reasons = [d["reason"] for d in run.dead()]
    size = (tmp / "in" / "bomb.jsonl.gz").stat().st_size / 1e6
    return (
        f"gzip bomb ({size:.1f} MB -> 1.26 GB): dead-lettered at the size limit, RSS < 1 GB",
        expect(
            run.code == 1 and any("limit" in r for r in reasons) and run.rss_mb < 1024,
            f"exit {run.code}, reasons {reasons[:1]}, {run.rss_mb:.0f} MB",
        ),
    )


def tampered_artifact(edit: Callable[[dict, Path], None], description: str) -> Callable[[Path], tuple[str, str]]:
    def case(tmp: Path) -> tuple[str, str]:
        model = tmp / "model"
        shutil.copytree(MODEL, model)
        manifest = json.loads((model / "manifest.json").read_text())
        edit(manifest, model)
        (model / "manifest.json").write_text(json.dumps(manifest))
        run = label([DEMO], tmp / "out", "--model", str(model))
        ev = bioserc("evaluate", "--model", str(model), "--data", str(DEMO / "tca-billing-overcharge-2211.json"))
        ok = (
            run.code == 2
            and ev.code == 2
            and "Traceback" not in run.stderr + ev.stderr
            and not (tmp / "out" / "utterances.jsonl").exists()
        )
        return description, expect(ok, f"label exit {run.code}, evaluate exit {ev.code}: {ev.stderr[-160:]!r}")

    case.__name__ = f"artifact_{description.split(':')[0]}"
    return case


def drop_and_tamper(manifest: dict, model: Path) -> None:
    del manifest["files"]["head.onnx"]
    data = bytearray((model / "head.onnx").read_bytes())
    data[-1] ^= 1
    (model / "head.onnx").write_bytes(bytes(data))


def outside_graph(manifest: dict, model: Path) -> None:
    shutil.copy(model / "encoder.onnx", model.parent / "evil.onnx")
    manifest["graphs"]["encoder"] = str(model.parent / "evil.onnx")


def two_writers(tmp: Path) -> tuple[str, str]:
    (tmp / "in").mkdir()
    rows_file(tmp / "in" / "rows.jsonl", 300, 10)
    out = tmp / "out"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bioserc.cli",
            "label",
            str(tmp / "in"),
            "-o",
            str(out),
            "--no-bios",
            "--skip-existing",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    while not (out / ".bioserc.lock").exists() and first.poll() is None:
        time.sleep(0.1)
    second = label([DEMO], out, "--skip-existing")
    code = first.wait()
    rows = (out / "utterances.jsonl").read_text().count("\n") if (out / "utterances.jsonl").exists() else 0
    ok = second.code == 2 and "in use" in second.stderr and code == 0 and rows == 3000
    return (
        "two --skip-existing runs into one -o: the second refused (exit 2), the first's 3,000 rows intact",
        expect(ok, f"second exit {second.code}, first exit {code}, rows {rows}"),
    )


def all_dead_keeps_outputs(tmp: Path) -> tuple[str, str]:
    out = tmp / "out"
    good = label([DEMO], out)
    before = (out / "utterances.jsonl").read_bytes()
    (tmp / "bad").mkdir()
    (tmp / "bad" / "x.json").write_text("{not json")
    run = label([tmp / "bad"], out, "--allow-skips")
    ok = good.code == 0 and run.code == 1 and (out / "utterances.jsonl").read_bytes() == before
    return (
        "a run where every input is dead-lettered: exit 1 (even with --allow-skips), previous outputs kept",
        expect(ok, f"first exit {good.code}, second exit {run.code}"),
    )


def small_ones(tmp: Path) -> tuple[str, str]:
    (tmp / "in").mkdir()
    base = {
        "schema_version": 1,
        "utterances": [
            {"index": 0, "speaker": "A", "text": "hello there"},
            {"index": 1, "speaker": "B", "text": "   "},
            {"index": 2, "speaker": "A", "text": "bye"},
        ],
    }
    nul = {"schema_version": 1, "id": "nul", "utterances": [{"index": 0, "speaker": "A", "text": "a\u0000b"}]}
    dup = {
        "schema_version": 1,
        "id": "dup",
        "utterances": [{"index": 0, "speaker": "A", "text": "one"}, {"index": 0, "speaker": "B", "text": "two"}],
    }
    (tmp / "in" / "calls.jsonl").write_text("\n".join(json.dumps(x) for x in ({**base, "id": "blank"}, nul, dup)))
    run = label([tmp / "in"], tmp / "out")
    c, dead = run.info().get("counters", {}), run.dead()
    ok = (
        run.code == 1
        and c.get("utterances_labeled") == 2
        and sum(d["utterances"] for d in dead) == 4
        and {d["field"] for d in dead} >= {"text"}
    )
    return (
        "whitespace-only turn, NUL in text, duplicate index: dead-lettered (4 utterances), 2 labelled",
        expect(
            ok,
            f"exit {run.code}, labelled {c.get('utterances_labeled')}, "
            f"dead {[(d['field'], d['utterances']) for d in dead]}",
        ),
    )


def usage_errors(tmp: Path) -> tuple[str, str]:
    out = tmp / "out"
    good = label([DEMO], out)
    before = (out / "utterances.jsonl").read_bytes()
    runs = [label([DEMO], out, "--format", "azure"), label([DEMO], out, "--skip-exising")]
    ok = good.code == 0 and all(r.code == 2 for r in runs) and (out / "utterances.jsonl").read_bytes() == before
    return (
        "--format azure (no such format), --skip-exising (typo): exit 2, nothing written",
        expect(ok, f"exits {[r.code for r in runs]}"),
    )


CASES: list[Callable[[Path], tuple[str, str]]] = [
    big_gzip,
    turns_over_cap,
    long_call,
    one_file_case(
        "deep.json",
        b'{"JobStatus": "COMPLETED", "Transcript": ' + b"[" * 100_000,
        "nest",
        "AWS TCA file nested 100,000 deep: one dead letter, exit 1",
    ),
    one_file_case(
        "corrupt.jsonl.gz",
        gzip.compress(b'{"a": 1}\n' * 1000)[:-40] + b"\0" * 40,
        "gzip",
        "corrupt gzip: one dead letter, exit 1",
    ),
    one_file_case(
        "cp1252.json",
        '{"JobStatus": "COMPLETED", "Transcript": [{"Content": "caf\u00e9", "ParticipantRole": "AGENT"}]}'.encode(
            "cp1252"
        ),
        "UTF-8",
        "AWS TCA file in cp1252: one dead letter naming the byte, exit 1",
    ),
    symlink_loop,
    gzip_bomb,
    tampered_artifact(drop_and_tamper, "manifest entry removed + file tampered: label and evaluate exit 2"),
    tampered_artifact(lambda m, _: m.update(files={}), "manifest files {}: label and evaluate exit 2"),
    tampered_artifact(outside_graph, "graphs.encoder outside the folder: label and evaluate exit 2"),
    tampered_artifact(
        lambda m, _: m.update(labels=list(reversed(m["labels"]))),
        "reordered manifest labels: exit 2 before any input is read",
    ),
    two_writers,
    all_dead_keeps_outputs,
    small_ones,
    usage_errors,
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="run the cases whose function name contains this")
    p.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args()
    rows = []
    for case in CASES:
        name = getattr(case, "__name__", "case")
        if args.only and args.only not in name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            expected, observed = case(Path(tmp))
        rows.append({"case": expected, "observed": observed, "wall_s": round(time.perf_counter() - start, 1)})
        print(f"{observed:>4}  {expected}", file=sys.stderr)
    emit({"rows": rows, "all_ok": all(r["observed"] == "ok" for r in rows)}, args.out)
    sys.exit(0 if all(r["observed"] == "ok" for r in rows) else 1)


if __name__ == "__main__":
    main()
