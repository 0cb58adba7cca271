"""Which int8 dynamic graph of a shipped classifier keeps its labels: 7-bit weights, MatMuls left in fp32, smoothing.

    python bench/int8_sensitivity.py --model serving_artifacts/default --data ../shared/data/raw/meld/meld.valid.json \
        --calibration ../shared/data/raw/meld/meld.train.json --rounds 2 --out docs/bench/int8_sensitivity.json

The reference is the shipped weights dequantized to fp32 (the default's PyTorch checkpoint was not kept). Variants:
`quantize_dynamic` per channel with 8-bit or 7-bit (`reduce_range`) weights; the FFN output MatMuls
(`output/dense`, whose input is the GELU output) or also the attention output MatMuls left in fp32; and SmoothQuant
(Xiao et al., 2023): each weight MatMul's input channel j is divided by s_j = max|x_j|^a / max|W_j|^(1-a) (a Mul
before it) and W's row j multiplied by it, so activation outliers move into the per-channel weight scales. The
activation maxima come from every `--calibration-every`-th train conversation. Each variant labels --data once
(label agreement with fp32, W-F1); then fp32, the shipped graph and `--timed` variants run in interleaved rounds
(median wall) on `--threads`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import onnx
from export_bench import agreement, in_file_order
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from report_io import emit

from bioserc.artifacts import artifact_file
from bioserc.export.weight_only import dequantize_weights
from bioserc.metrics import weighted_f1
from bioserc.models.onnx_classifier import OnnxClassifier
from bioserc.readers import read_conversations
from bioserc.runtime import make_session


FFN_OUT, ATTN_OUT = "output/dense", "attn/o/"
# name: (smoothing alpha for most MatMuls, alpha for FFN_OUT, 7-bit weights, MatMul names containing these stay fp32)
VARIANTS = {
    "int8, 8-bit weights": (0.0, 0.0, False, ()),
    "int8, 7-bit weights (--quantize dynamic)": (0.0, 0.0, True, ()),
    "7-bit, FFN output fp32": (0.0, 0.0, True, (FFN_OUT,)),
    "7-bit, FFN + attention output fp32": (0.0, 0.0, True, (FFN_OUT, ATTN_OUT)),
    "smoothed a=0.5, 7-bit": (0.5, 0.5, True, ()),
    "smoothed a=0.5 (FFN output a=0.8), 7-bit": (0.5, 0.8, True, ()),
    "smoothed a=0.5, 7-bit, FFN output fp32": (0.5, 0.0, True, (FFN_OUT,)),
    "smoothed a=0.6, 7-bit, FFN output fp32": (0.6, 0.0, True, (FFN_OUT,)),
}


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    weights = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def activation_maxima(fp32: str, clf: OnnxClassifier, convs: list, tmp: str) -> dict[str, np.ndarray]:
    """max |x_j| per input channel of every weight MatMul, over the encoder calls that labelling `convs` makes."""
    model = onnx.load(fp32)
    inputs = sorted({n.input[0] for n in weight_matmuls(model)})
    model.graph.output.extend(helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in inputs)
    path = os.path.join(tmp, "calibration.onnx")
    onnx.save(model, path, save_as_external_data=True, location="calibration.onnx.data")
    session, maxima = make_session(path, None, 1), {}

    class Recorder:
        def run(self, _, feed):
            first, *rest = session.run(None, feed)
            for name, value in zip(inputs, rest, strict=True):
                m = np.abs(value.reshape(-1, value.shape[-1])).max(0)
                maxima[name] = np.maximum(maxima.get(name, m), m)
            return [first]

    encoder, clf.encoder = clf.encoder, Recorder()
    try:
        in_file_order(clf, 16)(convs, None)
    finally:
        clf.encoder = encoder
    return maxima


def smoothed(fp32: str, maxima: dict[str, np.ndarray], alpha: float, ffn_alpha: float) -> onnx.ModelProto:
    model = onnx.load(fp32)
    weights = {t.name: t for t in model.graph.initializer}
    targets = {n.name for n in weight_matmuls(model)}
    nodes = []
    for node in model.graph.node:
        a = ffn_alpha if FFN_OUT in node.name else alpha
        if node.name in targets and a > 0:
            w = numpy_helper.to_array(weights[node.input[1]])
            s = np.maximum(maxima[node.input[0]], 1e-5) ** a / np.maximum(np.abs(w).max(1), 1e-5) ** (1 - a)
            weights[node.input[1]].CopyFrom(
                numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1])
            )
            model.graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), node.name + "/inv_s"))
            nodes.append(helper.make_node("Mul", [node.input[0], node.name + "/inv_s"], [node.name + "/x_s"]))
            node.input[0] = node.name + "/x_s"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def build(fp32: str, maxima: dict, spec: tuple, target: str, tmp: str) -> None:
    alpha, ffn_alpha, seven_bit, keep = spec
    source = fp32
    if alpha or ffn_alpha:
        source = os.path.join(tmp, "smoothed.onnx")
        if os.path.exists(source + ".data"):
            os.remove(source + ".data")  # onnx appends external data to an existing file
        onnx.save(
            smoothed(fp32, maxima, alpha, ffn_alpha), source, save_as_external_data=True, location="smoothed.onnx.data"
        )
    names = [n.name for n in weight_matmuls(onnx.load(source, load_external_data=False))]
    quantize_dynamic(
        source,
        target,
        weight_type=QuantType.QInt8,
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
    parser.add_argument("--out")
    args = parser.parse_args()

    convs = list(read_conversations(args.data))
    gold = [u.label for c in convs for u in c.utterances]
    clf = OnnxClassifier(args.model, provider="cpu", threads=args.threads)
    shipped = artifact_file(
        args.model, clf.manifest, (clf.manifest.get("graphs") or {}).get("encoder", "encoder.onnx")
    )
    tmp = tempfile.mkdtemp(prefix="int8-sensitivity-")
    fp32 = os.path.join(tmp, "fp32.onnx")
    dequantize_weights(shipped, fp32)
    calibration = list(read_conversations(args.calibration))[:: args.calibration_every]
    maxima = activation_maxima(fp32, clf, calibration, tmp)
    run = in_file_order(clf, 16)
    sessions = {"fp32": make_session(fp32, None, args.threads), "shipped": clf.encoder}
    preds = {}
    for name, session in sessions.items():
        clf.encoder = session
        preds[name] = run(convs, None)
    for i, (name, spec) in enumerate(VARIANTS.items()):
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
