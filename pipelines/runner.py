"""Which Beam runner runs a pipeline, and how: this project's defaults for the in-process and Dask runners.

`pipeline_options` turns the pass-through Beam flags into `PipelineOptions` (FnApiRunner when none is named; small Dask
partitions), `grouping_options` fixes the partition count of a pipeline that groups, `release_dask_outputs` works
around the Dask runner keeping every step's outputs, and `wait` finishes a run. Both pipelines use them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions


LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner")
DASK_PARTITION_FLAGS = {"--dask_npartitions", "--dask_partition_size"}
DASK_PARTITION_GROUPS = 4  # default Dask partition: 4 file groups (64 calls in one-call files at the default batch)
DASK_GROUPING_PARTITIONS = 32  # asked of dask for a pipeline that groups (it makes 32 to 63: 2 shuffle stages at most)


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


_beam_apply_dofn: Callable[..., list] | None = None  # Beam's, where `release_dask_outputs` replaced it


def _apply_dofn_and_release(items: Iterable[Any], invoker_args: list, invoker_kwargs: dict, receivers: Any) -> list:
    """Beam's `apply_dofn_to_bundle` (one DoFn over one Dask partition), then the outputs it collected in `receivers`
    dropped: the partition's results are what it returns."""
    apply = _beam_apply_dofn
    if apply is None:  # a worker process: Beam's function was replaced only where the graph was built
        from apache_beam.runners.dask.transform_evaluator import apply_dofn_to_bundle as apply
    try:
        return apply(items, invoker_args, invoker_kwargs, receivers)
    finally:
        receivers.values.clear()


def release_dask_outputs(options: PipelineOptions) -> None:
    """On Beam's Dask runner, let each step's outputs go when its partition is done (other runners: nothing to do).

    Beam 2.77 translates a ParDo into a Dask task whose arguments include a receiver list that collects the step's
    outputs and is never emptied, and a Dask worker keeps a finished task's arguments (its run spec) until the task is
    released, which for Beam's graph (one bag, computed to its final concatenation) is when the whole run ends. So a
    worker held the outputs of every step of every partition it ran: every call it read, as conversations, requests,
    predictions and rows, several KB a call. This swaps the function the translation puts in the graph (before the
    graph is built: `pipeline.run()`) for one that empties the list after the partition; the results are the same.
    Process-wide and idempotent; the workers import the replacement from this module (bioserc is installed there).
    """
    global _beam_apply_dofn
    if not (options.view_as(StandardOptions).runner or "").endswith("DaskRunner"):
        return
    from apache_beam.runners.dask import transform_evaluator

    if transform_evaluator.apply_dofn_to_bundle is not _apply_dofn_and_release:
        _beam_apply_dofn = transform_evaluator.apply_dofn_to_bundle
        transform_evaluator.apply_dofn_to_bundle = _apply_dofn_and_release
