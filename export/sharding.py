"""Keep every file of an exported graph under a size a git host accepts without LFS.

GitHub warns at 50 MB per file and refuses 100 MB; the 4-bit mpnet encoder is 74 MiB in one protobuf. ONNX stores
large tensors as "external data" (location, offset, length beside the graph), which onnxruntime reads relative to the
graph file, so the graph's initializers are packed greedily into `STEM-NN.data` shards of at most `max_bytes` each
and the graph keeps only its structure and small tensors. The shards are ordinary artifact files: the manifest lists
and hashes them like any other, and loaders open the graph by path as before. A tensor larger than `max_bytes` (an
fp32 mpnet word table, 94 MB) cannot be split and gets a shard of its own.
"""

from __future__ import annotations

import os

import onnx
from onnx import external_data_helper


SHARD_BYTES = 45 * 1000 * 1000  # under GitHub's 50 MB warning, with room for the graph file itself
INLINE_BYTES = 1024  # tensors smaller than this stay in the graph (onnx's own default threshold)


def shard_graph(path: str, max_bytes: int = SHARD_BYTES) -> list[str]:
    """Rewrite the ONNX graph at `path` with its initializers in `max_bytes` shards beside it when the file is larger
    than `max_bytes`; return the names of the files its weights are in (none for a graph that holds them all)."""
    if os.path.getsize(path) <= max_bytes:
        return _locations(onnx.load(path, load_external_data=False))
    model = onnx.load(path)  # reads any external data it already has
    directory, stem = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
    shards: list[str] = []
    used = 0
    for tensor in model.graph.initializer:
        size = len(tensor.raw_data)
        if size < INLINE_BYTES:
            continue
        if not shards or used + size > max_bytes:
            shards.append(f"{stem}-{len(shards) + 1:02d}.data")
            used = 0
            stale = os.path.join(directory, shards[-1])
            if os.path.exists(stale):  # onnx appends to a shard: start each one empty
                os.remove(stale)
        external_data_helper.set_external_data(tensor, location=shards[-1])
        used += size
    onnx.save_model(model, path)
    onnx.checker.check_model(path)
    return shards


def _locations(model: onnx.ModelProto) -> list[str]:
    """The external data files `model` reads, in order of first use."""
    found = (
        entry.value for tensor in model.graph.initializer for entry in tensor.external_data if entry.key == "location"
    )
    return list(dict.fromkeys(found))
