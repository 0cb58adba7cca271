"""Which int8 graph of a shipped classifier keeps its labels: 7-bit weights, MatMuls left in fp32, smoothing,
outlier channels apart, per-token scales, uint8 weights.

    python bench/int8_sensitivity.py --model serving_artifacts/default --data ../shared/data/raw/meld/meld.valid.json \
        --calibration ../shared/data/raw/meld/meld.train.json --rounds 2 --out docs/bench/int8_sensitivity.json \
        [--only VARIANT ...] [--timed VARIANT ...]

The reference is the shipped weights dequantized to fp32 (the default's PyTorch checkpoint was not kept). Variants
(`VARIANTS`): `quantize_dynamic` per channel with 8-bit or 7-bit (`reduce_range`) int8 weights or uint8 weights;
the FFN output MatMuls (`output/dense`, whose input is the GELU output) or also the attention output MatMuls left in
fp32; SmoothQuant (Xiao et al., 2023): each weight MatMul's input channel j is divided by s_j = max|x_j|^a /
max|W_j|^(1-a) (a Mul before it) and W's row j multiplied by it, so activation outliers move into the per-channel
weight scales; LLM.int8()-style decomposition (`decomposed`): each MatMul's largest input channels computed apart in
fp32; per-row (per-token) activation scales (`scaled_per_row`); our own int8 MatMuls with 8-bit weights and 7-bit
per-token activations (`integer_per_row`); and the weights alone rounded (fp32 compute), to split the error between
weights and activations. Activation maxima come from every `--calibration-every`-th train conversation. Each
variant labels --data once (label agreement with fp32, W-F1); then fp32, the shipped graph and `--timed` variants run
in interleaved rounds (median wall) on `--threads`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from typing import NamedTuple

import numpy as np
import onnx
from export_bench import agreement, in_file_order
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from report_io import emit

from bioserc.artifacts import artifact_file
from bioserc.export.int8_calibration import activation_maxima, outlier_channels
from bioserc.export.weight_only import dequantize_weights
from bioserc.metrics import weighted_f1
from bioserc.models.int8_graph import (
    OUTLIERS,
    exact_int8_flags,
    integer_rows,
    rewrite_matmuls,
    split_outliers,
    weight_matmuls,
)
from bioserc.models.onnx_classifier import OnnxClassifier
from bioserc.readers import read_conversations
from bioserc.runtime import make_session


FFN_OUT, ATTN_OUT = "output/dense", "attn/o/"


class Spec(NamedTuple):
    alpha: float = 0.0  # SmoothQuant's alpha for most weight MatMuls (0: no smoothing)
    ffn_alpha: float = 0.0  # ... and for the FFN output MatMuls
    seven_bit: bool = True  # reduce_range weights
    keep: tuple[str, ...] = ()  # MatMuls whose names contain one of these stay fp32
    outliers: float = 0.0  # share of each MatMul's input channels (largest calibration maxima) computed apart in fp32
    per_row: bool = False  # scale each row (token) of a MatMul's input to max |x| = 1 before it, and back after
    unsigned: bool = False  # uint8 weights (ONNX Runtime's u8 x u8 kernel) instead of int8
    weights_only: int = 0  # > 0: no int8 compute, only the weights rounded to this many bits per channel (fp32)
    row_int8: bool = False  # own int8 MatMuls instead of quantize_dynamic's: 8-bit weights, 7-bit activations per row
    shipped_rows: bool = False  # bioserc's int8 graph (`int8_graph.integer_rows`): per-token asymmetric, fixed grid


VARIANTS = {
    "int8, 8-bit weights": Spec(seven_bit=False),
    "int8, 7-bit weights (--quantize dynamic)": Spec(),
    "7-bit, FFN output fp32": Spec(keep=(FFN_OUT,)),
    "7-bit, FFN + attention output fp32": Spec(keep=(FFN_OUT, ATTN_OUT)),
    "smoothed a=0.5, 7-bit": Spec(0.5, 0.5),
    "smoothed a=0.5 (FFN output a=0.8), 7-bit": Spec(0.5, 0.8),
    "smoothed a=0.5, 7-bit, FFN output fp32": Spec(0.5, keep=(FFN_OUT,)),
    "smoothed a=0.6, 7-bit, FFN output fp32": Spec(0.6, keep=(FFN_OUT,)),
    "7-bit, 1% outlier channels fp32": Spec(outliers=0.01),
    "7-bit, 2% outlier channels fp32": Spec(outliers=0.02),
    "7-bit, 4% outlier channels fp32": Spec(outliers=0.04),
    "7-bit, scaled per row": Spec(per_row=True),
    "7-bit, 1% outlier channels fp32, scaled per row": Spec(outliers=0.01, per_row=True),
    "smoothed a=0.3, 7-bit, 1% outlier channels fp32, scaled per row": Spec(0.3, 0.3, outliers=0.01, per_row=True),
    "smoothed a=0.5, 7-bit, 1% outlier channels fp32, scaled per row": Spec(0.5, 0.5, outliers=0.01, per_row=True),
    "7-bit, 1% outlier channels fp32, scaled per row, layer 0 fp32": Spec(
        keep=("layer.0/",), outliers=0.01, per_row=True
    ),
    "7-bit, 1% outlier channels fp32, scaled per row, layer 11 fp32": Spec(
        keep=("layer.11/",), outliers=0.01, per_row=True
    ),
    "8-bit weights, scaled per row": Spec(seven_bit=False, per_row=True),
    "8-bit weights, 1% outlier channels fp32": Spec(seven_bit=False, outliers=0.01),
    "8-bit weights, 1% outlier channels fp32, scaled per row": Spec(seven_bit=False, outliers=0.01, per_row=True),
    "uint8 weights": Spec(seven_bit=False, unsigned=True),
    "uint8 weights, scaled per row": Spec(seven_bit=False, per_row=True, unsigned=True),
    "uint8 weights, 1% outlier channels fp32": Spec(seven_bit=False, outliers=0.01, unsigned=True),
    "uint8 weights, 1% outlier channels fp32, scaled per row": Spec(
        seven_bit=False, outliers=0.01, per_row=True, unsigned=True
    ),
    "int8 weights, 7-bit activations per row": Spec(row_int8=True),
    "int8 weights, 7-bit activations per row, 1% outlier channels fp32": Spec(outliers=0.01, row_int8=True),
    "8-bit weights, 1% outlier channels fp32, uint8 rows on a fixed grid (bioserc --int8)": Spec(
        outliers=0.01, shipped_rows=True
    ),
    "fp32 compute, weights rounded to 7 bits": Spec(weights_only=7),
    "fp32 compute, weights rounded to 8 bits": Spec(weights_only=8),
}


def smoothed(fp32: str, maxima: dict[str, np.ndarray], alpha: float, ffn_alpha: float) -> onnx.ModelProto:
    """SmoothQuant; `maxima` gains the maxima of each smoothed input (for a decomposition after it)."""
    model = onnx.load(fp32)
    weights = {t.name: t for t in model.graph.initializer}

    def replace(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        a = ffn_alpha if FFN_OUT in node.name else alpha
        if a <= 0:
            return [node]
        w = numpy_helper.to_array(weights[node.input[1]])
        s = np.maximum(maxima[node.input[0]], 1e-5) ** a / np.maximum(np.abs(w).max(1), 1e-5) ** (1 - a)
        weights[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1]))
        model.graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), node.name + "/inv_s"))
        scale = helper.make_node("Mul", [node.input[0], node.name + "/inv_s"], [node.name + "/x_s"])
        maxima[node.name + "/x_s"] = maxima[node.input[0]] / s
        node.input[0] = node.name + "/x_s"
        return [scale, node]

    rewrite_matmuls(model, (), replace)
    return model


def decomposed(model: onnx.ModelProto, maxima: dict[str, np.ndarray], fraction: float) -> onnx.ModelProto:
    """LLM.int8()-style: each MatMul's `fraction` largest input channels in a fp32 MatMul (`split_outliers`)."""
    split_outliers(model, outlier_channels(maxima, fraction))
    return model


def add_row_constants(model: onnx.ModelProto) -> None:
    """The constants `row_normalized` reads, added once per graph."""
    model.graph.initializer.append(numpy_helper.from_array(np.array(1e-6, np.float32), "rows/eps"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "rows/axes"))


def row_normalized(model: onnx.ModelProto, x: str) -> list[onnx.NodeProto]:
    """Nodes computing `x/r` = max(max |x| over the last axis, 1e-6), kept as (..., 1), and `x/rows` = x / `x/r`."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    reduce = (
        helper.make_node("ReduceMax", [x + "/abs", "rows/axes"], [x + "/rmax"], keepdims=1)
        if opset >= 18
        else helper.make_node("ReduceMax", [x + "/abs"], [x + "/rmax"], axes=[-1], keepdims=1)
    )
    return [
        helper.make_node("Abs", [x], [x + "/abs"]),
        reduce,
        helper.make_node("Max", [x + "/rmax", "rows/eps"], [x + "/r"]),
        helper.make_node("Div", [x, x + "/r"], [x + "/rows"]),
    ]


def scaled_per_row(model: onnx.ModelProto, keep: tuple[str, ...]) -> onnx.ModelProto:
    """Each weight MatMul (names without `keep`) y = x W becomes ((x / r) W) * r (in place), r = max(max |x| of
    the row, 1e-6): per-token activation scales under `quantize_dynamic`'s one scale per tensor. An input shared
    by several MatMuls is scaled once."""
    add_row_constants(model)
    scaled: set[str] = set()

    def replace(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        x, y, nodes = node.input[0], node.output[0], []
        if x not in scaled:
            nodes += row_normalized(model, x)
            scaled.add(x)
        node.input[0], node.output[0] = x + "/rows", y + "/rows"
        return [*nodes, node, helper.make_node("Mul", [y + "/rows", x + "/r"], [y])]

    rewrite_matmuls(model, keep, replace)
    return model


def rounded_weights(fp32: str, bits: int) -> onnx.ModelProto:
    """The fp32 graph with every weight MatMul's weights rounded to `bits` per output channel (symmetric): the
    weights' share of an int8 graph's error, without any activation quantization."""
    model = onnx.load(fp32)
    weights = {t.name: t for t in model.graph.initializer}
    top = 2 ** (bits - 1) - 1
    for node in weight_matmuls(model):
        w = numpy_helper.to_array(weights[node.input[1]])
        scale = np.maximum(np.abs(w).max(0), 1e-12) / top
        weights[node.input[1]].CopyFrom(
            numpy_helper.from_array((np.round(w / scale) * scale).astype(np.float32), node.input[1])
        )
    return model


ROW_LEVELS = 126  # x / max|x| in [-1, 1] -> uint8 0..126: 2 x 126 x 128 fits the int16 pair sums of AVX2's u8 x s8


def integer_per_row(model: onnx.ModelProto, keep: tuple[str, ...]) -> onnx.ModelProto:
    """Each weight MatMul y = x W (names not in `keep`) becomes MatMulIntegerToFloat(q(x / r), Wq) * r: r = max |x|
    per row, q a fixed 7-bit grid (no per-call min/max), Wq the weights in 8 bits per output channel. AVX2 without
    VNNI adds pairs of u8 x s8 products in int16: 8-bit activations must pair with 7-bit weights to fit (what
    `--quantize dynamic` does); here 7-bit activations, scaled per token, pair with 8-bit weights instead."""
    weights = {t.name: t for t in model.graph.initializer}
    add = model.graph.initializer.append
    add(numpy_helper.from_array(np.array(2 / ROW_LEVELS, np.float32), "rows/scale"))
    add(numpy_helper.from_array(np.array(ROW_LEVELS // 2, np.uint8), "rows/zero"))
    add_row_constants(model)
    rows: set[str] = set()  # inputs already normalized and quantized
    replaced: list[str] = []  # the fp32 weights no node reads any more

    def replace(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        x, y, name, nodes = node.input[0], node.output[0], node.name, []
        if x not in rows:
            nodes += row_normalized(model, x)
            nodes.append(helper.make_node("QuantizeLinear", [x + "/rows", "rows/scale", "rows/zero"], [x + "/q"]))
            rows.add(x)
        w = numpy_helper.to_array(weights[node.input[1]])
        replaced.append(node.input[1])
        scale = (np.maximum(np.abs(w).max(0), 1e-12) / 127).astype(np.float32)
        add(numpy_helper.from_array(np.clip(np.round(w / scale), -127, 127).astype(np.int8), name + "/Wq"))
        add(numpy_helper.from_array(scale, name + "/Ws"))
        add(numpy_helper.from_array(np.zeros(len(scale), np.int8), name + "/Wz"))
        return [
            *nodes,
            helper.make_node(
                "MatMulIntegerToFloat",
                [x + "/q", name + "/Wq", "rows/scale", name + "/Ws", "rows/zero", name + "/Wz"],
                [y + "/rows"],
                name=name + "/int8",
                domain="com.microsoft",
            ),
            helper.make_node("Mul", [y + "/rows", x + "/r"], [y]),
        ]

    rewrite_matmuls(model, keep, replace)
    for name in set(replaced):
        model.graph.initializer.remove(weights[name])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def save(model: onnx.ModelProto, target: str) -> None:
    if os.path.exists(target + ".data"):
        os.remove(target + ".data")  # onnx appends external data to an existing file
    onnx.save(model, target, save_as_external_data=True, location=os.path.basename(target) + ".data")


def build(fp32: str, maxima: dict, spec: Spec, target: str, tmp: str) -> None:
    alpha, ffn_alpha, seven_bit, keep, outliers, per_row, unsigned, weights_only, row_int8, shipped_rows = spec
    if weights_only:
        save(rounded_weights(fp32, weights_only), target)
        return
    if shipped_rows:
        model = decomposed(onnx.load(fp32), maxima, outliers)
        integer_rows(model, (*keep, OUTLIERS))
        save(model, target)
        return
    if row_int8:
        model = decomposed(onnx.load(fp32), maxima, outliers) if outliers else onnx.load(fp32)
        save(integer_per_row(model, (*keep, OUTLIERS)), target)
        return
    source = fp32
    if alpha or ffn_alpha or outliers or per_row:
        maxima = dict(maxima)
        model = smoothed(fp32, maxima, alpha, ffn_alpha) if alpha or ffn_alpha else onnx.load(fp32)
        if outliers:
            model = decomposed(model, maxima, outliers)
            keep = (*keep, OUTLIERS)
        if per_row:
            model = scaled_per_row(model, keep)
        source = os.path.join(tmp, "rewritten.onnx")
        save(model, source)
    names = [n.name for n in weight_matmuls(onnx.load(source, load_external_data=False))]
    quantize_dynamic(
        source,
        target,
        weight_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
        per_channel=True,
        reduce_range=seven_bit,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=[n for n in names if any(k in n for k in keep)],
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="serving_artifacts/default")
    parser.add_argument("--data", required=True, help="gold-labelled conversations (e.g. MELD valid)")
    parser.add_argument("--calibration", required=True, help="conversations for the activation maxima (train)")
    parser.add_argument("--calibration-every", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--timed",
        nargs="*",
        default=["int8, 7-bit weights (--quantize dynamic)", "smoothed a=0.5, 7-bit, FFN output fp32"],
    )
    parser.add_argument("--only", nargs="*", help="label with these variants only (default: all)")
    parser.add_argument("--out")
    args = parser.parse_args()

    convs = list(read_conversations(args.data))
    gold = [u.label for c in convs for u in c.utterances]
    clf = OnnxClassifier(args.model, provider="cpu", threads=args.threads, int8="off")  # the shipped graph
    shipped = artifact_file(
        args.model, clf.manifest, (clf.manifest.get("graphs") or {}).get("encoder", "encoder.onnx")
    )
    tmp = tempfile.mkdtemp(prefix="int8-sensitivity-")
    fp32 = os.path.join(tmp, "fp32.onnx")
    dequantize_weights(shipped, fp32)
    calibration = list(read_conversations(args.calibration))[:: args.calibration_every]
    maxima = activation_maxima(clf, shipped, calibration, 1)
    run = in_file_order(clf, 16)
    sessions = {"fp32": make_session(fp32, None, args.threads), "shipped": clf.encoder}
    preds = {}
    for name, session in sessions.items():
        clf.encoder = session
        preds[name] = run(convs, None)
    for i, (name, spec) in enumerate(VARIANTS.items()):
        if args.only and name not in args.only and name not in args.timed:
            continue
        path = os.path.join(tmp, f"variant-{i}.onnx")
        build(fp32, maxima, spec, path, tmp)
        sessions[name] = clf.encoder = make_session(path, None, args.threads)
        preds[name] = run(convs, None)
        print(name, agreement(preds[name], preds["fp32"]), flush=True)
    walls: dict[str, list[float]] = {name: [] for name in ("fp32", "shipped", *args.timed)}
    for _ in range(args.rounds):
        for name in walls:
            clf.encoder = sessions[name]
            start = time.perf_counter()
            run(convs, None)
            walls[name].append(time.perf_counter() - start)
    base = statistics.median(walls["shipped"])
    report = {
        "model": args.model,
        "data": args.data,
        "utterances": len(gold),
        "calibration_conversations": len(calibration),
        "threads": args.threads,
        "machine": platform.machine(),
        "int8_dot_product": exact_int8_flags(),
        "loadavg_after": os.getloadavg(),
        "variants": {
            name: {
                "labels_equal_fp32": agreement(p, preds["fp32"]),
                "weighted_f1": weighted_f1(gold, [x.label for x in p], clf.labels),
                **(
                    {"wall_s": walls[name], "vs_shipped": base / statistics.median(walls[name])}
                    if name in walls
                    else {}
                ),
            }
            for name, p in preds.items()
        },
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
