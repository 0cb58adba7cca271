"""Weight-only int8/int4: the rewritten graph computes what the fp32 one does, within the rounding error."""

from __future__ import annotations

import numpy as np
import pytest


onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bioserc.export.weight_only import dequantize_weights, gather_rows_first, quantize_weights  # noqa: E402


def embed_and_project(path: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """ids -> Gather(table) -> MatMul(w) + bias: an encoder's first and last steps in miniature."""
    weights = {
        "table": rng.normal(size=(200, 48)).astype(np.float32),
        "w": rng.normal(size=(48, 64)).astype(np.float32),
        "bias": rng.normal(size=(64,)).astype(np.float32),
    }
    weights["w"][:, 5] = 0.0  # an all-zero output channel must stay zero
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("MatMul", ["emb", "w"], ["proj"]),
        helper.make_node("Add", ["proj", "bias"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 64])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return weights


def run(path: str, ids: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


def test_weights_become_int8_and_outputs_stay_close(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "g.onnx")
    weights = embed_and_project(path, rng)
    ids = rng.integers(0, 200, 30)
    before, size = run(path, ids), (tmp_path / "g.onnx").stat().st_size

    assert sorted(quantize_weights(path)) == ["table", "w"]  # the 1-D bias stays fp32
    model = onnx.load(path)
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert stored["table_int8"].dtype == np.int8 and stored["w_int8"].dtype == np.int8
    # a scale per table row; per column of each block of 32 input rows of w (48 rows: one full block, one partial)
    assert stored["table_scale"].shape == (200, 1) and stored["w_scale"].shape == (2, 64)
    assert (tmp_path / "g.onnx").stat().st_size < size / 3
    assert not stored["w_int8"][:, 5].any()
    # each weight is off by at most half a step of its block's scale
    step = np.repeat(stored["w_scale"], 32, axis=0)[:48]
    assert np.all(np.abs(stored["w_int8"] * step - weights["w"]) <= step / 2 + 1e-6)
    assert np.all(
        np.abs(stored["table_int8"] * stored["table_scale"] - weights["table"]) <= stored["table_scale"] / 2 + 1e-6
    )
    # the table is gathered as int8, then its rows dequantized: no call rebuilds the whole fp32 table
    gathers = [n.input[0] for n in model.graph.node if n.op_type == "Gather"]
    assert sorted(gathers) == ["table_int8", "table_scale"]
    assert [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"] == ["w_int8"]
    after = run(path, ids)
    assert np.abs(after - before).max() < 0.02 * np.abs(before).max()
    # ORT's fused kernel quantizes activations in blocks by default: a zero channel is zero up to that rounding
    assert np.allclose(after[:, 5], weights["bias"][5], atol=1e-3)


def test_four_bit_matmul_weights_are_packed_and_tables_stay_int8(tmp_path):
    import ml_dtypes

    rng = np.random.default_rng(1)
    paths = {bits: str(tmp_path / f"g{bits}.onnx") for bits in (8, 4)}
    for path in paths.values():
        weights = embed_and_project(path, np.random.default_rng(1))
    ids = rng.integers(0, 200, 30)
    before = run(paths[4], ids)
    for bits, path in paths.items():
        assert sorted(quantize_weights(path, bits)) == ["table", "w"]
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(paths[4]).graph.initializer}
    assert stored["w_int4"].dtype == ml_dtypes.int4 and stored["table_int8"].dtype == np.int8
    assert stored["w_scale"].shape == (2, 64) and stored["table_scale"].shape == (200, 1)
    values = stored["w_int4"].astype(np.int8)
    assert values.min() >= -7 and values.max() <= 7 and not values[:, 5].any()
    step = np.repeat(stored["w_scale"], 32, axis=0)[:48]
    assert np.all(np.abs(values * step - weights["w"]) <= step / 2 + 1e-6)
    # packed two per byte: the 4-bit weight takes half the int8 one's bytes (the table is the same in both)
    raw = {b: {i.name: len(i.raw_data) for i in onnx.load(p).graph.initializer} for b, p in paths.items()}
    assert raw[4]["w_int4"] == raw[8]["w_int8"] // 2 and raw[4]["table_int8"] == raw[8]["table_int8"]
    after = run(paths[4], ids)
    assert np.abs(after - before).max() < 0.15 * np.abs(before).max()  # int8: under 0.02
    with pytest.raises(ValueError, match="bits=3"):
        quantize_weights(paths[8], 3)


def test_shared_or_non_weight_initializers_are_left_alone(tmp_path):
    path = str(tmp_path / "g.onnx")
    table = np.ones((64, 32), np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("Add", ["emb", "table_row"], ["out"]),
        helper.make_node("MatMul", ["table", "table_t"], ["unused"]),
    ]  # table as a left operand: not a weight
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 32]),
            helper.make_tensor_value_info("unused", TensorProto.FLOAT, [64, 64]),
        ],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.ones(32, np.float32), "table_row"),
            numpy_helper.from_array(np.ones((32, 64), np.float32), "table_t"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert quantize_weights(path) == ["table_t"]


@pytest.mark.parametrize("bits", [8, 4])
def test_dequantize_folds_the_stored_weights_back_to_fp32(tmp_path, bits):
    rng = np.random.default_rng(bits)
    path, flat = str(tmp_path / "g.onnx"), str(tmp_path / "flat.onnx")
    weights = embed_and_project(path, rng)
    quantize_weights(path, bits=bits)
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}

    # the MatMul weight is folded; the table stays int8, dequantized row by row after the gather (the same floats)
    assert dequantize_weights(path, flat) == ["w"]
    model = onnx.load(flat)
    assert not [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    folded = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert sorted(folded) == ["bias", "table_int8", "table_scale", "w"] and folded["w"].dtype == np.float32
    q = stored[f"w_int{bits}"].astype(np.float32)
    assert np.array_equal(folded["w"], q * np.repeat(stored["w_scale"], 32, axis=0)[:48])
    assert np.abs(folded["w"] - weights["w"]).max() > 0  # it is the quantized model, not the original
    ids = rng.integers(0, 200, 30)
    table = stored["table_int8"] * stored["table_scale"]
    assert np.allclose(run(flat, ids), table[ids] @ folded["w"] + weights["bias"], atol=1e-4)


def test_graphs_that_dequantize_whole_tables_are_rewritten_with_the_same_outputs(tmp_path):
    """An artifact exported before tables were gathered first: `gather_rows_first` changes its form, not its
    outputs, and leaves a graph already in the new form alone."""
    rng = np.random.default_rng(3)
    q = rng.integers(-127, 128, (200, 48)).astype(np.int8)
    scale = rng.uniform(0.001, 0.01, 200).astype(np.float32)
    nodes = [
        helper.make_node("DequantizeLinear", ["table_int8", "table_scale"], ["table"], axis=0),
        helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
        helper.make_node("Gather", ["table", "more_ids"], ["emb2"]),  # a second user of the same table
        helper.make_node("Add", ["emb", "emb2"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "t"]) for n in ("ids", "more_ids")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "t", 48])],
        [numpy_helper.from_array(q, "table_int8"), numpy_helper.from_array(scale, "table_scale")],
    )
    path = str(tmp_path / "old.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    feeds = {"ids": rng.integers(0, 200, (3, 7)), "more_ids": rng.integers(0, 200, (3, 7))}

    def outputs() -> np.ndarray:
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    before = outputs()
    assert gather_rows_first(path) == ["table"]
    model = onnx.load(path)
    assert not [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert sorted(n.input[0] for n in model.graph.node if n.op_type == "Gather") == [
        "table_int8",
        "table_int8",
        "table_scale",
        "table_scale",
    ]
    assert np.array_equal(outputs(), before)
    assert np.array_equal(before, (q * scale[:, None])[feeds["ids"]] + (q * scale[:, None])[feeds["more_ids"]])
    assert gather_rows_first(path) == []
