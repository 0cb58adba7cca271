"""Weight-only int8 (or int4) for an ONNX graph: small weights with fine-grained scales, activations left as they are.

Dynamic int8 (`quantize_dynamic`) also quantizes every MatMul's activations with one scale per tensor per call; on
MELD models that changed 3.9-4.7% of valid labels (per-channel weights), wherever in the encoder the quantized
MatMuls were, so it cannot meet the 99% label-agreement bar. Here only the weights are stored in int8:
MatMul weights with one symmetric scale per block of `block_size` input rows per output column (the layout of ONNX
Runtime's `MatMulNBits`), embedding tables with one scale per row. MiniLM's encoder shrinks 4x (87 -> 23 MB; the
30522x384 word embedding alone is 47 MB in fp32). With blocks of 32, 0.63% of MELD valid labels changed on each of
two MELD models; one scale per output column changed 1.26% on one of them (docs/BENCHMARKS.md).

The graph keeps the standard ONNX form `DequantizeLinear(int8, scale, axis, block_size) -> MatMul | Gather` (blocked
scales need opset 21, so the graph is converted to it first). ONNX Runtime's CPU provider fuses the MatMul case into
`MatMulNBits` at session start; by default (session config `session.qdq_matmulnbits_accuracy_level` = 4) that
kernel also quantizes activations in small blocks, far finer than quantize_dynamic's one scale per tensor; the
agreement above is with that default. onnxruntime.quantization has no weight-only int8 pass covering both MatMul and
Gather (its MatMulNBits quantizer handles MatMul only and needs the extra onnx_ir package), hence these few lines.

`bits=4` stores MatMul weights as INT4 (values in [-7, 7], same blocks of 32; ORT fuses them into `MatMulNBits`
the same way) for encoders whose int8 graph is too big to ship: mpnet's is 115 MB, over GitHub's 100 MB per file.
Embedding tables stay int8 per row: on mpnet MELD seed 1 (valid W-F1 fp32 61.62, int8 61.37) 4-bit MatMuls with
int8 tables scored 61.18 (74 MiB), 4-bit tables too (blocks of 32 along the row) 60.81 (66 MiB).

A table is gathered before it is dequantized (`gather_rows_first`): `DequantizeLinear -> Gather` would rebuild the
whole fp32 table on every call (mpnet's 30,527 x 768 words: 94 MB and 23M multiplies per encoder call), when a call
needs only its tokens' rows. `Gather(int8) -> Cast`, times `Gather(row scales)`, gives the same floats.
"""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from bioserc.models.int8_graph import fold_dequantize


MIN_ELEMENTS = 1024  # smaller 2-D tensors (token-type embeddings) are not worth a node each; 1-D ones never are
BLOCK_SIZE = 32
OPSET = 21  # DequantizeLinear's block_size and INT4
BITS = (8, 4)


def _weight_kind(uses: list[tuple[onnx.NodeProto, int]]) -> str | None:
    """ "matmul" for a weight used only as MatMul's right operand, "table" for a Gather table only; else None."""
    if all(node.op_type == "MatMul" and slot == 1 for node, slot in uses):
        return "matmul"
    if all(node.op_type == "Gather" and slot == 0 and _gather_axis(node) == 0 for node, slot in uses):
        return "table"
    return None


def _gather_axis(node: onnx.NodeProto) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)


def _symmetric(weight: np.ndarray, block_size: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed `bits`-bit values and scales for `weight` [K, N], a scale per `block_size` rows (last may be partial)."""
    k, n = weight.shape
    blocks, qmax = -(-k // block_size), 2 ** (bits - 1) - 1
    padded = np.zeros((blocks * block_size, n), np.float32)
    padded[:k] = weight
    scale = np.abs(padded.reshape(blocks, block_size, n)).max(axis=1) / qmax
    scale[scale == 0] = 1.0  # an all-zero block stays zero with any scale
    q = np.clip(np.rint(padded / np.repeat(scale, block_size, axis=0)), -qmax, qmax).astype(np.int8)[:k]
    return q, scale.astype(np.float32)


def quantize_weights(
    path: str, bits: int = 8, block_size: int = BLOCK_SIZE, min_elements: int = MIN_ELEMENTS
) -> list[str]:
    """Rewrite the ONNX file at `path` in place with `bits`-bit MatMul weights and int8 embedding tables; return the
    names of the quantized tensors."""
    if bits not in BITS:
        raise ValueError(f"bits={bits}: choose one of {BITS}")
    model = onnx.load(path)
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < OPSET:
        model = version_converter.convert_version(model, OPSET)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in initializers:
                uses.setdefault(name, []).append((node, slot))
    dequantize, done = [], []
    for name, users in uses.items():
        weight = numpy_helper.to_array(initializers[name])
        kind = _weight_kind(users)
        if kind is None or weight.dtype != np.float32 or weight.ndim != 2 or weight.size < min_elements:
            continue
        if kind == "matmul":  # [K, N]: blocks along K, per column
            q, scale = _symmetric(weight, block_size, bits)
            attrs, width = {"axis": 0, "block_size": block_size}, bits
        else:  # table [rows, dim]: int8 with a scale per row, whatever `bits` (the module docstring says why)
            q, scale = _symmetric(weight.T, weight.shape[1], 8)
            q, scale, attrs, width = q.T, scale[0], {"axis": 0}, 8
        stored = f"{name}_int{width}"
        values = np.ascontiguousarray(q).astype(np.int8 if width == 8 else ml_dtypes.int4)  # int4: packed 2 per byte
        graph.initializer.remove(initializers[name])
        graph.initializer.extend(
            [numpy_helper.from_array(values, stored), numpy_helper.from_array(scale, f"{name}_scale")]
        )
        dequantize.append(
            helper.make_node("DequantizeLinear", [stored, f"{name}_scale"], [name], name=f"{name}_dequantize", **attrs)
        )
        done.append(name)
    for node in reversed(dequantize):  # producers first keeps the graph topologically sorted
        graph.node.insert(0, node)
    _gather_rows_first(graph)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return done


def gather_rows_first(path: str) -> list[str]:
    """Rewrite the ONNX file at `path` (external data read and written back inline) so that its per-row int8 tables
    are gathered before they are dequantized; return the tables changed (none for a graph already in that form).

    For graphs exported before `quantize_weights` did this itself: `bioserc export refresh` applies it."""
    model = onnx.load(path)
    done = _gather_rows_first(model.graph)
    if done:
        onnx.checker.check_model(model)
        onnx.save(model, path)
    return done


def _gather_rows_first(graph: onnx.GraphProto) -> list[str]:
    """Replace each `DequantizeLinear(int8 table, row scales, axis 0) -> Gather(ids)` in `graph` by
    `Mul(Cast(Gather(table, ids)), Gather(row scales as [rows, 1], ids))`; return the tables' names."""
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    done = []
    for node in list(graph.node):
        if (
            node.op_type != "DequantizeLinear"
            or len(node.input) != 2
            or not all(i in initializers for i in node.input)
        ):
            continue
        table, scale = (initializers[i] for i in node.input)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        users = consumers.get(node.output[0], [])
        if (
            table.data_type != onnx.TensorProto.INT8
            or len(table.dims) != 2
            or list(scale.dims) != [table.dims[0]]
            or attrs.get("axis", 1) != 0
            or "block_size" in attrs
            or not users
            or not all(u.op_type == "Gather" and u.input[0] == node.output[0] and _gather_axis(u) == 0 for u in users)
        ):
            continue
        rows = numpy_helper.to_array(scale).reshape(-1, 1)  # [rows, 1]: gathered rows broadcast over the width
        graph.initializer.remove(scale)
        graph.initializer.append(numpy_helper.from_array(rows, scale.name))
        graph.node.remove(node)
        for gather in users:
            ids, out = gather.input[1], gather.output[0]
            stem = gather.name or out
            at = list(graph.node).index(gather)
            graph.node.remove(gather)
            new = [
                helper.make_node("Gather", [table.name, ids], [f"{stem}_int8_rows"], name=f"{stem}_int8_rows"),
                helper.make_node("Gather", [scale.name, ids], [f"{stem}_row_scales"], name=f"{stem}_row_scales"),
                helper.make_node(
                    "Cast", [f"{stem}_int8_rows"], [f"{stem}_rows"], name=f"{stem}_rows", to=onnx.TensorProto.FLOAT
                ),
                helper.make_node("Mul", [f"{stem}_rows", f"{stem}_row_scales"], [out], name=f"{stem}_dequantize"),
            ]
            for offset, n in enumerate(new):
                graph.node.insert(at + offset, n)
        done.append(node.output[0])
    return done


def dequantize_weights(source: str, target: str) -> list[str]:
    """Write `source`'s graph to `target` with every constant `DequantizeLinear` folded into an fp32 initializer
    (weights stored beside it in `target`.data); return the folded tensors' names (`int8_graph.fold_dequantize`).

    The inverse of `quantize_weights` for a shipped artifact whose fp32 checkpoint is gone: the fp32 graph of the
    weights it actually ships, the reference that other precisions of the same model are compared with.
    """
    model = onnx.load(source)
    folded = fold_dequantize(model)
    onnx.save(model, target, save_as_external_data=True, location=os.path.basename(target) + ".data")
    return folded
