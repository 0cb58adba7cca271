"""An int8-compute encoder graph, built once on the CPU that runs it from the shipped (weight-only) graph.

Why: on a CPU with exact int8 dot products (AVX-512 VNNI, AVX-VNNI, AMX) ONNX Runtime's int8 MatMuls run the
default's encoder at about 2.3x its shipped fp32-compute graph and keep 99.1% of its labels on MELD valid
(docs/BENCHMARKS.md, "int8 compute on a VNNI CPU"). Plain `quantize_dynamic` keeps only 82%; three things make the
difference, all here:

- **8-bit weights, one scale per output column**: exact on VNNI. Without VNNI, ORT's u8 x s8 kernel sums pairs of
  products in int16, which 8-bit weights overflow, so the graph is only used where the CPU has those instructions
  (`exact_int8_flags`).
- **Outlier channels apart** (LLM.int8(), Dettmers et al., 2022): the ~1% of each MatMul's input channels with the
  largest activations (chosen on calibration data at export: `bioserc export int8`, stored in the manifest under
  `int8_compute`) go through a small fp32 MatMul, so the int8 grid fits the rest.
- **Per-token grids** (`integer_rows`): each token's input is quantized over its own range on a fixed uint8 grid,
  which also makes a token's result independent of the other tokens in the encoder call, so labels do not depend
  on batching (`quantize_dynamic` takes one range per call).

The graph is derived, never shipped (it would add ~110 MB to every artifact): `int8_encoder` builds it (~4 s for
mpnet) into `$BIOSERC_CACHE/int8/<key>/` (the key covers the artifact's checksums, the calibration, the recipe and
onnxruntime's version; the folder can be deleted at any time) and checks its sha256 each time it is loaded.
"""

from __future__ import annotations

import fcntl
import glob
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

RECIPE = "int8 per-channel weights, outlier input channels fp32, uint8 rows on a fixed grid, v2"
ROW_LEVELS = 254  # x / max|x| in [-1, 1] -> uint8 0..254 around 127: the whole 8-bit grid for every token
EXACT_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo flags of exact u8 x s8 dot products
MODES = ("auto", "on", "off")
UNCALIBRATED = "has no int8 calibration (add one with `bioserc export int8 ARTIFACT --calibration TRAIN.json`)"
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
        reasons.append(f"the artifact {UNCALIBRATED}")
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


def int8_summary(manifest: Mapping[str, Any]) -> str:
    """For `bioserc models list`: whether the artifact is calibrated, what its check kept, and whether `--int8
    auto` uses it on this CPU."""
    section = manifest.get("int8_compute")
    if not section:
        return "not calibrated"
    check = section.get("check")
    kept = f"{100 * check['labels_equal_shipped']:.2f}% of labels" if check else "unchecked"
    flags = exact_int8_flags()
    return f"{kept}; {'used here (' + ', '.join(flags) + ')' if flags else 'not used here (no VNNI/AMX)'}"


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


def _reduce(model: Any, op: str, x: str, out: str) -> Any:
    """`op` (ReduceMax / ReduceMin) over the last axis, kept, in the graph's opset's form."""
    from onnx import helper

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 18:
        return helper.make_node(op, [x, "rows/axes"], [out], keepdims=1)
    return helper.make_node(op, [x], [out], axes=[-1], keepdims=1)


def integer_rows(model: Any, keep: tuple[str, ...], levels: int = ROW_LEVELS) -> None:
    """Each weight MatMul y = x W (names without `keep`) becomes, in place,

        y = h * MatMulIntegerToFloat(q((x - m) / h), Wq) + m * colsum(Wq)

    with h the half-range of each row (token) of x and m its midpoint (rounded so that 0 is on the grid), q a
    fixed grid of `levels` steps over [-1, 1] (uint8), Wq the weights in int8 with one scale per output column. Every
    token uses the whole 8-bit grid (per-token asymmetric quantization), and the grid is fixed, so a token's result
    does not depend on the other tokens of the encoder call (`quantize_dynamic` takes one range per call): labels do
    not depend on batching. An input shared by several MatMuls (Q, K, V) is quantized once."""
    from onnx import helper, numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    add = model.graph.initializer.append
    constants = {
        "rows/axes": np.array([-1], np.int64),
        "rows/half": np.array(0.5, np.float32),
        "rows/eps": np.array(1e-6, np.float32),
        "rows/scale": np.array(2 / levels, np.float32),
        "rows/zero": np.array(levels // 2, np.uint8),
    }
    for name, value in constants.items():
        add(numpy_helper.from_array(value, name))
    quantized: set[str] = set()  # inputs already normalized and quantized
    replaced: set[str] = set()  # fp32 weights that no node reads any more

    def replace(node: Any) -> list[Any]:
        x, y, name, nodes = node.input[0], node.output[0], node.name, []
        if x not in quantized:
            make = helper.make_node
            nodes += [
                _reduce(model, "ReduceMax", x, x + "/max"),
                _reduce(model, "ReduceMin", x, x + "/min"),
                make("Sub", [x + "/max", x + "/min"], [x + "/range"]),
                make("Mul", [x + "/range", "rows/half"], [x + "/h0"]),
                make("Max", [x + "/h0", "rows/eps"], [x + "/h"]),
                make("Add", [x + "/max", x + "/min"], [x + "/sum"]),
                make("Mul", [x + "/sum", "rows/half"], [x + "/mid"]),
                # the midpoint moved onto the grid, so that 0 is exactly a grid point: the many near-zero inputs
                # (GELU outputs, masked outlier channels) then add nothing, instead of one shared rounding error
                make("Mul", [x + "/h", "rows/scale"], [x + "/step"]),
                make("Div", [x + "/mid", x + "/step"], [x + "/steps"]),
                make("Round", [x + "/steps"], [x + "/k"]),
                make("Mul", [x + "/k", x + "/step"], [x + "/m"]),
                make("Sub", [x, x + "/m"], [x + "/centred"]),
                make("Div", [x + "/centred", x + "/h"], [x + "/rows"]),
                make("QuantizeLinear", [x + "/rows", "rows/scale", "rows/zero"], [x + "/q"]),
            ]
            quantized.add(x)
        w = numpy_helper.to_array(weights[node.input[1]])
        replaced.add(node.input[1])
        scale = (np.maximum(np.abs(w).max(0), 1e-12) / 127).astype(np.float32)
        wq = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        add(numpy_helper.from_array(wq, name + "/Wq"))
        add(numpy_helper.from_array(scale, name + "/Ws"))
        add(numpy_helper.from_array(np.zeros(len(scale), np.int8), name + "/Wz"))
        # colsum of the int8 weights, not of W: y is then exactly x_q Wq, so inputs near m (most of a GELU row)
        # carry no weight-rounding error; with W's colsum that error would add up over every such channel
        colsum = (wq.astype(np.int64).sum(0) * scale.astype(np.float64)).astype(np.float32)
        add(numpy_helper.from_array(colsum, name + "/colsum"))
        inputs = [x + "/q", name + "/Wq", "rows/scale", name + "/Ws", "rows/zero", name + "/Wz"]
        return [
            *nodes,
            helper.make_node(
                "MatMulIntegerToFloat", inputs, [y + "/int8"], name=name + "/int8", domain="com.microsoft"
            ),
            helper.make_node("Mul", [y + "/int8", x + "/h"], [y + "/scaled"]),
            helper.make_node("Mul", [x + "/m", name + "/colsum"], [y + "/offset"]),
            helper.make_node("Add", [y + "/scaled", y + "/offset"], [y]),
        ]

    rewrite_matmuls(model, keep, replace)
    for name in replaced:
        model.graph.initializer.remove(weights[name])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def build_int8_encoder(source: str, channels: Mapping[str, Sequence[int]], target: str) -> None:
    """Write the int8-compute graph of the encoder graph `source` to `target` (one file)."""
    import onnx

    model = onnx.load(source)
    fold_dequantize(model)
    split_outliers(model, channels)
    integer_rows(model, (OUTLIERS,))
    onnx.save(model, target)


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
        for stale in glob.glob(glob.escape(folder) + ".*"):  # a build killed half-way (the lock is ours now)
            if os.path.isdir(stale):
                shutil.rmtree(stale, ignore_errors=True)
        logger.info("building the int8-compute encoder graph once for this machine (~4 s for mpnet) into %s", folder)
        tmp = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".", dir=parent)
        try:
            build_int8_encoder(source, manifest["int8_compute"]["outlier_channels"], os.path.join(tmp, "encoder.onnx"))
            with open(os.path.join(tmp, "encoder.onnx.sha256"), "w", encoding="utf-8") as fh:
                fh.write(sha256_file(os.path.join(tmp, "encoder.onnx")))
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return graph
