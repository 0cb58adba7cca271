"""Beam pipeline: transcript archive -> an emotion label for every utterance (BiosERC: bios, then a classifier).

    bioserc label examples/transcripts -o out/demo --model serving_artifacts/default
    bioserc label calls/ -o out/labels --model runs/bert/best --bios out/bios/bios.jsonl   # bios from `bioserc bios`
    bioserc label calls/ -o out/labels --skip-existing                  # label only calls not yet in utterances.jsonl
    bioserc label calls/ -o out/labels --direct_num_workers 2 --direct_running_mode multi_processing
    bioserc label 'gs://bucket/calls/*.json' -o gs://bucket/labels --model gs://bucket/models/bert \\
        --runner DataflowRunner --project P --region europe-west1 --temp_location gs://bucket/tmp \\
        --sdk_container_image REGION-docker.pkg.dev/P/bioserc/bioserc-cpu:0.1.0

Read (any reader; local paths, globs, .gz, gs://) -> key by conversation (duplicate ids and, with --skip-existing,
calls already labelled are set aside) -> bios: `--bios FILE` (a `bioserc bios` output), generated here with the bio
pipeline's `ExtractBios` (`--bio-*` flags; the default), or none (`--no-bios`) -> join bios to conversations ->
`RunInference(KeyedModelHandler(ClassifierModelHandler))` -> outputs in -o DIR:

    utterances.jsonl / .parquet  one row per labelled utterance: label, probs {label: p}, bio (or null), model_id
    conversations.jsonl          per call: emotion counts, each speaker's trajectory [[index, label], ...], dominants
    dead_letter.jsonl            unreadable records, duplicate ids, failed bios, conversations the classifier failed
    report.html, run.json        a page to look at the run; counters, model and arguments

Every input utterance ends in exactly one of utterances.jsonl and dead_letter.jsonl (`utterances` in a dead-letter row
says how many it holds); counters: utterances_read, utterances_labeled, utterances_dead_lettered, ...

Outputs are single files written by Beam (temp file, then rename), so a rerun replaces them. With --skip-existing,
conversations whose id is in the previous utterances.jsonl are not relabelled: the run writes the old rows plus the
new ones into a staging folder, and on success renames each file over the old one, utterances.jsonl last. A crash
leaves the previous outputs (a rerun recomputes); conversations.jsonl and the parquet file are rebuilt from the merged
rows. The dead letter then holds this run's failures only (earlier failures are retried, since they were never
labelled).

Local runs use Beam's in-process FnApiRunner with a progress bar. `--direct_num_workers N --direct_running_mode
multi_processing` spreads bundles over N processes; each pays ~3 s start-up and loads its own model, so it only pays
off when the per-call work (bio generation above all) outweighs that on a 2-core machine (the 8-call demo without
bios: 10 s in-process, 27 s with 2 processes).

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
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from bioserc.artifacts import ArtifactError, manifest_hash
from bioserc.bios.backend import GenerationConfig
from bioserc.bios.backends import KINDS
from bioserc.bios.extract import MODES
from bioserc.pipelines.bios_pipeline import BioModelHandler, ExtractBios, backend_options, pipeline_options
from bioserc.pipelines.classify import (
    PARQUET_SCHEMA,
    SUMMARY,
    ClassifierModelHandler,
    EmitResults,
    parquet_row,
    summarise,
)
from bioserc.pipelines.io import DEAD_LETTER, ReadConversations, WriteJsonl, counters, output_path
from bioserc.pipelines.label_steps import (
    AttachBios,
    ExistingIds,
    KeyConversation,
    ParseBio,
    ReadDeadLetter,
    SelectConversations,
)
from bioserc.schema import ROLES, Conversation


logger = logging.getLogger(__name__)

DEFAULT_MODEL = os.path.join("serving_artifacts", "default")
UTTERANCES, PARQUET, CONVERSATIONS, DEAD = "utterances.jsonl", "utterances.parquet", "conversations.jsonl", \
    "dead_letter.jsonl"
ACCOUNTING = ("conversations_read", "utterances_read", "utterances_labeled", "utterances_dead_lettered",
              "input_records_dead_lettered", "conversations_failed")
PROMOTE_ORDER = (PARQUET, CONVERSATIONS, DEAD, UTTERANCES)  # utterances.jsonl last: it is what --skip-existing reads


def parse_role_map(text: str) -> dict[str, str]:
    pairs = [p.partition("=") for p in filter(None, (t.strip() for t in text.split(",")))]
    bad = [p[0] for p in pairs if not p[1] or p[2].strip() not in ROLES]
    if bad:
        raise SystemExit(f"--role-map: expected ID=ROLE pairs with ROLE one of {list(ROLES)}, got {text!r}")
    return {k.strip(): v.strip() for k, _, v in pairs}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bioserc label", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs; local or gs://")
    p.add_argument("-o", "--output", required=True, help="output directory (local or gs://)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="classifier artifact folder with manifest.json "
                   f"(default {DEFAULT_MODEL}); local or gs://")
    p.add_argument("--format", default="auto", help="input format (see `bioserc convert --help`)")
    p.add_argument("--dataset", help="label set for BiosERC JSON files not named after their dataset")
    p.add_argument("--role-map", default="", metavar="ID=ROLE,...", help="roles for Azure speaker/channel ids")
    g = p.add_argument_group("bios (default: generate them here with the embedded SmolLM2)")
    g.add_argument("--bios", metavar="FILE", help="bios.jsonl from `bioserc bios` (local or gs://, globs allowed)")
    g.add_argument("--no-bios", action="store_true", help="label without bios (every speaker gets an empty one)")
    g.add_argument("--bio-backend", default="transformers", choices=KINDS)
    g.add_argument("--bio-model", default="smollm2", help="as `bioserc bios --model`")
    g.add_argument("--bio-base-url", help="OpenAI-compatible server for --bio-backend openai")
    g.add_argument("--bio-mode", default="per-speaker", choices=MODES)
    g.add_argument("--bio-words", type=int, default=60)
    g.add_argument("--bio-max-new-tokens", type=int, default=96)
    g.add_argument("--bio-batch-size", type=int, default=16, help="prompts per generate call")
    g.add_argument("--bio-cache", help="bio cache directory (default: OUTPUT/cache); 'none' disables it")
    g = p.add_argument_group("classifier")
    g.add_argument("--device", default="auto", help="auto (CUDA where present), cpu, cuda[:N]; tensorrt for ONNX")
    g.add_argument("--batch-size", type=int, default=8, help="conversations per forward pass (default 8)")
    g.add_argument("--conversations-per-batch", type=int, default=16,
                   help="conversations per Beam batch, for the classifier and the bio LLM (default 16)")
    g.add_argument("--gpu-accelerator", metavar="HINT", help="Beam accelerator resource hint for the inference "
                   "steps, e.g. 'type:nvidia-l4;count:1;install-nvidia-driver'")
    p.add_argument("--skip-existing", action="store_true",
                   help="do not relabel conversations already in OUTPUT/utterances.jsonl; merge their rows")
    p.add_argument("--report-calls", type=int, default=20, help="calls plotted in report.html (0: no report)")
    return p


@dataclass
class Plan:
    """What `build` decided, for `run` to finish on the driver after the pipeline."""

    output: str
    write_dir: str  # output, or a staging folder under it when --skip-existing merges into previous outputs
    manifest: dict
    model_id: str
    bios: str  # "file", "generate" or "none"


def _model_id(path: str) -> str:
    if "://" not in path:
        return manifest_hash(path)
    with FileSystems.open(FileSystems.join(path, "manifest.json")) as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def _bio_source(args: argparse.Namespace, manifest: dict) -> str:
    if args.bios and args.no_bios:
        raise SystemExit("--bios and --no-bios exclude each other")
    if args.no_bios or manifest.get("bio_mode") == "none":
        return "none"
    if args.bios:
        if "://" not in args.bios and not glob.glob(args.bios):
            raise SystemExit(f"--bios {args.bios}: no such file (write one with `bioserc bios INPUT -o DIR`)")
        return "file"
    return "generate"


def build(pipeline: beam.Pipeline, args: argparse.Namespace, progress: bool = False) -> Plan:
    """Add the labeling steps to `pipeline`; `progress` shows a bar (its total counted here for local inputs)."""
    # The model is checked first: a missing or tampered artifact fails here, before any input is read.
    handler = ClassifierModelHandler(args.model, args.device, args.batch_size, args.conversations_per_batch)
    bio_total = 0
    if progress:
        local = all("://" not in s for s in args.inputs) and not args.skip_existing
        handler.progress_total, bio_total = _count_work(args) if local else (0, 0)
    plan = Plan(args.output, args.output, handler.manifest, _model_id(args.model), _bio_source(args, handler.manifest))
    hints = {"accelerator": args.gpu_accelerator} if args.gpu_accelerator else {}
    existing = output_path(args.output, UTTERANCES)
    if args.skip_existing and not FileSystems.exists(existing):
        logger.warning("--skip-existing: no %s yet, labelling everything", existing)
    merge = args.skip_existing and FileSystems.exists(existing)
    if merge:
        plan.write_dir = output_path(args.output, f".staging-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")

    options = {"dataset": args.dataset, "role_map": parse_role_map(args.role_map)}
    read = pipeline | "Read" >> ReadConversations(args.inputs, args.format, options)
    dead = [read[DEAD_LETTER] | "CountUnreadable" >> beam.ParDo(ReadDeadLetter())]
    keyed = read.main | "KeyByConversation" >> beam.ParDo(KeyConversation())
    if merge:
        old_rows = (pipeline | "ReadExisting" >> beam.io.ReadFromText(existing)
                    | "ParseExisting" >> beam.Map(json.loads))
        seen = old_rows | "ExistingIds" >> beam.ParDo(ExistingIds(plan.model_id))
    else:
        seen = pipeline | "NoExisting" >> beam.Create([])
    selected = ({"conversation": keyed, "existing": seen} | "GroupById" >> beam.CoGroupByKey()
                | "Select" >> beam.ParDo(SelectConversations()).with_outputs(DEAD_LETTER, main="main"))
    dead.append(selected[DEAD_LETTER])
    convs = selected.main

    if plan.bios == "file":
        parsed = (pipeline | "ReadBios" >> beam.io.ReadFromText(args.bios)
                  | "ParseBios" >> beam.ParDo(ParseBio(args.bios)).with_outputs(DEAD_LETTER, main="main"))
        bios = parsed.main
        dead.append(parsed[DEAD_LETTER])
    elif plan.bios == "generate":
        config = GenerationConfig(max_new_tokens=args.bio_max_new_tokens)
        cache = None if args.bio_cache == "none" else (args.bio_cache or output_path(args.output, "cache"))
        backend = backend_options(argparse.Namespace(backend=args.bio_backend, base_url=args.bio_base_url,
                                                     batch_size=args.bio_batch_size))
        bio_handler = BioModelHandler(args.bio_backend, args.bio_model, backend, config, args.bio_mode,
                                      args.bio_words, cache, max_batch_size=args.conversations_per_batch,
                                      progress_total=bio_total)
        extracted = convs | "Conversations" >> beam.Values() | "Bios" >> ExtractBios(bio_handler).with_resource_hints(
            **hints)
        bios = extracted.bios | "KeyBios" >> beam.Map(lambda r: (r.conversation_id, (r.speaker, r.bio)))
        dead.append(extracted[DEAD_LETTER])
    else:
        bios = pipeline | "NoBios" >> beam.Create([])
    requests = ({"conversation": convs, "bios": bios} | "JoinBios" >> beam.CoGroupByKey()
                | "AttachBios" >> beam.ParDo(AttachBios(handler.manifest.get("bio_mode") != "none")))
    classify = RunInference(KeyedModelHandler(handler))
    results = (requests | "Classify" >> (classify.with_resource_hints(**hints) if hints else classify)
               | "Emit" >> beam.ParDo(EmitResults()).with_outputs(DEAD_LETTER, SUMMARY, main="rows"))
    dead.append(results[DEAD_LETTER])
    rows, summaries = results.rows, results[SUMMARY]
    if merge:
        rows = (rows, old_rows) | "MergeRows" >> beam.Flatten()
        old_summaries = (old_rows | "KeyOldRows" >> beam.Map(lambda r: (r["conversation_id"], r))
                         | "GroupOldRows" >> beam.GroupByKey() | "SummariseOld" >> beam.MapTuple(lambda _, rs:
                                                                                                  summarise(rs)))
        summaries = (summaries, old_summaries) | "MergeSummaries" >> beam.Flatten()

    _ = rows | "WriteUtterances" >> WriteJsonl(output_path(plan.write_dir, UTTERANCES))
    _ = (rows | "ParquetRows" >> beam.Map(parquet_row)
         | "WriteParquet" >> beam.io.WriteToParquet(output_path(plan.write_dir, PARQUET), PARQUET_SCHEMA,
                                                    codec="snappy", num_shards=1, shard_name_template=""))
    _ = summaries | "WriteConversations" >> WriteJsonl(output_path(plan.write_dir, CONVERSATIONS))
    _ = (tuple(dead) | "AllDeadLetters" >> beam.Flatten()
         | "DeadLetterRows" >> beam.Map(lambda d: {"utterances": 0, **d})
         | "WriteDeadLetter" >> WriteJsonl(output_path(plan.write_dir, DEAD)))
    return plan


def run_counters(result) -> dict[str, int]:
    """The pipeline's counters, with the accounting ones present even where nothing was counted."""
    return {**dict.fromkeys(ACCOUNTING, 0), **counters(result)}


def promote(staging: str, output: str) -> None:
    """Move the merged outputs over the previous ones (each rename replaces one file), utterances.jsonl last."""
    for name in PROMOTE_ORDER:
        FileSystems.rename([output_path(staging, name)], [output_path(output, name)])
    if "://" not in staging:
        shutil.rmtree(staging, ignore_errors=True)


def finish(plan: Plan, result, args: argparse.Namespace, argv: Sequence[str]) -> dict[str, int]:
    if plan.write_dir != plan.output:
        promote(plan.write_dir, plan.output)
    totals = run_counters(result)
    labels = list(plan.manifest.get("labels") or [])
    if args.report_calls > 0:
        from bioserc.pipelines.report import write_report

        write_report(output_path(plan.output, CONVERSATIONS), output_path(plan.output, "report.html"), labels,
                     totals, title=f"bioserc label: {args.output}", max_calls=args.report_calls,
                     utterances_path=output_path(plan.output, UTTERANCES))
    info = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(argv), "model": args.model,
            "model_id": plan.model_id, "labels": labels, "bios": plan.bios, "counters": totals}
    with FileSystems.create(output_path(plan.output, "run.json")) as fh:
        fh.write((json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return totals


def run(argv: Sequence[str] | None = None, progress: bool = False) -> beam.runners.runner.PipelineResult:
    """Build, run and finish the pipeline (merge, report.html, run.json); raise ArtifactError for a bad model."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, beam_args = make_parser().parse_known_args(argv)
    pipeline = beam.Pipeline(options=pipeline_options(beam_args))
    plan = build(pipeline, args, progress)
    result = pipeline.run()
    result.wait_until_finish()
    finish(plan, result, args, argv)
    return result


def _count_work(args: argparse.Namespace) -> tuple[int, int]:
    """(utterances, speakers over all conversations) in local inputs: the totals of the progress bars."""
    from bioserc.readers import read_items

    utterances = speakers = 0
    try:
        for item in read_items(args.inputs, args.format, dataset=args.dataset, role_map=parse_role_map(args.role_map)):
            if isinstance(item, Conversation):  # streamed: an archive is never held in memory just to count it
                utterances, speakers = utterances + len(item.utterances), speakers + len(item.speakers)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    return utterances, speakers


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, _ = make_parser().parse_known_args(argv)
    try:
        result = run(argv, progress=True)
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(run_counters(result), indent=2, sort_keys=True), file=sys.stderr)
    print("labels: " + ", ".join(output_path(args.output, n) for n in (UTTERANCES, PARQUET, CONVERSATIONS)) +
          f"\ndead letters: {output_path(args.output, DEAD)}\nreport: {output_path(args.output, 'report.html')}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

