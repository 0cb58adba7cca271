"""`bioserc summarize OUT_DIR`: the per-call and archive outputs of a `bioserc label` run again, from its
utterances.jsonl, without relabelling and without the model (new thresholds in seconds).

    bioserc summarize runs/demo
    bioserc summarize runs/demo --negative-threshold 0.4 --min-negative-run 3 --review-calls 50
    bioserc summarize gs://bucket/labels --report-calls 0

Rewrites conversations.jsonl, calls.csv, calls.parquet, archive.json and report.html in OUT_DIR; utterances.jsonl
and .parquet, dead_letter.jsonl and run.json stay as they are. utterances.jsonl is streamed call by call (a call's
rows are contiguous, as `bioserc label` writes them), so memory does not grow with the archive. With the thresholds
of the label run, conversations.jsonl, calls.csv and archive.json come out byte for byte as `bioserc label` wrote them
(the same functions, in the same order). The files are written into a staging folder under the output folder's lock
and renamed over the old ones. Exit codes: 0 done; 2 for a usage error, an OUT_DIR without utterances.jsonl, a line
that is not an utterance row (named by file and line), or an output folder in use by another run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems

from bioserc.analytics.thresholds import add_analytics_args, thresholds_from
from bioserc.pipelines.analytics import Analytics, SummarizeError, recompute
from bioserc.pipelines.io import output_path
from bioserc.pipelines.options import HelpFormatter
from bioserc.pipelines.outputs import (
    ANALYTICS,
    CONVERSATIONS,
    REPORT,
    UTTERANCES,
    OutputError,
    discard,
    output_lock,
    promote,
    remove_leftovers,
    staging_folder,
)
from bioserc.pipelines.report import write_report


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bioserc summarize", description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False
    )
    p.add_argument("output", metavar="OUT_DIR", help="a `bioserc label` output folder (local or gs://)")
    add_analytics_args(p)
    return p


def _previous_run(output: str) -> dict:
    """The label run's run.json (its counters and labels, for the report), or {} where there is none."""
    path = output_path(output, "run.json")
    if not FileSystems.exists(path):
        return {}
    with FileSystems.open(path) as fh:
        return json.loads(fh.read())


def summarize(args: argparse.Namespace) -> Analytics:
    """Recompute into a staging folder, swap the files in, then write the report; SummarizeError, OutputError."""
    utterances = output_path(args.output, UTTERANCES)
    if not FileSystems.exists(utterances):
        raise SummarizeError(f"{utterances}: no such file (OUT_DIR must be a `bioserc label` output folder)")
    with output_lock(args.output):
        remove_leftovers(args.output)
        staging = staging_folder(args.output)
        try:
            analytics = recompute(utterances, staging, thresholds_from(args))
        except BaseException:
            discard(staging)
            raise
        promote(staging, args.output, (*ANALYTICS, CONVERSATIONS))
        if args.report_calls > 0:
            run = _previous_run(args.output)
            write_report(
                output_path(args.output, CONVERSATIONS),
                output_path(args.output, REPORT),
                run.get("labels") or [],
                run.get("counters") or {},
                analytics.archive,
                title=f"bioserc summarize: {args.output}",
                max_calls=args.report_calls,
                utterances_path=utterances,
            )
    return analytics


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        analytics = summarize(args)
    except (SummarizeError, OutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    archive = analytics.archive
    written = ", ".join(output_path(args.output, name) for name in (CONVERSATIONS, *ANALYTICS))
    print(
        f"summarised {archive['calls']} calls ({archive['utterances']} utterances); {archive['flagged_calls']} "
        f"flagged for review, {len(archive['review'])} listed in archive.json; wrote {written}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
