"""Sharded graphs: the weights move into size-capped files beside the graph, which computes exactly the same."""

from __future__ import annotations

import numpy as np
import pytest


onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bioserc.export.sharding import shard_graph  # noqa: E402


def three_layers(path: str, rng: np.random.Generator, widths: tuple[int, ...] = (64, 64, 64, 64)) -> None:
    """x -> MatMul -> MatMul -> MatMul: three 16 KB weights and a tiny bias that stays in the graph."""
    weights = [rng.normal(size=(a, b)).astype(np.float32) for a, b in zip(widths, widths[1:], strict=False)]
    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
    inits.append(numpy_helper.from_array(np.ones(widths[-1], np.float32), "bias"))
    nodes = [
        helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}"]) for i in range(len(weights))
    ]
    nodes.append(helper.make_node("Add", [f"h{len(weights)}", "bias"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", widths[-1]])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def run(path: str, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_weights_move_into_capped_shards_and_outputs_are_identical(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "encoder.onnx"
    three_layers(str(path), rng)
    x = rng.normal(size=(5, 64)).astype(np.float32)
    before = run(str(path), x)

    shards = shard_graph(str(path), max_bytes=40_000)  # two 16 KB weights fit a shard, the third starts another

    assert shards == ["encoder-01.data", "encoder-02.data"]
    assert [(tmp_path / s).stat().st_size for s in shards] == [2 * 64 * 64 * 4, 64 * 64 * 4]
    assert path.stat().st_size < 1024  # the graph keeps its structure and the 256-byte bias only
    assert np.array_equal(run(str(path), x), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder-01.data", "encoder-02.data", "encoder.onnx"]


def test_a_graph_that_fits_is_left_alone_and_resharding_replaces_the_shards(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "head.onnx"
    three_layers(str(path), rng)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    before, raw = run(str(path), x), path.read_bytes()

    assert shard_graph(str(path)) == []  # 49 KB: far under the default cap
    assert path.read_bytes() == raw

    shards = shard_graph(str(path), max_bytes=20_000)
    assert shards == ["head-01.data", "head-02.data", "head-03.data"]
    # an already sharded graph (now a graph file under the cap) is kept as it is, its shards named again
    assert shard_graph(str(path), max_bytes=20_000) == shards
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*shards, "head.onnx"])
    assert np.array_equal(run(str(path), x), before)


def test_a_tensor_over_the_cap_gets_a_shard_of_its_own(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "g.onnx"
    three_layers(str(path), rng, widths=(64, 256, 16, 16))  # 64 KB, 16 KB, 1 KB
    x = rng.normal(size=(2, 64)).astype(np.float32)
    before = run(str(path), x)

    shards = shard_graph(str(path), max_bytes=30_000)

    sizes = [(tmp_path / s).stat().st_size for s in shards]
    assert sizes == [64 * 256 * 4, 256 * 16 * 4 + 16 * 16 * 4]
    assert np.array_equal(run(str(path), x), before)
