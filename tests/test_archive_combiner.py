"""`ArchiveCombineFn` as a real Beam combiner: `beam.CombineGlobally` on the in-process runner and on Beam's Dask
runner (a local cluster of two worker processes, many small partitions, so partial accumulators are merged across
processes) gives archive.json exactly as the plain accumulator's single pass does.

    .venv/bin/python -m pytest -q tests/test_archive_combiner.py
"""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from test_analytics import random_archive, single_pass

from bioserc.analytics.thresholds import Thresholds
from bioserc.pipelines.analytics import ArchiveCombineFn, write_archive


THRESHOLDS = Thresholds(review_calls=9)
DASK = "apache_beam.runners.dask.dask_runner.DaskRunner"


@pytest.fixture(scope="module")
def summaries() -> list[dict]:
    return random_archive(300, seed=3)


def expected(summaries: list[dict]) -> str:
    return json.dumps(single_pass(summaries, THRESHOLDS.review_calls).extract(THRESHOLDS), sort_keys=True)


def combine(summaries: list[dict], out: Path, beam_args: list[str]) -> dict:
    p = beam.Pipeline(options=PipelineOptions(beam_args))
    _ = (
        p
        | "Calls" >> beam.Create(summaries, reshuffle=False)
        | "Archive" >> beam.CombineGlobally(ArchiveCombineFn(THRESHOLDS))
        | "Write" >> beam.Map(write_archive, str(out))
    )
    result = p.run()
    result.wait_until_finish()
    if getattr(result, "client", None) is not None:  # Beam's Dask runner leaves its client open: not past the cluster
        result.client.close()
    return json.loads(out.read_text())


def test_combine_globally_in_process_equals_the_single_pass(summaries, tmp_path):
    got = combine(summaries, tmp_path / "archive.json", ["--direct_num_workers", "1"])
    assert json.dumps(got, sort_keys=True) == expected(summaries)
    assert got["calls"] == 300 and len(got["review"]) == 9


def test_combine_globally_on_dask_equals_the_single_pass(summaries, tmp_path):
    distributed = pytest.importorskip(
        "distributed", reason="the Dask runner needs the dask extra: pip install 'bioserc[dask]'"
    )
    with distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        env={"OMP_NUM_THREADS": "1"},
    ) as cluster:
        got = combine(
            summaries,
            tmp_path / "archive.json",
            ["--runner", DASK, "--dask_client_address", cluster.scheduler_address, "--dask_partition_size", "16"],
        )  # ~19 partitions: partial accumulators merged
    assert json.dumps(got, sort_keys=True) == expected(summaries)
