"""The bio steps: `BioModelHandler` (one LLM backend per worker process, for RunInference) and `BioRecords`.

`bioserc bios` runs Read -> RunInference(BatchedModelHandler(BioModelHandler)) -> BioRecords -> WriteShards;
`bioserc label` runs the same handler when it generates bios itself (then `label_steps.AttachGeneratedBios`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler

from bioserc.bios.base import GenerationConfig
from bioserc.bios.extract import BioExtractor, BioResult, paper_bios
from bioserc.pipelines.outputs import BIOS, PAPER
from bioserc.pipelines.records import DEAD, WorkBatch, ledger
from bioserc.schema import Conversation


GENERATION_FAILED = "generation failed:"  # how `BioExtractor.generate` marks the results of a batch the backend failed


class BioModelHandler(ModelHandler[Conversation, list[BioResult], BioExtractor]):
    """Loads one LLM backend per worker process and turns a batch of conversations into bio results."""

    def __init__(
        self,
        backend: str,
        model: str,
        backend_options: dict[str, Any],
        config: GenerationConfig,
        words: int,
        cache_dir: str | None,
        max_batch_size: int = 4,
        progress_total: int = 0,
        profile: str = "text",
        labels: Sequence[str] | None = None,
    ):
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

    def run_inference(
        self, batch: Sequence[Conversation], model: BioExtractor, inference_args: dict[str, Any] | None = None
    ) -> Iterable[list[BioResult]]:
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
        results = list(
            model.generate_chunks(
                requests, self.backend_options.get("batch_size"), None if self._bar is None else self._bar.update
            )
        )
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

    def process(self, batch: WorkBatch):
        yield from batch.records
        c = dict.fromkeys(("bios_generated", "bios_cached", "bios_dead_lettered"), 0)
        for conv, results in batch:
            for result in results:
                if result.error:
                    c["bios_dead_lettered"] += 1
                    yield (
                        DEAD,
                        {
                            "stage": "bios",
                            "record": result.conversation_id,
                            "reason": result.error,
                            **result.to_dict(),
                        },
                    )
                else:
                    c["bios_cached" if result.cached else "bios_generated"] += 1
                    yield BIOS, result.to_dict()
            yield PAPER, {"conversation_id": conv.id, "bios": paper_bios([conv], results)[conv.id]}
        yield from ledger("bios", batch.key, **c)
