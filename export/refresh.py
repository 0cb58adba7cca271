"""Bring an exported classifier up to date without its training checkpoint: embedding tables gathered before they
are dequantized, graphs sharded under the file cap, model card and manifest written again, seed results replaced
when more seeds have finished.

    bioserc export refresh serving_artifacts/default --seed-results runs/sweeps/meld_profiles/results.json \\
        --seed-variant meld/mpnet

Checkpoints live in runs/, which a fresh machine does not have; the shipped artifacts do. The weights are not
touched (sharding moves their bytes, and a table gathered first gives the same floats), so the parity, metrics and
source checkpoint the export measured stay in the manifest, which is written again with every file's new checksum.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from bioserc.artifacts import verify_artifact, write_manifest
from bioserc.export._staging import publish
from bioserc.export.model_card import load_seed_results, write_model_card
from bioserc.export.sharding import shard_graph
from bioserc.export.weight_only import gather_rows_first
from bioserc.fsutil import staging_dir


WRITTEN = ("manifest_version", "kind", "created", "files")  # write_manifest's own keys


def refresh_classifier(
    directory: str, seed_results: str | None = None, seed_variant: str | None = None
) -> dict[str, Any]:
    """Re-shard, re-card and re-manifest the onnx-classifier at `directory` in place; return the new manifest.

    `seed_results`/`seed_variant` as in `export_classifier`; without them the manifest's seed results are kept.
    """
    if (seed_results is None) != (seed_variant is None):
        raise ValueError("seed_results (a results.json) and seed_variant (its DATASET/VARIANT row) go together")
    manifest = verify_artifact(directory, "onnx-classifier")
    seeds = manifest.get("seed_results")
    if seed_results is not None and seed_variant is not None:
        seeds = load_seed_results(seed_results, seed_variant)
        if seeds["dataset"] != manifest.get("label_set"):
            raise ValueError(
                f"seed results {seed_results}: row {seed_variant} is for {seeds['dataset']}, but "
                f"{directory} is a {manifest.get('label_set')} model"
            )
    tmp = staging_dir(directory)
    try:
        shutil.copytree(directory, tmp, dirs_exist_ok=True)
        fields = {key: value for key, value in manifest.items() if key not in WRITTEN}  # the card reads what it needs
        graphs = [os.path.join(tmp, graph) for graph in manifest["graphs"].values()]
        for graph in graphs:
            gather_rows_first(graph)
        fields["external_data"] = [shard for graph in graphs for shard in shard_graph(graph)]
        fields["seed_results"] = seeds
        write_model_card(
            tmp,
            fields,
            fields.get("metrics", {}),
            fields["parity"],
            fields.get("precision", "fp32"),
            directory,
            seeds,
            fields.get("quantized", []),
        )
        new = write_manifest(tmp, "onnx-classifier", **fields)
        publish(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return new
