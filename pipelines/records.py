"""What flows between the pipelines' steps: batches of work, and (output file, row) records bound for the shards.

Both pipelines must give the same outputs on every Beam runner this project uses, Beam's Dask runner included. That
runner (Beam 2.77) hands every output of a multi-output ParDo to every consumer, drops whatever a DoFn emits from
`finish_bundle` (so `BatchElements`, and with it RunInference's own batching, loses its last batch), computes only the
sink applied last, and collects no metrics. Hence:

* each pipeline is one chain of single-output steps ending in one sink: every step takes a `WorkBatch` and hands on
  a `WorkBatch`, and the records it sets aside for the output files (dead letters, counts) ride along in
  `WorkBatch.records` until the last step emits them with the rows. No Flatten, no branch: Beam's in-process runner
  would buffer a Flatten's whole input before its consumer runs, and the Dask runner would skip any branch but the
  last;
* batches are cut by the reader from groups of files, never by buffering across elements; RunInference runs on them
  as they are (`BatchedModelHandler`);
* counts are ledger records (`ledger`), written into the staging folder beside the rows and summed by the driver, so
  reconciliation does not depend on a runner's metrics; the archive summary travels the same way, as one combiner
  accumulator per batch that the driver merges (`pipelines.analytics`), instead of a `CombineGlobally` branch;
* that runner also keeps every step's outputs of every partition on the workers until the whole run ends (memory
  grows with the archive): `pipelines.runner.release_dask_outputs` lets them go when the partition is done.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from apache_beam.ml.inference.base import ModelHandler


DEAD = "dead_letter.jsonl"
LEDGER = "ledger"  # counts: summed by the driver, never an output file of their own

ExampleT = TypeVar("ExampleT")
PredictionT = TypeVar("PredictionT")
ModelT = TypeVar("ModelT")


class WorkBatch(list):
    """Items that travel and are inferred together, and the records set aside for them so far: (file name, row) pairs
    bound for the shards. `key` names the batch in ledger rows (unique per step)."""

    def __init__(self, key: str, items: Iterable[Any] = (), records: Iterable[tuple[str, Any]] = ()):
        super().__init__(items)
        self.key = key
        self.records = list(records)

    def then(self, items: Iterable[Any], *records: tuple[str, Any]) -> WorkBatch:
        """The next step's batch: `items`, with this batch's records and `records` added."""
        return WorkBatch(self.key, items, [*self.records, *records])


def ledger(step: str, key: str, **counts: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """One ledger record with the non-zero counts (none when all are zero). `step` and `key` make the row unique, so
    two bundles never write identical shards (shard names are content hashes, see `outputs.WriteShards`)."""
    counts = {name: n for name, n in counts.items() if n}
    if counts:
        yield LEDGER, {"step": step, "key": key, **counts}


def sum_ledger(rows: Iterable[dict[str, Any]], totals: dict[str, int] | None = None) -> dict[str, int]:
    totals = {} if totals is None else totals
    for row in rows:
        for name, n in row.items():
            if name not in ("step", "key"):
                totals[name] = totals.get(name, 0) + int(n)
    return totals


class BatchedModelHandler(ModelHandler[WorkBatch, WorkBatch, ModelT], Generic[ExampleT, PredictionT, ModelT]):
    """Runs `inner` on each batch as it comes: WorkBatch[example] -> WorkBatch[(example, prediction)], same key.

    RunInference skips its own batching for this handler (`should_skip_batching`): the element is the batch.
    """

    def __init__(self, inner: ModelHandler[ExampleT, PredictionT, ModelT]):
        super().__init__()
        self.inner = inner

    def load_model(self) -> ModelT:
        return self.inner.load_model()

    def run_inference(
        self, batch: WorkBatch, model: ModelT, inference_args: dict[str, Any] | None = None
    ) -> Iterable[WorkBatch]:
        predictions = list(self.inner.run_inference(batch, model, inference_args)) if batch else []
        return [batch.then(zip(batch, predictions, strict=True))]

    def get_num_bytes(self, batch: Sequence[ExampleT]) -> int:
        return self.inner.get_num_bytes(batch)

    def get_metrics_namespace(self) -> str:
        return self.inner.get_metrics_namespace()

    def should_skip_batching(self) -> bool:
        return True

    def share_model_across_processes(self) -> bool:
        return self.inner.share_model_across_processes()

    def model_copies(self) -> int:
        return self.inner.model_copies()
