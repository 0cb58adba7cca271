"""`bioserc label` on synthetic archives of growing size, in-process and on a local Dask cluster: wall, utterances/s,
peak RSS of every process, every utterance accounted for; and what the call-centre analytics cost.

    python bench/archive_scale.py --data ../shared/data/raw/meld/meld.train.json --sizes 1000 10000 100000 \
        --runners inprocess dask --workers 2 --out docs/bench/archive_scale.json

For each size an archive is built with bench/make_archive.py (mixed vendor formats, shuffled, some bad files) and
labelled with the default model (`--no-bios`, `--report-calls 0`, `--allow-skips`; extra `bioserc label` flags after
`--`) by a child process:

    inprocess   Beam's in-process runner; the child is the only process
    dask        a fresh cluster per size, started as the README says: `dask scheduler` and `dask worker --nworkers W
                --nthreads 1`, the job given `--runner ...DaskRunner --dask_client_address`

Peak RSS: of the driver from the kernel when it exits (os.wait4; a spawned child's figure cannot be below this
process's own RSS when it spawned it, reported as `bench_rss_mb`, so this process stays light: no model, no Beam);
of the scheduler and the `dask worker` parent (its nannies) from their VmHWM in /proc before they are stopped; of
each worker from its own VmHWM, read on the worker through a client. The bare model loop (load the classifier, read
the first --bare-calls readable calls of the first archive, then time only `predict` on them in batches of
--conversations-per-batch), run in a child process, gives the utterances/s each run's efficiency is measured
against (the runs' walls include start-up, reading and writing). A run is accounted for
when the labelled rows, the rows written and the utterances the archive's readable calls hold are equal, and the
dead letters are the archive's bad records. Goals (issue 15): peak RSS at the largest size <= 1.2x the smallest on
both runners; in-process efficiency >= 0.8 at the largest size.

Analytics (issue 33): after each run, what `bioserc summarize` does (every per-call and archive output recomputed
from utterances.jsonl) runs alone in a child process, timed without its start-up: all the analytics work of a run
done again on one core (summaries, calls table, archive and their writes, plus reading the rows back), an upper bound
of what they add to the label run's wall (`analytics.share_of_label_wall`, goal <= 0.05); its peak RSS must stay flat
from the smallest to the largest size (`analytics_rss_ratio_largest_to_smallest`). A run's analytics are reconciled
when archive.json counts every utterance row written, and the recomputed archive.json is the run's, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from make_archive import build, source_calls
from report_io import emit


DASK = "apache_beam.runners.dask.dask_runner.DaskRunner"


def bare_loop(archive: Path, calls: int, batch: int) -> dict:
    """Run in a child process (`measure_bare_loop`): the model must not load into this one."""
    from bioserc.artifacts import default_model_dir
    from bioserc.models.classifier import load_classifier
    from bioserc.readers import read_items
    from bioserc.schema import Conversation

    model = load_classifier(default_model_dir())
    convs, utterances = [], 0
    for item in read_items(str(archive)):
        if isinstance(item, Conversation):  # gold labels set aside, as the pipeline does
            convs.append(replace(item, utterances=[replace(u, label=None) for u in item.utterances]))
            if len(convs) == calls:
                break
    start = time.perf_counter()  # the model loop alone: loading and reading are not timed
    for i in range(0, len(convs), batch):
        chunk = convs[i : i + batch]
        utterances += len(list(model.predict(chunk, {}, batch_size=len(chunk), max_utterances=256)))
    wall = time.perf_counter() - start
    return {
        "calls": len(convs),
        "utterances": utterances,
        "wall_s": round(wall, 1),
        "utterances_per_s": round(utterances / wall, 1),
        "peak_rss_mb": peak_rss_mb(),
    }


def measure_bare_loop(archive: Path, calls: int, batch: int) -> dict:
    code = (
        f"import json, archive_scale as a; print(json.dumps(a.bare_loop(a.Path({str(archive)!r}), {calls}, {batch})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parent, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.splitlines()[-1])


def peak_rss_mb(pid: int | str = "self", field: str = "VmHWM") -> float:
    """A live process's peak resident set (VmHWM; VmRSS for its current one), in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        line = next(x for x in fh if x.startswith(f"{field}:"))
    return round(int(line.split()[1]) / 1024, 1)


def waited(proc: subprocess.Popen) -> tuple[int, float]:
    """(exit code, peak RSS in MiB) of a child, from the kernel."""
    _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), round(usage.ru_maxrss / 1024, 1)


class Cluster:
    """`dask scheduler` + `dask worker --nworkers W --nthreads 1` on loopback, as child processes."""

    def __init__(self, workers: int, folder: Path):
        self.file = folder / "scheduler.json"
        dask = [sys.executable, "-m", "dask"]
        self.scheduler = subprocess.Popen(
            [
                *dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(self.file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not self.file.exists():
            if self.scheduler.poll() is not None:
                raise SystemExit(f"dask scheduler exited with {self.scheduler.returncode}")
            time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]
        self.workers = subprocess.Popen(
            [*dask, "worker", self.address, "--nworkers", str(workers), "--nthreads", "1", "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from distributed import Client

        self.client = Client(self.address)
        self.client.wait_for_workers(workers, timeout=120)

    def stop(self) -> dict:
        rss = {"workers": sorted(self.client.run(peak_rss_mb).values())}
        self.client.close()
        for proc, name in ((self.workers, "worker_parent"), (self.scheduler, "scheduler")):
            rss[name] = peak_rss_mb(proc.pid)
            proc.send_signal(signal.SIGINT)
            proc.wait()
        return rss


def label(archive: Path, out: Path, extra: list[str]) -> dict:
    floor = peak_rss_mb(field="VmRSS")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bioserc.cli",
            "label",
            str(archive),
            "-o",
            str(out),
            "--no-bios",
            "--report-calls",
            "0",
            "--allow-skips",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    code, rss = waited(proc)
    wall = time.perf_counter() - start
    info = json.loads((out / "run.json").read_text())
    with open(out / "utterances.jsonl", "rb") as fh:
        rows = sum(1 for _ in fh)
    return {
        "exit_code": code,
        "wall_s": round(wall, 1),
        "peak_rss_mb": {"driver": rss},
        "bench_rss_mb": floor,
        "rows_written": rows,
        "counters": info["counters"],
        "dead_letter_rows": info["written"]["dead_letter_rows"],
        "problems": info["problems"],
    }


def timed_recompute(utterances: Path, dest: Path) -> tuple[float, int, float]:
    """What `bioserc summarize` does (`recompute` of `utterances` into `dest`), timed without its start-up, in a child
    process: (wall seconds, exit code, peak RSS in MiB)."""
    code = (
        "import json, time; from bioserc.analytics.thresholds import Thresholds; "
        "from bioserc.pipelines.analytics import recompute; start = time.perf_counter(); "
        f"recompute({str(utterances)!r}, {str(dest)!r}, Thresholds()); "
        "print(json.dumps(time.perf_counter() - start))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wall = float(proc.stdout.read().split()[-1])
    exit_code, rss = waited(proc)
    return wall, exit_code, rss


def summarize(out: Path) -> dict:
    """`timed_recompute` of a run's rows beside its own files: its wall, peak RSS, and whether its archive.json is
    the run's."""
    again = out.parent / "summarized"
    again.mkdir()
    wall, exit_code, rss = timed_recompute(out / "utterances.jsonl", again)
    totals = json.loads((out / "archive.json").read_text())
    return {
        "exit_code": exit_code,
        "summarize_wall_s": round(wall, 3),
        "summarize_peak_rss_mb": rss,
        "archive_utterances": totals["utterances"],
        "flagged_calls": totals["flagged_calls"],
        "same_archive": (again / "archive.json").read_bytes() == (out / "archive.json").read_bytes(),
    }


def run_size(runner: str, archive: Path, out: Path, expected: dict, args: argparse.Namespace) -> dict:
    extra = ["--conversations-per-batch", str(args.conversations_per_batch), *args.label_args]
    if runner == "dask":
        cluster = Cluster(args.workers, out.parent)
        try:
            result = label(archive, out, [*extra, "--runner", DASK, "--dask_client_address", cluster.address])
        finally:
            result_rss = cluster.stop()
        result["peak_rss_mb"].update(result_rss)
        result["workers"] = args.workers
    else:
        result = label(archive, out, extra)
    c = result["counters"]
    result.update(
        runner=runner,
        calls=expected["calls"],
        utterances=expected["utterances"],
        utterances_per_s=round(c["utterances_labeled"] / result["wall_s"], 1),
        all_accounted=(
            c["utterances_labeled"] == result["rows_written"] == expected["utterances"]
            and result["dead_letter_rows"] == expected["bad_records"]
            and c["utterances_unreadable"] == expected["unreadable_utterances"]
            and not result["problems"]
        ),
    )
    analytics = summarize(out)
    analytics["share_of_label_wall"] = round(analytics["summarize_wall_s"] / result["wall_s"], 4)
    analytics["reconciled"] = analytics["archive_utterances"] == result["rows_written"]
    result["analytics"] = analytics
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/raw/meld/meld.train.json", help="corpus the archive is made of")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--runners", nargs="+", choices=["inprocess", "dask"], default=["inprocess", "dask"])
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes (one thread each)")
    p.add_argument("--conversations-per-batch", type=int, default=16)
    p.add_argument("--bare-calls", type=int, default=2000, help="calls the bare model loop labels")
    p.add_argument("--max-turns", type=int, default=0, help="keep the first N turns of each dialogue (0: all)")
    p.add_argument("--tmp", help="where archives and outputs go (default: a temporary folder)")
    p.add_argument("--out", help="also write the JSON report here")
    p.add_argument("label_args", nargs="*", help="extra `bioserc label` flags (after --)")
    args = p.parse_args()
    rows, bare = [], None
    if args.tmp:
        os.makedirs(args.tmp, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for size in args.sizes:
            archive = Path(tmp) / f"archive-{size}"
            calls = source_calls(args.data, size, seed=0, max_turns=args.max_turns)
            expected = build(calls, archive, 50, 0.2, 100, seed=0).__dict__
            if bare is None:
                bare = measure_bare_loop(archive, args.bare_calls, args.conversations_per_batch)
                print(json.dumps({"bare_loop": bare}), file=sys.stderr)
            for runner in args.runners:
                out = Path(tmp) / f"{runner}-{size}" / "out"
                out.parent.mkdir()
                result = run_size(runner, archive, out, expected, args)
                result["efficiency"] = round(result["utterances_per_s"] / bare["utterances_per_s"], 3)
                rows.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "counters"}), file=sys.stderr)
    ratios, analytics_ratios = {}, {}
    for runner in args.runners:
        mine = [r for r in rows if r["runner"] == runner]
        peak = [max(v if isinstance(v, float) else max(v) for v in r["peak_rss_mb"].values()) for r in mine]
        ratios[runner] = round(peak[-1] / peak[0], 3)
        summarize_peak = [r["analytics"]["summarize_peak_rss_mb"] for r in mine]
        analytics_ratios[runner] = round(summarize_peak[-1] / summarize_peak[0], 3)
    report = {
        "data": args.data,
        "cpus": os.cpu_count(),
        "loadavg_after": os.getloadavg(),
        "bare_loop": bare,
        "rows": rows,
        "rss_ratio_largest_to_smallest": ratios,
        "analytics_rss_ratio_largest_to_smallest": analytics_ratios,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
