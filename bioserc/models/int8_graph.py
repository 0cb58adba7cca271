"""An int8-compute encoder graph, built once on the CPU that runs it from the shipped (weight-only) graph.

Why: on a CPU with exact int8 dot products (AVX-512 VNNI, AVX-VNNI, AMX) ONNX Runtime's int8 MatMuls run the
default's encoder at 2.4x its shipped fp32-compute graph, and keep 99.0% of its labels on MELD valid
(docs/BENCHMARKS.md, "int8 compute on a VNNI CPU"). Plain `quantize_dynamic` keeps only 82%; three changes make the
difference, all here:

- **8-bit weights, one scale per output channel** (`quantize_dynamic`, int8): exact on VNNI. Without VNNI, ORT's
  u8 x s8 kernel sums pairs of products in int16, which 8-bit weights overflow, so the graph is only built where the
  CPU has those instructions (`exact_int8_flags`).
- **Outlier channels apart** (LLM.int8(), Dettmers et al., 2022): the ~1% of each MatMul's input channels with the
  largest activations (chosen on calibration data at export: `bioserc export int8`, stored in the manifest under
  `int8_compute`) go through a small fp32 MatMul, so the int8 scale fits the rest.
- **Per-token scales**: each MatMul input row is divided by its max |x| before the int8 MatMul and multiplied back
  after, which `quantize_dynamic`'s one scale per tensor cannot do.

The graph is derived, never shipped (it would add ~110 MB to every artifact): `int8_encoder` builds it in ~12 s (mpnet)
into `$BIOSERC_CACHE/int8/<key>/` (the key covers the artifact's checksums, the calibration and onnxruntime's
version) and checks its sha256 each time it is loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bioserc.artifacts import sha256_file
from bioserc.embedded import cache_dir
from bioserc.runtime import CPU


logger = logging.getLogger(__name__)

RECIPE = "int8 s8 per-channel weights, outlier input channels fp32, per-row input scales, v1"
EXACT_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo flags of exact u8 x s8 dot products
MODES = ("auto", "on", "off")
OUTLIERS = "/outliers"  # suffix of the fp32 MatMul that takes a split MatMul's outlier channels


def exact_int8_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """This CPU's flags among `EXACT_INT8_FLAGS` (empty where /proc/cpuinfo is absent: macOS, Windows, ARM
    without these x86 flags; int8 compute then stays off under "auto")."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(set(flags) & set(EXACT_INT8_FLAGS))


def use_int8(mode: str, manifest: Mapping[str, Any], providers: Sequence[str], flags: Iterable[str]) -> bool:
    """Whether to run the int8-compute graph: "off" never, "auto" when the artifact is calibrated for it, the
    session is CPU-only and the CPU has exact int8 dot products (`flags`), "on" the same but an error otherwise."""
    if mode not in MODES:
        raise ValueError(f"int8 must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return False
    flags = list(flags)
    reasons = []
    if not manifest.get("int8_compute"):
        reasons.append(
            "the artifact has no int8 calibration (add one with `bioserc export int8 ARTIFACT "
            "--calibration TRAIN.json`)"
        )
    if list(providers) != [CPU]:
        reasons.append(f"the session runs on {providers[0]}, and int8 compute is CPU-only")
    if not flags:
        reasons.append(
            "this CPU has no exact int8 dot product (AVX-512 VNNI, AVX-VNNI or AMX in /proc/cpuinfo): ONNX "
            "Runtime's int8 kernel would overflow with 8-bit weights"
        )
    if reasons and mode == "on":
        raise ValueError("--int8 on: " + "; ".join(reasons))
    return not reasons


def weight_matmuls(model: Any) -> list[Any]:
    """The MatMul nodes whose second input is a stored weight."""
    weights = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def fold_dequantize(model: Any) -> list[str]:
    """Fold every constant `DequantizeLinear` of `model` (in place) into an fp32 initializer; return their names.

    The fp32 graph of the weights an artifact actually ships (its checkpoint may be gone). Tables gathered before
    they are dequantized (`export.weight_only.gather_rows_first`) stay as they are: their rows give the same floats.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    folded, kept = [], []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(i in initializers for i in node.input if i):
            kept.append(node)
            continue
        q = numpy_helper.to_array(initializers[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float32) if len(node.input) > 2 else 0.0
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, block = attrs.get("axis", 1) % max(q.ndim, 1), attrs.get("block_size", 0)
        if block:  # one scale per `block` entries along `axis`
            scale, zero = (
                np.take(np.repeat(v, block, axis=axis), range(q.shape[axis]), axis=axis) if np.ndim(v) else v
                for v in (scale, zero)
            )
        elif q.ndim > 1:  # one scale per slice along `axis`
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = (np.reshape(v, shape) if np.ndim(v) else v for v in (scale, zero))
        graph.initializer.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), node.output[0]))
        folded.append(node.output[0])
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    stored = [init for init in graph.initializer if init.name in used]
    graph.ClearField("node")
    graph.node.extend(kept)
    graph.ClearField("initializer")
    graph.initializer.extend(stored)
    return folded


def rewrite_matmuls(model: Any, keep: tuple[str, ...], replace) -> None:
    """Replace (in place) each weight MatMul whose name contains none of `keep` by the nodes `replace(node)` gives."""
    targets = {n.name for n in weight_matmuls(model) if not any(k in n.name for k in keep)}
    nodes = [new for node in model.graph.node for new in (replace(node) if node.name in targets else [node])]
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)


def split_outliers(model: Any, channels: Mapping[str, Sequence[int]]) -> None:
    """Each weight MatMul y = x W becomes (x * m) W' + x[:, o] W[o] (in place), o = `channels[x]`, m zero on o and
    W' = W with rows o zeroed; the second MatMul, named `<name>/outliers`, stays fp32. An input shared by several
    MatMuls (Q, K, V) is split once."""
    from onnx import helper, numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    split: dict[str, tuple[str, str, np.ndarray]] = {}  # input -> (inlier input, outlier input, channels)

    def replace(node: Any) -> list[Any]:
        x, y, nodes = node.input[0], node.output[0], []
        if x not in channels:
            raise ValueError(f"int8 calibration has no outlier channels for MatMul input {x!r}")
        w = numpy_helper.to_array(weights[node.input[1]])
        if x not in split:
            o = np.array(sorted(channels[x]), np.int64)
            mask = np.ones(w.shape[0], np.float32)
            mask[o] = 0
            model.graph.initializer.append(numpy_helper.from_array(mask, x + "/inlier_mask"))
            model.graph.initializer.append(numpy_helper.from_array(o, x + "/outlier_idx"))
            nodes.append(helper.make_node("Mul", [x, x + "/inlier_mask"], [x + "/inliers"]))
            nodes.append(helper.make_node("Gather", [x, x + "/outlier_idx"], [x + OUTLIERS], axis=-1))
            split[x] = (x + "/inliers", x + OUTLIERS, o)
        inliers, outliers, o = split[x]
        model.graph.initializer.append(numpy_helper.from_array(w[o], node.name + OUTLIERS + "/W"))
        rest = w.copy()
        rest[o] = 0
        weights[node.input[1]].CopyFrom(numpy_helper.from_array(rest, node.input[1]))
        node.input[0], node.output[0] = inliers, y + "/inliers"
        outlier_matmul = helper.make_node(
            "MatMul", [outliers, node.name + OUTLIERS + "/W"], [y + OUTLIERS], name=node.name + OUTLIERS
        )
        return [*nodes, node, outlier_matmul, helper.make_node("Add", [y + "/inliers", y + OUTLIERS], [y])]

    rewrite_matmuls(model, (), replace)


def add_row_constants(model: Any) -> None:
    """The constants `row_normalized` reads, added once per graph."""
    from onnx import numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(np.array(1e-6, np.float32), "rows/eps"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "rows/axes"))


def row_normalized(model: Any, x: str) -> list[Any]:
    """Nodes computing `x/r` = max(max |x| over the last axis, 1e-6), kept as (..., 1), and `x/rows` = x / `x/r`."""
    from onnx import helper

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


def scale_rows(model: Any, keep: tuple[str, ...]) -> None:
    """Each weight MatMul (names without `keep`) y = x W becomes ((x / r) W) * r (in place), r = max(max |x| of
    the row, 1e-6): per-token activation scales under `quantize_dynamic`'s one scale per tensor. An input shared
    by several MatMuls is scaled once."""
    from onnx import helper

    add_row_constants(model)
    scaled: set[str] = set()

    def replace(node: Any) -> list[Any]:
        x, y, nodes = node.input[0], node.output[0], []
        if x not in scaled:
            nodes += row_normalized(model, x)
            scaled.add(x)
        node.input[0], node.output[0] = x + "/rows", y + "/rows"
        return [*nodes, node, helper.make_node("Mul", [y + "/rows", x + "/r"], [y])]

    rewrite_matmuls(model, keep, replace)


def build_int8_encoder(source: str, channels: Mapping[str, Sequence[int]], target: str) -> None:
    """Write the int8-compute graph of the encoder graph `source` to `target` (one file)."""
    import onnx
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(source)
    fold_dequantize(model)
    split_outliers(model, channels)
    scale_rows(model, (OUTLIERS,))
    with tempfile.TemporaryDirectory(prefix="bioserc-int8-") as tmp:
        rewritten = os.path.join(tmp, "rewritten.onnx")
        onnx.save(model, rewritten, save_as_external_data=True, location="rewritten.onnx.data")
        names = [n.name for n in weight_matmuls(model)]
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(max(quiet, logging.ERROR))  # its "consider pre-processing" warning
        try:
            quantize_dynamic(
                rewritten,
                target,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=False,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=[n for n in names if n.endswith(OUTLIERS)],
                extra_options={"DefaultTensorType": TensorProto.FLOAT},
            )
        finally:
            logging.getLogger().setLevel(quiet)


def cache_key(manifest: Mapping[str, Any]) -> str:
    """The cache folder's name: the artifact's checksums, its calibration, the recipe and onnxruntime's version."""
    import onnxruntime

    files = {name: entry["sha256"] for name, entry in manifest.get("files", {}).items()}
    blob = json.dumps([RECIPE, onnxruntime.__version__, files, manifest["int8_compute"]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _cached(folder: str) -> bool:
    """Whether `folder` holds a built graph matching its recorded sha256; a mismatched one is removed."""
    graph, digest = os.path.join(folder, "encoder.onnx"), os.path.join(folder, "encoder.onnx.sha256")
    if not (os.path.isfile(digest) and os.path.isfile(graph)):
        return False
    with open(digest, encoding="utf-8") as fh:
        if fh.read().strip() == sha256_file(graph):
            return True
    logger.warning("cached int8 graph %s does not match its checksum: building it again", graph)
    shutil.rmtree(folder, ignore_errors=True)
    return False


def int8_encoder(source: str, manifest: Mapping[str, Any], root: str | None = None) -> str:
    """The int8-compute graph of the artifact encoder `source` (verified artifact `manifest`), built on first use
    under `root` (default `$BIOSERC_CACHE/int8`) and checked against its recorded sha256 on every later one.

    One process per machine builds it (a file lock): a Dataflow VM runs one worker process per core, and each
    build holds the fp32 graph in memory (about 1 GB for mpnet); the others wait and then load the same file.
    """
    parent = root or os.path.join(cache_dir(), "int8")
    folder = os.path.join(parent, cache_key(manifest))
    graph = os.path.join(folder, "encoder.onnx")
    if _cached(folder):
        return graph
    os.makedirs(parent, exist_ok=True)
    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _cached(folder):  # built while this process waited
            return graph
        logger.info("building the int8-compute encoder graph once for this machine (~12 s for mpnet) into %s", folder)
        tmp = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".", dir=parent)
        try:
            build_int8_encoder(source, manifest["int8_compute"]["outlier_channels"], os.path.join(tmp, "encoder.onnx"))
            with open(os.path.join(tmp, "encoder.onnx.sha256"), "w", encoding="utf-8") as fh:
                fh.write(sha256_file(os.path.join(tmp, "encoder.onnx")))
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return graph
