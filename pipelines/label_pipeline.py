"""Beam pipeline: transcript archive -> an emotion label for every utterance (BiosERC: bios, then a classifier).

    bioserc label examples/transcripts -o out/demo --model serving_artifacts/default
    bioserc label examples/transcripts -o out/emorynlp --model emorynlp    # a shipped classifier, by name
    bioserc label calls/ -o out/labels --model runs/bert/best --bios out/bios/bios.jsonl   # bios from `bioserc bios`
    bioserc label calls/ -o out/labels --skip-existing                  # label only calls not yet in utterances.jsonl
    bioserc label calls/ -o out/labels --direct_num_workers 2 --direct_running_mode multi_processing
    bioserc label calls/ -o /shared/labels --runner apache_beam.runners.dask.dask_runner.DaskRunner \\
        --dask_client_address SCHEDULER:8786                            # a Dask cluster (pip install 'bioserc[dask]')
    bioserc label 'gs://bucket/calls/*.json' -o gs://bucket/labels --model gs://bucket/models/bert \\
        --runner DataflowRunner --project P --region europe-west1 --temp_location gs://bucket/tmp \\
        --sdk_container_image REGION-docker.pkg.dev/P/bioserc/bioserc-cpu:0.1.0

A light first pipeline reads each call's (id, file, digest) and decides duplicate ids and, with --skip-existing, calls
labelled before; it also parses a --bios file. Then: read (any reader; local paths, globs, .gz, gs://; batches of
--conversations-per-batch calls cut from groups of files) -> duplicates and calls labelled before are set aside ->
bios: `--bios FILE` (a `bioserc bios` output), generated here with `bio_steps.BioModelHandler` (`--bio-*`
flags; the default), or none (`--no-bios`) -> `RunInference(BatchedModelHandler(ClassifierModelHandler))` -> outputs
in -o DIR. A model trained on scores/latent speaker profiles (`profile` in its manifest) gets vectors the same ways:
the `vector`s of a --bios file of its profile and size (checked on the driver for local files: a row of another
profile or size is an error naming the file, line and field), made here by the bio LLM as `bioserc bios --profile P`
makes them (scores: the model's own label words, as `--dataset` gives them; latent: no label list, as without
`--dataset`; cached alike), or zeros with --no-bios.

    utterances.jsonl / .parquet  one row per labelled utterance: label, probs {label: p}, bio (or null), model_id
    conversations.jsonl          per call: emotion counts, each speaker's trajectories (label and valence per turn),
                                 dominants, and `analytics` per role: trend, call score, lowest point, escalations
    calls.csv / calls.parquet    the flat per-call table (bioserc.analytics.calls.CALLS_COLUMNS, versioned)
    archive.json                 totals per label and role, call-score histograms, the calls most worth reviewing
    dead_letter.jsonl            unreadable records, duplicate ids, failed bios, conversations the classifier failed
    report.html, run.json        the archive page and each call's trajectories; counters, model and arguments

The analytics thresholds (--negative-threshold, --min-negative-run, --shift-delta, --end-weight, --review-calls) can
be changed afterwards without relabelling: `bioserc summarize OUT_DIR` recomputes them from utterances.jsonl.

Every input utterance ends in exactly one of utterances.jsonl and dead_letter.jsonl (`utterances` in a dead-letter row
says how many it holds); counters: utterances_read, utterances_labeled, utterances_dead_lettered, ... (ledger rows the
steps write beside the outputs, summed by the driver: the same on every runner).

Workers write shards into a staging folder in -o DIR; the driver assembles them into single files and renames those
over the previous ones, so a rerun replaces them. With --skip-existing,
conversations whose id is in the previous utterances.jsonl are not relabelled: the run writes the old rows plus the
new ones into a staging folder, and on success renames each file over the old one, utterances.jsonl last. A crash
leaves the previous outputs (a rerun recomputes); the parquet file is rebuilt from the merged rows, and
conversations.jsonl, calls.csv/.parquet and archive.json are recomputed from them as `bioserc summarize` does. The
dead letter then holds this run's failures only (earlier failures are retried, since they were never labelled).

Local runs use Beam's in-process FnApiRunner with a progress bar. `--direct_num_workers N --direct_running_mode
multi_processing` spreads bundles over N processes; each pays ~3 s start-up and loads its own model, so it only pays
off when the per-call work (bio generation above all) outweighs that on a 2-core machine (the 8-call demo without
bios: 10 s in-process, 27 s with 2 processes). On a Dask cluster (`--runner ...DaskRunner --dask_client_address`) the
workers need the same bioserc install and the same paths (a shared folder, or gs://); see README "Scaling out".

Dataflow: every flag this parser does not know goes to Beam. Workers need bioserc installed: best a custom image
(pipelines/docker/Dockerfile.cpu or .gpu, `--sdk_container_image`), which also pins the CPU or CUDA torch build;
otherwise `--extra_package dist/bioserc-0.1.0-py3-none-any.whl` (`python -m pip wheel --no-deps . -w dist`) or
`--setup_file ./pyproject.toml` (Beam builds an sdist with `python -m build`), both of which let pip resolve torch
from PyPI on the workers. `--gpu-accelerator "type:nvidia-l4;count:1;install-nvidia-driver"` sets Beam's accelerator
resource hint on the inference steps only (the classifier and, when generated here, the bios). `--model gs://...`
is checked on the driver (manifest, file sizes) and hashed on the workers, which copy it to local disk.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference

from bioserc import __version__
from bioserc.analytics.thresholds import Thresholds, add_analytics_args, thresholds_from
from bioserc.analytics.valence import unmapped
from bioserc.artifacts import ArtifactError, default_model_dir, profile_of, resolve_model_arg, shipped_names
from bioserc.bios.base import GenerationConfig
from bioserc.bios.profiles import PREFILL_OUTPUTS, check_profile
from bioserc.errors import RecordError
from bioserc.flags import add_input_args, at_least, max_file_bytes
from bioserc.models.int8_graph import MODES as INT8_MODES
from bioserc.pipelines.analytics import archive_problems, assemble_analytics
from bioserc.pipelines.bio_steps import BioModelHandler
from bioserc.pipelines.classifier_handler import ClassifierModelHandler, model_bio_mode, model_id
from bioserc.pipelines.io import FileGroups, ParseFiles, TextLines, output_path
from bioserc.pipelines.label_steps import (
    AttachBios,
    AttachGeneratedBios,
    Decide,
    EmitResults,
    Fingerprints,
    NoBios,
    ParseBio,
    SelectConversations,
    check_bios,
    existing_id,
)
from bioserc.pipelines.options import add_bio_llm_args, backend_options, parse_pipeline_args, pipeline_parser
from bioserc.pipelines.outputs import (
    ANALYTICS,
    CONVERSATIONS,
    PARQUET,
    REPORT,
    UTTERANCES,
    OutputError,
    WriteShards,
    Written,
    assemble_labels,
    discard,
    keep_failed,
    output_lock,
    print_summary,
    promote,
    remove_leftovers,
    staging_folder,
)
from bioserc.pipelines.records import DEAD, BatchedModelHandler
from bioserc.pipelines.rows import PARQUET_SCHEMA
from bioserc.pipelines.runner import grouping_options, pipeline_options, release_dask_outputs, shows_progress, wait
from bioserc.readers.sources import reader_options
from bioserc.schema import Conversation


logger = logging.getLogger(__name__)

ACCOUNTING = (
    "conversations_read",
    "conversations_labeled",
    "utterances_read",
    "utterances_labeled",
    "utterances_dead_lettered",
    "utterances_unreadable",
    "utterances_duplicated",
    "utterances_failed",
    "utterances_skipped_existing",
    "input_records_dead_lettered",
    "conversations_failed",
)


def make_parser() -> argparse.ArgumentParser:
    """`bioserc label`'s own flags; parse with `parse_pipeline_args`, which passes Beam's flags through."""
    try:
        model_default = default_model_dir()
    except ArtifactError:  # bioserc.serving_artifacts missing from this install: --model becomes required
        model_default = None
    p = pipeline_parser("bioserc label", __doc__)
    add_input_args(p, remote=True)
    p.add_argument("-o", "--output", required=True, help="output directory (local or gs://)")
    p.add_argument(
        "--model",
        default=model_default,
        required=model_default is None,
        type=resolve_model_arg,
        help="classifier artifact folder with manifest.json, local or gs://, or the name of one shipped "
        f"with bioserc ({shipped_names()}; a local folder of that name wins) (default: the model "
        "installed with bioserc, serving_artifacts/default; $BIOSERC_DEFAULT_MODEL overrides it)",
    )
    g = p.add_argument_group("bios (default: generated here with the embedded SmolLM2, as `bioserc bios` would)")
    g.add_argument("--bios", metavar="FILE", help="bios.jsonl from `bioserc bios` (local or gs://, globs allowed)")
    g.add_argument("--no-bios", action="store_true", help="label without bios (every speaker gets an empty one)")
    add_bio_llm_args(g, "bio-")
    g = p.add_argument_group("classifier")
    g.add_argument("--device", default="auto", help="auto (CUDA where present), cpu, cuda[:N]; tensorrt for ONNX")
    g.add_argument(
        "--threads",
        type=at_least(0),
        default=0,
        metavar="N",
        help="CPU threads per worker process (default: 0 = choose automatically)",
    )
    g.add_argument(
        "--int8",
        choices=INT8_MODES,
        default="auto",
        help="auto: where the model is calibrated for it (every shipped one is) and the CPU has exact int8 dot "
        "products (AVX-512 VNNI, AVX-VNNI, AMX), the encoder computes in int8: about 2x the default's speed "
        "end to end, 99.1%% of its labels on MELD valid (its graph is built once per machine, ~4 s, under "
        "$BIOSERC_CACHE/int8); on: the same, or an error where it cannot; off: the shipped graph (the same "
        "labels on every CPU)",
    )
    g.add_argument(
        "--batch-utterances",
        type=at_least(1),
        default=256,
        metavar="N",
        help="utterances per classifier forward pass (an LLM --model: prompts per pass, e.g. 8)",
    )
    g.add_argument(
        "--scoring",
        choices=("sum", "mean", "first"),
        help="an LLM --model only: label score = summed, length-normalised (mean) or first-token "
        "log-likelihood of each label (default: the model's, sum)",
    )
    g.add_argument(
        "--conversations-per-batch",
        type=at_least(1),
        default=16,
        metavar="N",
        help="conversations Beam hands to one inference call, for the classifier and the bio LLM",
    )
    g.add_argument(
        "--gpu-accelerator",
        metavar="HINT",
        help="Beam accelerator resource hint for the inference "
        "steps, e.g. 'type:nvidia-l4;count:1;install-nvidia-driver' (default: none)",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--skip-existing",
        action="store_true",
        help="do not relabel conversations already in OUTPUT/utterances.jsonl; merge their rows",
    )
    g.add_argument(
        "--allow-skips",
        action="store_true",
        help="exit 0 even if some inputs were dead-lettered (unreadable, duplicated or failed)",
    )
    add_analytics_args(p)
    return p


@dataclass
class InputCount:
    """What the inputs hold, counted on the driver with plain file reads, independently of the pipeline's I/O."""

    utterances: int = 0  # in readable conversations
    unreadable: int = 0  # in bad records, where the reader knows the count
    speakers: int = 0


@dataclass
class Plan:
    """What `build` decided, for `run` to execute (`prepare` first, then the labeling pipeline) and `finish` to
    complete on the driver."""

    prepare: beam.Pipeline  # the light first pipeline: decisions on duplicate ids, the pairs of a --bios file
    output: str
    staging: str  # where the workers' shards and the assembled files go before they replace the outputs
    manifest: dict
    model_id: str
    bios: str  # "file", "generate" or "none"
    merge: bool  # --skip-existing with previous outputs: the new rows are appended to the old ones
    expected: InputCount | None  # None for remote inputs (not read on the driver)
    thresholds: Thresholds  # of the analytics


@dataclass
class Outcome:
    """A finished run: its counters, what was written, what did not add up, and the exit status for the shell."""

    counters: dict[str, int]
    written: Written
    problems: list[str]
    exit_code: int
    message: str  # the one-line summary printed last
    output: str
    where: str  # the output folder, or the failed-run folder that kept this run's files


def scored_labels(manifest: dict) -> list[str] | None:
    """The label words a scores profile model's vectors hold, in its logit order (the order `bioserc bios --profile
    scores --dataset` writes them); None for the other profiles, whose prompts then list no labels, as `bioserc bios`
    writes them without --dataset."""
    return list(manifest["labels"]) if profile_of(manifest)[0] == "scores" else None


def _bio_source(args: argparse.Namespace, manifest: dict) -> str:
    if args.bios and args.no_bios:
        raise SystemExit("--bios and --no-bios exclude each other")
    if model_bio_mode(manifest) == "none":
        if args.bios:
            logger.warning("--bios %s is ignored: the model %s uses no bios", args.bios, args.model)
        return "none"
    if args.no_bios:
        return "none"
    profile, dim = profile_of(manifest)
    if args.bios:
        if "://" not in args.bios:
            paths = sorted(glob.glob(args.bios))
            if not paths:
                raise SystemExit(f"--bios {args.bios}: no such file (write one with `bioserc bios INPUT -o DIR`)")
            check_bios(paths, profile, dim)
        return "file"
    try:  # a profile the bio backend cannot make is a usage error before anything loads, as in `bioserc bios`
        check_profile(profile, args.bio_backend, PREFILL_OUTPUTS.get(args.bio_backend, ()), scored_labels(manifest))
    except ValueError as err:
        raise SystemExit(f"--model {args.model}: {err}") from None
    return "generate"


def count_inputs(args: argparse.Namespace) -> InputCount | None:
    """The independent count of local inputs (None when any input is remote): progress totals and reconciliation."""
    if any("://" in s for s in args.inputs):
        return None
    from bioserc.readers import read_items

    count = InputCount()
    try:
        for item in read_items(args.inputs, args.format, max_file_bytes(args), **reader_options(args)):
            if isinstance(item, Conversation):  # streamed: an archive is never held in memory just to count it
                count.utterances += len(item.utterances)
                count.speakers += len(item.speakers)
            else:
                count.unreadable += item.utterances
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    return count


def _bio_requests(convs, args: argparse.Namespace, plan: Plan, hints: dict, progress: bool):
    """Batches of conversations -> batches of LabelRequest with each speaker's bio from a file, generated here, or
    none."""
    expected = model_bio_mode(plan.manifest) != "none"
    if plan.bios == "file":
        return convs | "AttachBios" >> beam.ParDo(AttachBios(expected, plan.staging))
    if plan.bios == "none":
        return convs | "NoBios" >> beam.ParDo(NoBios(expected))
    config = GenerationConfig(max_new_tokens=args.bio_max_new_tokens)
    cache = None if args.bio_cache == "none" else (args.bio_cache or output_path(args.output, "cache"))
    backend = backend_options(args, "bio_")
    total = plan.expected.speakers if progress and plan.expected else 0
    profile, _ = profile_of(plan.manifest)
    handler = BioModelHandler(
        args.bio_backend,
        args.bio_model,
        backend,
        config,
        args.bio_words,
        cache,
        max_batch_size=args.conversations_per_batch,
        progress_total=total,
        profile=profile,
        labels=scored_labels(plan.manifest),
    )
    generate = RunInference(BatchedModelHandler(handler))  # batch of conversations -> (conversation, bios) pairs
    return (
        convs
        | "Bios" >> (generate.with_resource_hints(**hints) if hints else generate)
        | "AttachGeneratedBios" >> beam.ParDo(AttachGeneratedBios(expected))
    )


def _prepare(prepare: beam.Pipeline, args: argparse.Namespace, plan: Plan) -> None:
    """The first pipeline: each call's (id, file, digest) from a light read, grouped to decide duplicates and
    --skip-existing, and the --bios file parsed; all written as lookup shards (and dead letters, counts) to staging."""
    options, limit = reader_options(args), max_file_bytes(args)
    seen = (
        prepare
        | "KeyFiles" >> FileGroups(args.inputs, args.conversations_per_batch)
        | "ReadKeys" >> beam.ParDo(Fingerprints(args.format, options, limit))
    )
    if plan.merge:
        old = (
            prepare
            | "ReadExisting" >> TextLines(output_path(args.output, CONVERSATIONS))
            | "ExistingIds" >> beam.Map(existing_id)
        )
        seen = (seen, old) | "WithExisting" >> beam.Flatten()
    records = [seen | "GroupIds" >> beam.GroupByKey() | "Decide" >> beam.ParDo(Decide())]
    if plan.bios == "file":
        parse = ParseBio(args.bios, *profile_of(plan.manifest))
        records.append(prepare | "ReadBios" >> TextLines(args.bios) | "ParseBios" >> beam.ParDo(parse))
    _ = tuple(records) | "Lookups" >> beam.Flatten() | "WriteLookups" >> WriteShards(plan.staging)


def build(pipeline: beam.Pipeline, args: argparse.Namespace, progress: bool = False) -> Plan:
    """Add the labeling steps to `pipeline` and build the first pipeline (`Plan.prepare`) that must run before it;
    `progress` shows bars (their totals counted here for local inputs)."""
    # The model is checked first: a missing or tampered artifact fails here, before any input is read.
    llm_options = {"scoring": args.scoring} if args.scoring else {}
    handler = ClassifierModelHandler(
        args.model,
        args.device,
        args.batch_utterances,
        args.conversations_per_batch,
        threads=args.threads,
        llm_options=llm_options,
        int8=args.int8,
    )
    bios = _bio_source(args, handler.manifest)
    if missing := unmapped(handler.manifest.get("labels") or []):
        logger.warning(
            "--model %s: labels %s are outside MELD, EmoryNLP and IEMOCAP, so the analytics score them as "
            "neutral (bioserc/analytics/valence.py)",
            args.model,
            missing,
        )
    expected = count_inputs(args)
    if progress:
        handler.progress_total = expected.utterances if expected else 0
    merge = args.skip_existing and FileSystems.exists(output_path(args.output, CONVERSATIONS))
    if args.skip_existing and not merge:
        logger.warning("--skip-existing: no %s yet, labelling everything", output_path(args.output, CONVERSATIONS))
    staging = staging_folder(args.output)
    release_dask_outputs(pipeline.options)  # before either pipeline's graph is built
    # The first pipeline groups ids: on Dask it gets a fixed partition count (see `grouping_options`).
    plan = Plan(
        beam.Pipeline(options=grouping_options(pipeline.options)),
        args.output,
        staging,
        handler.manifest,
        model_id(args.model),
        bios,
        merge,
        expected,
        thresholds_from(args),
    )
    _prepare(plan.prepare, args, plan)
    hints = {"accelerator": args.gpu_accelerator} if args.gpu_accelerator else {}

    selected = (
        pipeline
        | "Files" >> FileGroups(args.inputs, args.conversations_per_batch)
        | "Read"
        >> beam.ParDo(
            ParseFiles(
                args.format,
                reader_options(args),
                max_file_bytes(args),
                args.conversations_per_batch,
                count_utterances=True,
            )
        )
        | "Select" >> beam.ParDo(SelectConversations(staging))
    )
    classify = RunInference(BatchedModelHandler(handler))
    # One chain, one sink (see pipelines.records): the in-process runner streams it, Dask runs all of it.
    _ = (
        _bio_requests(selected, args, plan, hints, progress)
        | "Classify" >> (classify.with_resource_hints(**hints) if hints else classify)
        | "Emit" >> beam.ParDo(EmitResults(plan.thresholds))
        | "Write" >> WriteShards(staging, PARQUET_SCHEMA)
    )
    return plan


def ledger_counters(written: Written) -> dict[str, int]:
    """What the steps counted, with the accounting counters present even where nothing was counted."""
    return {**dict.fromkeys(ACCOUNTING, 0), **written.ledger}


def reconcile(c: dict[str, int], written: Written, expected: InputCount | None, archive: dict) -> list[str]:
    """Every way the run's numbers must add up; each mismatch is a sentence (an empty list: nothing was lost).
    `archive` (archive.json's content) must count every utterance row written, each under one label."""
    problems = []
    accounted = (
        c["utterances_labeled"]
        + c["utterances_duplicated"]
        + c["utterances_failed"]
        + c["utterances_skipped_existing"]
    )
    if c["utterances_read"] != accounted:
        problems.append(
            f"the pipeline read {c['utterances_read']} utterances but labelled, dead-lettered or skipped {accounted}"
        )
    if written.utterance_rows != c["utterances_labeled"]:
        problems.append(
            f"{c['utterances_labeled']} utterances were labelled but {written.utterance_rows} rows were written"
        )
    if written.dead_letter_utterances != c["utterances_dead_lettered"]:
        problems.append(
            f"{c['utterances_dead_lettered']} utterances were dead-lettered but the dead-letter rows hold "
            f"{written.dead_letter_utterances}"
        )
    if expected is not None and (expected.utterances, expected.unreadable) != (
        c["utterances_read"],
        c["utterances_unreadable"],
    ):
        problems.append(
            f"the inputs hold {expected.utterances} readable and {expected.unreadable} unreadable "
            f"utterances (counted independently) but the pipeline read {c['utterances_read']} and "
            f"dead-lettered {c['utterances_unreadable']} as unreadable"
        )
    return problems + archive_problems(archive, written.previous_utterance_rows + written.utterance_rows)


def finish(plan: Plan, args: argparse.Namespace, argv: Sequence[str], started: float) -> Outcome:
    """Assemble the shards, check that every utterance is accounted for, then replace the outputs (or keep them)."""
    written = assemble_labels(plan.staging, plan.output, PARQUET_SCHEMA, plan.merge)
    analytics = assemble_analytics(plan.staging, plan.thresholds, plan.merge)
    if plan.merge:
        written.conversation_rows = analytics.calls
    totals = ledger_counters(written)
    problems = reconcile(totals, written, plan.expected, analytics.archive)
    nothing = totals["utterances_labeled"] == 0 and written.dead_letter_rows > 0
    previous = FileSystems.exists(output_path(plan.output, UTTERANCES))
    where = plan.output
    if problems or (nothing and previous and not plan.merge):  # never replace good outputs with a failed run's
        where = keep_failed(plan.staging, plan.output)
    else:
        promote(plan.staging, plan.output)
    labels = list(plan.manifest.get("labels") or [])
    if where == plan.output and args.report_calls > 0:
        from bioserc.pipelines.report import write_report

        write_report(
            output_path(where, CONVERSATIONS),
            output_path(where, REPORT),
            labels,
            totals,
            analytics.archive,
            title=f"bioserc label: {args.output}",
            max_calls=args.report_calls,
            utterances_path=output_path(where, UTTERANCES),
        )
    code = 1 if problems or nothing or (written.dead_letter_rows and not args.allow_skips) else 0
    message = (
        f"labelled {totals['utterances_labeled']} utterances in {totals['conversations_labeled']} calls; "
        f"dead-lettered {totals['utterances_dead_lettered']} utterances in {written.dead_letter_rows} rows; "
        f"skipped {totals['utterances_skipped_existing']} already labelled; read {totals['utterances_read']}"
    )
    if problems:
        message = "error: accounting mismatch, outputs not replaced: " + "; ".join(problems) + f" ({message})"
    elif nothing:
        message = f"error: nothing was labelled, every input was dead-lettered ({message})"
    elif code:
        message += "; exit 1 because records were dead-lettered (see dead_letter.jsonl; --allow-skips accepts that)"
    info = {
        "version": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 3),
        "argv": list(argv),
        "model": args.model,
        "model_id": plan.model_id,
        "labels": labels,
        "bios": plan.bios,
        "int8": args.int8,
        "counters": totals,
        "written": asdict(written),
        "problems": problems,
        "exit_code": code,
    }
    with FileSystems.create(output_path(where, "run.json")) as fh:
        fh.write((json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return Outcome(totals, written, problems, code, message, plan.output, where)


def run(
    argv: Sequence[str] | None = None, progress: bool = False, test_pipeline: beam.Pipeline | None = None
) -> Outcome:
    """Lock the output, build and run the pipeline, then finish on the driver; ArtifactError for a bad model,
    RecordError for a --bios row the model cannot read. `test_pipeline` (a Beam `TestPipeline`) replaces the labeling
    pipeline the Beam flags would make (the first, light pipeline takes its options)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, beam_args = parse_pipeline_args(make_parser(), argv)
    started = time.time()
    with output_lock(args.output):
        for name in remove_leftovers(args.output):
            logger.warning("removed %s left in %s by an earlier run that did not finish", name, args.output)
        pipeline = test_pipeline or beam.Pipeline(options=pipeline_options(beam_args))
        plan = build(pipeline, args, progress and shows_progress(pipeline))
        try:
            wait(plan.prepare.run())
            wait(pipeline.run())
        except BaseException:
            discard(plan.staging)
            raise
        return finish(plan, args, argv, started)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        outcome = run(argv, progress=True)
    except (ArtifactError, OutputError, RecordError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    files = "labels: " + ", ".join(output_path(outcome.where, n) for n in (UTTERANCES, PARQUET, CONVERSATIONS))
    files += "\nanalytics: " + ", ".join(output_path(outcome.where, n) for n in ANALYTICS)
    print_summary(
        outcome.counters,
        f"{files}\ndead letters: {output_path(outcome.where, DEAD)}",
        outcome.where,
        outcome.output,
        outcome.message,
    )
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
