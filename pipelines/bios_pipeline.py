"""Beam pipeline: transcript archive -> one biography per (conversation, speaker).

    bioserc bios examples/transcripts -o out/bios
    bioserc bios examples/transcripts -o out/bios --scope per-conversation --batch-size 32
    bioserc bios 'gs://bucket/calls/*.json' -o gs://bucket/bios --runner DataflowRunner --project P \\
        --region europe-west1 --temp_location gs://bucket/tmp --extra_package dist/bioserc-0.1.0-py3-none-any.whl

(the wheel: `python -m pip wheel --no-deps . -w dist`; Dataflow needs `pip install 'bioserc[gcp]'` on this machine.)

Read (any reader) -> key by conversation -> RunInference with `BioModelHandler` (Beam batches conversations; one
model per worker process) -> bios.jsonl, bios.paper.json ({conv_id: [bio per utterance]}, the reference code's
format) and dead_letter.jsonl. Every (conversation, speaker) ends in exactly one of bios.jsonl and dead_letter.jsonl.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from bioserc.bios.backend import GenerationConfig
from bioserc.bios.backends import KINDS
from bioserc.bios.extract import MODES, BioExtractor, BioResult, paper_bios
from bioserc.labels import LABEL_SETS
from bioserc.pipelines.io import DEAD_LETTER, NAMESPACE, ReadConversations, WriteJsonl, output_path
from bioserc.pipelines.options import add_renamed, at_least, parse_pipeline_args, pipeline_parser
from bioserc.readers import reader_names
from bioserc.readers.roles import add_role_args
from bioserc.schema import Conversation


logger = logging.getLogger(__name__)


class BioModelHandler(ModelHandler[Conversation, list[BioResult], BioExtractor]):
    """Loads one LLM backend per worker process and turns a batch of conversations into bio results."""

    def __init__(self, backend: str, model: str, backend_options: dict[str, Any], config: GenerationConfig,
                 mode: str, words: int, cache_dir: str | None, max_batch_size: int = 4, progress_total: int = 0):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self.backend, self.model, self.backend_options = backend, model, backend_options
        self.config, self.mode, self.words, self.cache_dir = config, mode, words, cache_dir
        self.progress_total = progress_total
        self._bar = None

    def load_model(self) -> BioExtractor:
        from bioserc.bios.backends import make_backend
        from bioserc.bios.cache import BioCache

        backend = make_backend(self.backend, self.model, **self.backend_options)
        cache = BioCache(self.cache_dir) if self.cache_dir else None
        if self.progress_total:
            from tqdm import tqdm

            self._bar = tqdm(total=self.progress_total, desc="bios", unit="bio")
        return BioExtractor(backend, self.config, self.mode, self.words, cache)

    def run_inference(self, batch: Sequence[Conversation], model: BioExtractor,
                      inference_args: dict[str, Any] | None = None) -> Iterable[list[BioResult]]:
        by_conv: dict[str, list[BioResult]] = {c.id: [] for c in batch}
        requests = []
        for conv in batch:
            done, todo = model.plan(conv)
            by_conv[conv.id] += done
            requests += todo
        for result in model.generate(requests):
            by_conv[result.conversation_id].append(result)
        if self._bar is not None:
            self._bar.update(sum(len(r) for r in by_conv.values()))
        return [by_conv[c.id] for c in batch]

    def get_metrics_namespace(self) -> str:
        return "bioserc_bios"


class _SplitResults(beam.DoFn):
    """Successful bios to the main output, failures to the dead letter; counts both."""

    def __init__(self):
        self.counters = {k: beam.metrics.Metrics.counter(NAMESPACE, k)
                         for k in ("bios_generated", "bios_cached", "bios_dead_lettered")}

    def process(self, keyed: tuple[str, list[BioResult]]):
        for result in keyed[1]:
            if result.error:
                self.counters["bios_dead_lettered"].inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"stage": "bios", "record": result.conversation_id,
                                                             "reason": result.error, **result.to_dict()})
            else:
                self.counters["bios_cached" if result.cached else "bios_generated"].inc()
                yield result


def _paper_entry(joined: tuple[str, dict[str, list]]) -> Iterable[tuple[str, list[str]]]:
    conv_id, parts = joined
    for conv in parts["conversation"]:
        yield from paper_bios([conv], parts["bios"]).items()


class ExtractBios(beam.PTransform):
    """Conversations -> (bios, dead letters)."""

    def __init__(self, handler: BioModelHandler):
        super().__init__()
        self.handler = handler

    def expand(self, conversations):
        return (
            conversations
            | "KeyByConversation" >> beam.Map(lambda c: (c.id, c))
            | "Generate" >> RunInference(KeyedModelHandler(self.handler))
            | "Split" >> beam.ParDo(_SplitResults()).with_outputs(DEAD_LETTER, main="bios")
        )


def reader_options(args: argparse.Namespace) -> dict[str, Any]:
    """What the readers need from a pipeline command line (label set, speaker and channel roles)."""
    return {"dataset": args.dataset, "speaker_roles": args.speaker_roles, "channel_roles": args.channel_roles}


def make_parser() -> argparse.ArgumentParser:
    """`bioserc bios`'s own flags; parse with `parse_pipeline_args`, which passes Beam's flags through."""
    p = pipeline_parser("bioserc bios", __doc__)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs; local or gs://")
    p.add_argument("-o", "--output", required=True, help="output directory (local or gs://)")
    p.add_argument("--format", default="auto", choices=["auto", *reader_names()],
                   help="input format; auto detects it per file from its name and first bytes")
    p.add_argument("--dataset", choices=sorted(LABEL_SETS),
                   help="label set for BiosERC JSON files not named after their dataset")
    add_role_args(p)  # the same speaker names as `bioserc label` gives them, so its --bios file matches
    g = p.add_argument_group("LLM (`bioserc label` takes the same flags as --bio-backend, --bio-model, ...)")
    g.add_argument("--backend", default="transformers", choices=KINDS, help="LLM runtime")
    g.add_argument("--model", default="smollm2",
                   help="embedded name (smollm2), a local HF/ONNX folder, or the served model name for openai")
    g.add_argument("--base-url", help="OpenAI-compatible server for --backend openai (vLLM, trtllm-serve)")
    g.add_argument("--scope", default="per-speaker", choices=MODES, dest="mode",
                   help="per-speaker: one prompt per speaker (the paper); per-conversation: one prompt for all")
    g.add_argument("--words", type=at_least(1), default=60, help="word limit asked for in the prompt")
    g.add_argument("--max-new-tokens", type=at_least(1), default=96, help="generation limit per bio")
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (use with --seed)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--batch-size", type=at_least(1), default=16, metavar="N", help="prompts per LLM generate call")
    g.add_argument("--conversations-per-batch", type=at_least(1), default=16, metavar="N",
                   help="conversations Beam hands to one inference call")
    g.add_argument("--cache", metavar="DIR",
                   help="bio cache directory shared across runs; 'none' disables it (default: OUTPUT/cache)")
    add_renamed(g, "--mode", "use --scope per-speaker|per-conversation (bio_mode is the model's bio head)")
    return p


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.backend == "openai":
        if not args.base_url:
            raise SystemExit("--backend openai needs --base-url (e.g. http://localhost:8000)")
        return {"base_url": args.base_url}
    return {"batch_size": args.batch_size}


def build(pipeline: beam.Pipeline, args: argparse.Namespace, progress_total: int = 0) -> None:
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed)
    cache = None if args.cache == "none" else (args.cache or output_path(args.output, "cache"))
    handler = BioModelHandler(args.backend, args.model, backend_options(args), config, args.mode, args.words, cache,
                              max_batch_size=args.conversations_per_batch, progress_total=progress_total)
    read = pipeline | "Read" >> ReadConversations(args.inputs, args.format, reader_options(args))
    bios = read.main | "Bios" >> ExtractBios(handler)
    _ = bios.bios | "BioRows" >> beam.Map(BioResult.to_dict) | "WriteBios" >> WriteJsonl(
        output_path(args.output, "bios.jsonl"))
    paper = (
        {"conversation": read.main | "KeyConv" >> beam.Map(lambda c: (c.id, c)),
         "bios": bios.bios | "KeyBio" >> beam.Map(lambda r: (r.conversation_id, r))}
        | "Join" >> beam.CoGroupByKey()
        | "PaperFormat" >> beam.FlatMap(_paper_entry)
        | "ToDict" >> beam.combiners.ToDict()
    )
    _ = paper | "PaperJson" >> beam.Map(lambda d: json.dumps(d, ensure_ascii=False, sort_keys=True)) | \
        "WritePaper" >> beam.io.WriteToText(output_path(args.output, "bios.paper.json"), shard_name_template="",
                                            num_shards=1)
    _ = (read[DEAD_LETTER], bios[DEAD_LETTER]) | "AllDeadLetters" >> beam.Flatten() | "WriteDeadLetter" >> \
        WriteJsonl(output_path(args.output, "dead_letter.jsonl"))


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    options = PipelineOptions(beam_args)
    if not options.view_as(StandardOptions).runner:
        # The DirectRunner first tries to download the Prism runner; FnApiRunner is what it falls back to anyway.
        options.view_as(StandardOptions).runner = "FnApiRunner"
    options.view_as(SetupOptions).save_main_session = False
    return options


def run(argv: Sequence[str] | None = None, progress_total: int = 0) -> beam.runners.runner.PipelineResult:
    """Parse strictly (a usage error before anything runs), build and run the pipeline."""
    args, beam_args = parse_pipeline_args(make_parser(), sys.argv[1:] if argv is None else argv)
    pipeline = beam.Pipeline(options=pipeline_options(beam_args))
    build(pipeline, args, progress_total)
    result = pipeline.run()
    result.wait_until_finish()
    return result
