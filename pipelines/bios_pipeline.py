"""Beam pipeline: transcript archive -> one biography per (conversation, speaker).

    bioserc bios examples/transcripts -o out/bios
    bioserc bios examples/transcripts -o out/bios --batch-size 32 --threads 2
    bioserc bios examples/transcripts -o out/profiles --profile scores --dataset meld   # label probabilities
    bioserc bios 'gs://bucket/calls/*.json' -o gs://bucket/bios --runner DataflowRunner --project P \\
        --region europe-west1 --temp_location gs://bucket/tmp --extra_package dist/bioserc-0.1.0-py3-none-any.whl

(the wheel: `python -m pip wheel --no-deps . -w dist`; Dataflow needs `pip install 'bioserc[gcp]'` on this machine.)

Read (any reader; batches of --conversations-per-batch calls) -> RunInference with `BioModelHandler` (one model per
worker process) -> bios.jsonl, bios.paper.json ({conv_id: [bio per utterance]}, the reference code's format) and
dead_letter.jsonl. Every (conversation, speaker) ends in exactly one of bios.jsonl and dead_letter.jsonl. Workers
write shards into a staging folder in the output; the driver assembles them and replaces the previous files.
`--profile` (`bioserc.bios.profiles`) picks what a row holds: a bio (text, emotion) or a `vector` (scores, latent;
bios.paper.json then holds each utterance's speaker vector).

As with `bioserc label`: one run at a time per output folder (a second one exits 2), exit 1 when a bio or an input
record was dead-lettered (unless --allow-skips) or when no bio came out (a previous bios.jsonl is then kept), and a
one-line summary of the counts last.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference

from bioserc.bios.base import GenerationConfig
from bioserc.bios.profiles import PREFILL_OUTPUTS, PROFILES, check_profile
from bioserc.flags import DATASET_HELP, add_input_args, at_least
from bioserc.labels import LABEL_SETS
from bioserc.pipelines.bio_steps import BioModelHandler, BioRecords
from bioserc.pipelines.io import FileGroups, ParseFiles, output_path
from bioserc.pipelines.options import add_bio_llm_args, backend_options, parse_pipeline_args, pipeline_parser
from bioserc.pipelines.outputs import (
    BIOS,
    PAPER,
    OutputError,
    WriteShards,
    concat_jsonl,
    discard,
    keep_failed,
    output_lock,
    print_summary,
    promote,
    read_ledger,
    remove_leftovers,
    shards,
    staging_folder,
)
from bioserc.pipelines.records import DEAD, BatchedModelHandler
from bioserc.pipelines.runner import pipeline_options, release_dask_outputs, shows_progress, wait
from bioserc.readers.sources import reader_options
from bioserc.schema import Conversation


logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    """`bioserc bios`'s own flags; parse with `parse_pipeline_args`, which passes Beam's flags through."""
    p = pipeline_parser("bioserc bios", __doc__)
    add_input_args(
        p,
        remote=True,
        size_limit=False,
        dataset_help=DATASET_HELP + ", and the label words --profile scores scores (needed there)",
    )
    p.add_argument("-o", "--output", required=True, help="output directory (local or gs://)")
    g = p.add_argument_group("LLM (`bioserc label` takes the same flags as --bio-backend, --bio-model, ...)")
    add_bio_llm_args(g)
    g.add_argument(
        "--profile",
        default="text",
        choices=PROFILES,
        help="what each (conversation, speaker) gets: text (the bio, prompt bio-v1), emotion (mood, what "
        "changes it, reactions to others; emotion-v1), scores (no decoding: each --dataset label's "
        "probability as the answer to how the speaker feels overall; scores-v1) or latent (the LLM's "
        "final hidden state at the end of that question); scores and latent need a local backend",
    )
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (use with --seed)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument(
        "--conversations-per-batch",
        type=at_least(1),
        default=16,
        metavar="N",
        help="conversations Beam hands to one inference call",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--allow-skips", action="store_true", help="exit 0 even if some bios or input records were dead-lettered"
    )
    return p


def build(pipeline: beam.Pipeline, args: argparse.Namespace, staging: str, progress_total: int = 0) -> None:
    release_dask_outputs(pipeline.options)  # before the graph is built
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed)
    cache = None if args.cache == "none" else (args.cache or output_path(args.output, "cache"))
    labels = LABEL_SETS[args.dataset].labels if args.dataset else None
    handler = BioModelHandler(
        args.backend,
        args.model,
        backend_options(args),
        config,
        args.words,
        cache,
        max_batch_size=args.conversations_per_batch,
        progress_total=progress_total,
        profile=args.profile,
        labels=labels,
    )
    _ = (
        pipeline
        | "Files" >> FileGroups(args.inputs, args.conversations_per_batch)
        | "Read" >> beam.ParDo(ParseFiles(args.format, reader_options(args), batch=args.conversations_per_batch))
        | "Generate" >> RunInference(BatchedModelHandler(handler))
        | "Split" >> beam.ParDo(BioRecords())
        | "Write" >> WriteShards(staging)
    )  # one chain, one sink (see pipelines.records)


@dataclass
class BiosRun:
    """A finished `bioserc bios` run: what its steps counted (summed from their ledger rows), the exit status for the
    shell and the one-line summary printed last."""

    counters: dict[str, int]
    exit_code: int
    message: str
    output: str
    where: str  # the output folder, or the failed-run folder that kept this run's files


def assemble_bios(staging: str) -> None:
    """The shards -> bios.jsonl, dead_letter.jsonl and bios.paper.json (one JSON object, written entry by entry)."""
    concat_jsonl([], shards(staging, BIOS), output_path(staging, BIOS))
    concat_jsonl([], shards(staging, DEAD), output_path(staging, DEAD))
    with FileSystems.create(output_path(staging, PAPER)) as out:
        out.write(b"{")
        first = True
        for src in shards(staging, PAPER):
            with FileSystems.open(src) as fh:
                for line in fh:
                    if line.strip():
                        entry = json.loads(line)
                        out.write(
                            (
                                ("" if first else ", ")
                                + json.dumps(entry["conversation_id"], ensure_ascii=False)
                                + ": "
                                + json.dumps(entry["bios"], ensure_ascii=False)
                            ).encode("utf-8")
                        )
                        first = False
        out.write(b"}\n")


def count_speakers(args: argparse.Namespace) -> int:
    """The (conversation, speaker) pairs of local inputs, for the progress bar's total (0 when any input is remote)."""
    if any("://" in s for s in args.inputs):
        return 0
    from bioserc.readers import read_items

    try:
        items = read_items(args.inputs, args.format, **reader_options(args))
        return sum(len(c.speakers) for c in items if isinstance(c, Conversation))
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None


def finish(counters: dict[str, int], args: argparse.Namespace, staging: str) -> BiosRun:
    """Replace the outputs with the assembled files (unless no bio came out and earlier bios exist) and decide the
    exit status the way `bioserc label` does."""
    c = {
        name: counters.get(name, 0)
        for name in (
            "conversations_read",
            "bios_generated",
            "bios_cached",
            "bios_dead_lettered",
            "input_records_dead_lettered",
        )
    }
    made = c["bios_generated"] + c["bios_cached"]
    dead = c["bios_dead_lettered"] + c["input_records_dead_lettered"]
    where = args.output
    if not made and FileSystems.exists(output_path(args.output, BIOS)):  # never replace good bios with a failed run's
        where = keep_failed(staging, args.output)
    else:
        promote(staging, args.output, (PAPER, DEAD, BIOS))
    code = 1 if not made or (dead and not args.allow_skips) else 0
    message = (
        f"wrote {made} bios ({c['bios_cached']} from the cache) for {c['conversations_read']} calls; "
        f"dead-lettered {c['bios_dead_lettered']} bios and {c['input_records_dead_lettered']} input records"
    )
    if not made:
        message = f"error: no bio was produced ({message})"
    elif code:
        message += "; exit 1 because records were dead-lettered (see dead_letter.jsonl; --allow-skips accepts that)"
    return BiosRun(counters, code, message, args.output, where)


def run(
    argv: Sequence[str] | None = None, progress: bool = False, test_pipeline: beam.Pipeline | None = None
) -> BiosRun:
    """Parse strictly (a usage error before anything runs), lock the output, build and run the pipeline, assemble
    its outputs and finish on the driver; `progress` shows a bar on the local runners. `test_pipeline` (a Beam
    `TestPipeline`) replaces the pipeline the Beam flags would make."""
    parser = make_parser()
    args, beam_args = parse_pipeline_args(parser, sys.argv[1:] if argv is None else argv)
    try:  # before anything loads: a profile the backend or label set cannot make is a usage error
        check_profile(
            args.profile,
            args.backend,
            PREFILL_OUTPUTS.get(args.backend, ()),
            LABEL_SETS[args.dataset].labels if args.dataset else None,
        )
    except ValueError as err:
        parser.error(str(err))
    with output_lock(args.output):
        for name in remove_leftovers(args.output):
            logger.warning("removed %s left in %s by an earlier run that did not finish", name, args.output)
        staging = staging_folder(args.output)
        pipeline = test_pipeline or beam.Pipeline(options=pipeline_options(beam_args))
        build(pipeline, args, staging, count_speakers(args) if progress and shows_progress(pipeline) else 0)
        try:
            wait(pipeline.run())
            assemble_bios(staging)
            counters = read_ledger(staging)
        except BaseException:
            discard(staging)
            raise
        return finish(counters, args, staging)


def main(argv: Sequence[str] | None = None) -> int:
    """`bioserc bios`: 0 when every bio came out (or --allow-skips), 1 for dead letters or no bio, 2 for usage and
    output-folder errors."""
    try:
        result = run(argv, progress=True)
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_summary(
        result.counters,
        f"bios: {output_path(result.where, BIOS)}  dead letters: {output_path(result.where, DEAD)}",
        result.where,
        result.output,
        result.message,
    )
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
