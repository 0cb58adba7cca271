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
import copy
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from bioserc.bios.backend import GenerationConfig
from bioserc.bios.backends import KINDS
from bioserc.bios.extract import BioExtractor, BioResult, paper_bios
from bioserc.bios.profiles import PREFILL_OUTPUTS, PROFILES, check_profile
from bioserc.labels import LABEL_SETS
from bioserc.pipelines.io import FileGroups, ParseFiles, output_path
from bioserc.pipelines.options import add_renamed, at_least, json_object, parse_pipeline_args, pipeline_parser
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
from bioserc.pipelines.records import DEAD, Batch, BatchedModelHandler, ledger, release_dask_outputs
from bioserc.readers import reader_names
from bioserc.readers.roles import add_role_args
from bioserc.readers.sources import reader_options
from bioserc.schema import Conversation


logger = logging.getLogger(__name__)

LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner")
DASK_PARTITION_FLAGS = {"--dask_npartitions", "--dask_partition_size"}
DASK_PARTITION_GROUPS = 4  # default Dask partition: 4 file groups (64 calls in one-call files at the default batch)
DASK_GROUPING_PARTITIONS = 32  # asked of dask for a pipeline that groups (it makes 32 to 63: 2 shuffle stages at most)
GENERATION_FAILED = "generation failed:"  # how `BioExtractor.generate` marks the results of a batch the backend failed
THREADED = ("transformers", "onnx")  # in-process CPU runtimes; a server or TensorRT-LLM picks its own threads
# The usage error of the removed --scope/--mode (bios) and --bio-scope/--bio-mode (label) flags.
SCOPE_REMOVED = ("every speaker gets its own prompt, and a conversation's prompts share the transcript's "
                 "prefill, which is faster than one prompt per conversation was (see docs/BENCHMARKS.md); drop the "
                 "flag")


class BioModelHandler(ModelHandler[Conversation, list[BioResult], BioExtractor]):
    """Loads one LLM backend per worker process and turns a batch of conversations into bio results."""

    def __init__(self, backend: str, model: str, backend_options: dict[str, Any], config: GenerationConfig,
                 words: int, cache_dir: str | None, max_batch_size: int = 4, progress_total: int = 0,
                 profile: str = "text", labels: Sequence[str] | None = None):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self.backend, self.model, self.backend_options = backend, model, backend_options
        self.config, self.words, self.cache_dir = config, words, cache_dir
        self.profile, self.labels = profile, labels
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
        return BioExtractor(backend, self.config, self.words, cache, self.profile, self.labels)

    def run_inference(self, batch: Sequence[Conversation], model: BioExtractor,
                      inference_args: dict[str, Any] | None = None) -> Iterable[list[BioResult]]:
        """One generate call for the whole batch; if the backend fails on it, each conversation is retried alone, so
        a conversation the LLM cannot take costs only its own bios (bios that did come out are cached by then)."""
        by_conv: dict[str, list[BioResult]] = {c.id: [] for c in batch}
        requests = []
        for conv in batch:
            done, todo = model.plan(conv)
            by_conv[conv.id] += done
            requests += todo
        cached = sum(len(r) for r in by_conv.values())
        if self._bar is not None and cached:
            self._bar.update(cached)
        # Local backends: chunks of --batch-size prompts, so the bar moves per generate call; a server takes them all
        results = list(model.generate_chunks(requests, self.backend_options.get("batch_size"),
                                             None if self._bar is None else self._bar.update))
        if len(batch) > 1 and any(r.error and r.error.startswith(GENERATION_FAILED) for r in results):
            if self._bar is not None:  # the retries count their own bios again
                self._bar.update(-cached - len(results))
            return [r for conv in batch for r in self.run_inference([conv], model, inference_args)]
        for result in results:
            by_conv[result.conversation_id].append(result)
        return [by_conv[c.id] for c in batch]

    def get_metrics_namespace(self) -> str:
        return "bioserc_bios"


class BioRecords(beam.DoFn):
    """A batch of (conversation, bio results) -> the records it carries, then bios rows, dead letters for failures,
    the paper-format entry of each conversation, and the batch's counts."""

    def process(self, batch: Batch):
        yield from batch.records
        c = dict.fromkeys(("bios_generated", "bios_cached", "bios_dead_lettered"), 0)
        for conv, results in batch:
            for result in results:
                if result.error:
                    c["bios_dead_lettered"] += 1
                    yield DEAD, {"stage": "bios", "record": result.conversation_id, "reason": result.error,
                                 **result.to_dict()}
                else:
                    c["bios_cached" if result.cached else "bios_generated"] += 1
                    yield BIOS, result.to_dict()
            yield PAPER, {"conversation_id": conv.id, "bios": paper_bios([conv], results)[conv.id]}
        yield from ledger("bios", batch.key, **c)


def make_parser() -> argparse.ArgumentParser:
    """`bioserc bios`'s own flags; parse with `parse_pipeline_args`, which passes Beam's flags through."""
    p = pipeline_parser("bioserc bios", __doc__)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs; local or gs://")
    p.add_argument("-o", "--output", required=True, help="output directory (local or gs://)")
    p.add_argument("--format", default="auto", choices=["auto", *reader_names()],
                   help="input format; auto detects it per file from its name and first bytes")
    p.add_argument("--dataset", choices=sorted(LABEL_SETS),
                   help="label set for BiosERC JSON files not named after their dataset, and the label words "
                   "--profile scores scores (needed there)")
    add_role_args(p)  # the same speaker names as `bioserc label` gives them, so its --bios file matches
    g = p.add_argument_group("LLM (`bioserc label` takes the same flags as --bio-backend, --bio-model, ...)")
    g.add_argument("--backend", default="transformers", choices=KINDS, help="LLM runtime")
    g.add_argument("--model", default="smollm2",
                   help="embedded name (smollm2), a local HF/ONNX folder, or the served model name for openai")
    add_server_args(g)
    g.add_argument("--profile", default="text", choices=PROFILES,
                   help="what each (conversation, speaker) gets: text (the bio, prompt bio-v1), emotion (mood, what "
                   "changes it, reactions to others; emotion-v1), scores (no decoding: each --dataset label's "
                   "probability as the answer to how the speaker feels overall; scores-v1) or latent (the LLM's "
                   "final hidden state at the end of that question); scores and latent need a local backend")
    g.add_argument("--words", type=at_least(1), default=60, help="word limit asked for in the prompt")
    g.add_argument("--max-new-tokens", type=at_least(1), default=96, help="generation limit per bio")
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (use with --seed)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--batch-size", type=at_least(1), default=32, metavar="N",
                   help="prompts per LLM generate call (32: 5.1x one-at-a-time on MELD, docs/BENCHMARKS.md)")
    g.add_argument("--threads", type=at_least(0), default=0, metavar="N",
                   help="CPU threads of the LLM per worker process (default 0: automatic)")
    g.add_argument("--conversations-per-batch", type=at_least(1), default=16, metavar="N",
                   help="conversations Beam hands to one inference call")
    g.add_argument("--cache", metavar="DIR",
                   help="bio cache directory shared across runs; 'none' disables it (default: OUTPUT/cache)")
    add_renamed(g, "--scope", SCOPE_REMOVED, removed=True)
    add_renamed(g, "--mode", SCOPE_REMOVED, removed=True)
    g = p.add_argument_group("run")
    g.add_argument("--allow-skips", action="store_true",
                   help="exit 0 even if some bios or input records were dead-lettered")
    return p


def add_server_args(g: argparse._ArgumentGroup, prefix: str = "") -> None:
    """The openai backend's flags: `bioserc bios` adds --base-url, ...; `bioserc label` --bio-base-url, ..."""
    flag, see = f"--{prefix}", " (bios --{})" if prefix else ""
    g.add_argument(flag + "base-url", metavar="URL",
                   help="OpenAI-compatible server for the openai backend: vLLM, SGLang, trtllm-serve"
                   + see.format("base-url"))
    g.add_argument(flag + "endpoint", default="chat", choices=("chat", "completions"),
                   help="openai: chat (/v1/chat/completions; vLLM, SGLang) or completions (/v1/completions, the "
                   "prompt rendered here with the --tokenizer folder's chat template; trtllm-serve)"
                   + see.format("endpoint"))
    g.add_argument(flag + "tokenizer", metavar="DIR",
                   help="openai: the served model's local folder, for exact token counts; needed by --endpoint "
                   "completions" + see.format("tokenizer"))
    g.add_argument(flag + "max-context", type=at_least(64), default=8192, metavar="N",
                   help="openai: the served model's context length in tokens" + see.format("max-context"))
    g.add_argument(flag + "request-timeout", type=at_least(0.1, float), default=300.0, metavar="S",
                   help="openai: seconds one request may take before it is retried" + see.format("request-timeout"))
    g.add_argument(flag + "retries", type=at_least(0), default=5, metavar="N",
                   help="openai: retries of a request after connection errors, timeouts, 429 and 5xx (exponential "
                   "backoff, Retry-After honoured; other 4xx fail that bio alone)" + see.format("retries"))
    g.add_argument(flag + "concurrency", type=at_least(1), default=32, metavar="N",
                   help="openai: requests in flight per worker process" + see.format("concurrency"))
    g.add_argument(flag + "api-key-env", metavar="VAR",
                   help="openai: environment variable holding the API key (default: OPENAI_API_KEY when set)"
                   + see.format("api-key-env"))
    g.add_argument(flag + "extra-body", type=json_object, metavar="JSON",
                   help="openai: server-specific fields added to every request, e.g. "
                   "'{\"repetition_penalty\": 1.1}' for vLLM/SGLang" + see.format("extra-body"))


def backend_options(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """`make_backend`'s options from `bioserc bios` flags, or `bioserc label` ones with prefix "bio_"."""
    def get(name: str) -> Any:
        return getattr(args, prefix + name)

    if get("backend") in THREADED:
        return {"batch_size": get("batch_size"), "threads": get("threads") or None}
    if get("backend") != "openai":
        return {"batch_size": get("batch_size")}
    flag = "--" + prefix.replace("_", "-")
    if not get("base_url"):
        raise SystemExit(f"{flag}backend openai needs {flag}base-url (e.g. http://localhost:8000)")
    if get("endpoint") == "completions" and not get("tokenizer"):
        raise SystemExit(f"{flag}endpoint completions needs {flag}tokenizer DIR (the served model's local folder)")
    return {"base_url": get("base_url"), "endpoint": get("endpoint"), "tokenizer_path": get("tokenizer"),
            "max_context": get("max_context"), "timeout_s": get("request_timeout"), "max_retries": get("retries"),
            "concurrency": get("concurrency"), "api_key_env": get("api_key_env"), "extra_body": get("extra_body")}


def build(pipeline: beam.Pipeline, args: argparse.Namespace, staging: str, progress_total: int = 0) -> None:
    release_dask_outputs(pipeline.options)  # before the graph is built
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed)
    cache = None if args.cache == "none" else (args.cache or output_path(args.output, "cache"))
    labels = LABEL_SETS[args.dataset].labels if args.dataset else None
    handler = BioModelHandler(args.backend, args.model, backend_options(args), config, args.words, cache,
                              max_batch_size=args.conversations_per_batch, progress_total=progress_total,
                              profile=args.profile, labels=labels)
    _ = (pipeline
         | "Files" >> FileGroups(args.inputs, args.conversations_per_batch)
         | "Read" >> beam.ParDo(ParseFiles(args.format, reader_options(args), batch=args.conversations_per_batch))
         | "Generate" >> RunInference(BatchedModelHandler(handler))
         | "Split" >> beam.ParDo(BioRecords())
         | "Write" >> WriteShards(staging))  # one chain, one sink (see pipelines.records)


@dataclass
class BiosRun:
    """A finished `bioserc bios` run: what its steps counted (summed from their ledger rows), the exit status for the
    shell and the one-line summary printed last."""

    counters: dict[str, int]
    exit_code: int
    message: str
    output: str
    where: str  # the output folder, or the failed-run folder that kept this run's files


def assemble(staging: str) -> None:
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
                        out.write((("" if first else ", ") + json.dumps(entry["conversation_id"], ensure_ascii=False)
                                   + ": " + json.dumps(entry["bios"], ensure_ascii=False)).encode("utf-8"))
                        first = False
        out.write(b"}\n")


def shows_progress(pipeline: beam.Pipeline) -> bool:
    """Progress bars only where the workers write to this terminal: Beam's local runners, not Dask or Dataflow."""
    return type(pipeline.runner).__name__ in LOCAL_RUNNERS


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Beam's options from the pass-through flags, with this project's defaults for the in-process and Dask runners.

    On Dask a partition of the first collection (file groups) runs the whole chain of steps as one task (dask fuses
    it), and Beam's Dask runner holds each step's output for the partition in memory: small partitions keep memory
    flat and spread even a small archive over the workers.
    """
    runner = PipelineOptions(beam_args).view_as(StandardOptions).runner or ""
    if runner.endswith("DaskRunner") and not {a.split("=")[0] for a in beam_args} & DASK_PARTITION_FLAGS:
        beam_args = [*beam_args, "--dask_partition_size", str(DASK_PARTITION_GROUPS)]
    options = PipelineOptions(beam_args)
    if not options.view_as(StandardOptions).runner:
        # The DirectRunner first tries to download the Prism runner; FnApiRunner is what it falls back to anyway.
        options.view_as(StandardOptions).runner = "FnApiRunner"
    options.view_as(SetupOptions).save_main_session = False
    return options


def grouping_options(options: PipelineOptions) -> PipelineOptions:
    """`options` for a pipeline with a GroupByKey: on Dask, a fixed number of partitions whatever the archive size.

    Beam's Dask runner makes a GroupByKey dask's task-based shuffle, whose task count grows as n·√n with the n
    partitions: in partitions of 4 file groups, 2,700 tasks for 10,000 calls and 60,000 for 100,000, and the scheduler
    and the workers hold state for each (peak RSS of both grew with the archive; freed worker heap is not returned
    before the next pipeline). With `DASK_GROUPING_PARTITIONS` the graph has at most ~1,300 tasks at any size (about
    680 for 10,000 calls and for 100,000); only the small records it groups grow with the archive.
    """
    if not (options.view_as(StandardOptions).runner or "").endswith("DaskRunner"):
        return options
    from apache_beam.runners.dask.dask_runner import DaskOptions

    grouping = copy.deepcopy(options)
    dask = grouping.view_as(DaskOptions)
    dask.npartitions, dask.partition_size = DASK_GROUPING_PARTITIONS, None  # the two flags exclude each other
    return grouping


def wait(result: beam.runners.runner.PipelineResult) -> None:
    """Wait for a run to finish; then close the Dask client that Beam's Dask runner opened for it (it never does)."""
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # DaskRunnerResult.client
        if client is not None:
            client.close()


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
    c = {name: counters.get(name, 0) for name in ("conversations_read", "bios_generated", "bios_cached",
                                                   "bios_dead_lettered", "input_records_dead_lettered")}
    made = c["bios_generated"] + c["bios_cached"]
    dead = c["bios_dead_lettered"] + c["input_records_dead_lettered"]
    where = args.output
    if not made and FileSystems.exists(output_path(args.output, BIOS)):  # never replace good bios with a failed run's
        where = keep_failed(staging, args.output)
    else:
        promote(staging, args.output, (PAPER, DEAD, BIOS))
    code = 1 if not made or (dead and not args.allow_skips) else 0
    message = (f"wrote {made} bios ({c['bios_cached']} from the cache) for {c['conversations_read']} calls; "
               f"dead-lettered {c['bios_dead_lettered']} bios and {c['input_records_dead_lettered']} input records")
    if not made:
        message = f"error: no bio was produced ({message})"
    elif code:
        message += "; exit 1 because records were dead-lettered (see dead_letter.jsonl; --allow-skips accepts that)"
    return BiosRun(counters, code, message, args.output, where)


def run(argv: Sequence[str] | None = None, progress: bool = False) -> BiosRun:
    """Parse strictly (a usage error before anything runs), lock the output, build and run the pipeline, assemble
    its outputs and finish on the driver; `progress` shows a bar on the local runners."""
    parser = make_parser()
    args, beam_args = parse_pipeline_args(parser, sys.argv[1:] if argv is None else argv)
    try:  # before anything loads: a profile the backend or label set cannot make is a usage error
        check_profile(args.profile, args.backend, PREFILL_OUTPUTS.get(args.backend, ()),
                      LABEL_SETS[args.dataset].labels if args.dataset else None)
    except ValueError as err:
        parser.error(str(err))
    with output_lock(args.output):
        for name in remove_leftovers(args.output):
            logger.warning("removed %s left in %s by an earlier run that did not finish", name, args.output)
        staging = staging_folder(args.output)
        pipeline = beam.Pipeline(options=pipeline_options(beam_args))
        build(pipeline, args, staging, count_speakers(args) if progress and shows_progress(pipeline) else 0)
        try:
            wait(pipeline.run())
            assemble(staging)
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
    print_summary(result.counters, f"bios: {output_path(result.where, BIOS)}  dead letters: "
                  f"{output_path(result.where, DEAD)}", result.where, result.output, result.message)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
