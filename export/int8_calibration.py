"""Calibrate an exported classifier for int8 compute, in place: which input channels of each encoder MatMul are
outliers, measured on training conversations, stored in the manifest (`int8_compute`) for
`bioserc.models.int8_graph` to build the int8 graph from on the machine that runs it.

    bioserc export int8 serving_artifacts/default --calibration data/meld.train.json --check data/meld.valid.json

The weights are not touched, so the parity, metrics and seed results stay; the manifest is written again. With
`--check`, the int8 graph labels gold conversations beside the shipped graph and the manifest records the label
agreement and both weighted F1s (the 99%-of-labels bar of docs/BENCHMARKS.md); it needs a CPU where the int8 graph
runs exactly (VNNI or AMX).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from bioserc.artifacts import artifact_file, verify_artifact, write_manifest
from bioserc.export.refresh import WRITTEN
from bioserc.metrics import weighted_f1
from bioserc.models.int8_graph import RECIPE, build_int8_encoder, exact_int8_flags, fold_dequantize, weight_matmuls
from bioserc.models.onnx_classifier import OnnxClassifier
from bioserc.readers import read_conversations
from bioserc.runtime import make_session
from bioserc.schema import Conversation


logger = logging.getLogger(__name__)

CALLS_PER_PREDICT = 16  # as `bioserc label` batches them (--conversations-per-batch)


def _predict(clf: OnnxClassifier, convs: Sequence[Conversation]) -> list:
    """Labels in input order, 16 calls per `predict` as the label pipeline runs them (the same encoder calls)."""
    return [
        p
        for i in range(0, len(convs), CALLS_PER_PREDICT)
        for p in clf.predict(convs[i : i + CALLS_PER_PREDICT], None, batch_size=CALLS_PER_PREDICT)
    ]


def activation_maxima(
    clf: OnnxClassifier, encoder: str, convs: Sequence[Conversation], threads: int | None = None
) -> dict[str, np.ndarray]:
    """max |x_j| of every input channel j of every weight MatMul of `encoder` (the shipped graph, computed in fp32),
    over the encoder calls that labelling `convs` with `clf` makes."""
    model = onnx.load(encoder)
    fold_dequantize(model)
    inputs = sorted({n.input[0] for n in weight_matmuls(model)})
    model.graph.output.extend(helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in inputs)
    maxima: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="bioserc-calibrate-") as tmp:
        path = os.path.join(tmp, "calibration.onnx")
        onnx.save(model, path, save_as_external_data=True, location="calibration.onnx.data")
        session = make_session(path, None, threads)

        class Recorder:  # the classifier's encoder, also keeping the maxima of the extra outputs
            def run(self, _, feed):
                first, *rest = session.run(None, feed)
                for name, value in zip(inputs, rest, strict=True):
                    peak = np.abs(value.reshape(-1, value.shape[-1])).max(0)
                    maxima[name] = np.maximum(maxima.get(name, peak), peak)
                return [first]

        shipped, clf.encoder = clf.encoder, Recorder()
        try:
            _predict(clf, convs)
        finally:
            clf.encoder = shipped
    return maxima


def outlier_channels(maxima: dict[str, np.ndarray], fraction: float) -> dict[str, list[int]]:
    """The `fraction` of each input's channels with the largest maxima (at least one), in ascending order."""
    return {
        name: sorted(int(j) for j in np.argsort(peak)[-max(1, round(fraction * len(peak))) :])
        for name, peak in sorted(maxima.items())
    }


def check_int8(
    clf: OnnxClassifier, channels: dict[str, list[int]], encoder: str, path: str, threads: int | None = None
) -> dict[str, Any]:
    """Label the gold conversations in `path` with the shipped graph and the int8 graph: agreement and W-F1s."""
    flags = exact_int8_flags()
    if not flags:
        raise ValueError(
            "--check needs a CPU with exact int8 dot products (AVX-512 VNNI, AVX-VNNI or AMX in /proc/cpuinfo), "
            "where the int8 graph runs as users' CPUs run it; calibrate without --check here"
        )
    convs = list(read_conversations(path))
    gold = [u.label for c in convs for u in c.utterances]
    if any(label is None for label in gold):
        raise ValueError(f"--check {path}: every utterance needs a gold label")
    shipped = [p.label for p in _predict(clf, convs)]
    with tempfile.TemporaryDirectory(prefix="bioserc-int8-check-") as tmp:
        graph = os.path.join(tmp, "encoder.onnx")
        build_int8_encoder(encoder, channels, graph)
        original, clf.encoder = clf.encoder, make_session(graph, None, threads)
        try:
            int8 = [p.label for p in _predict(clf, convs)]
        finally:
            clf.encoder = original
    return {
        "data": os.path.basename(path),
        "utterances": len(gold),
        "labels_equal_shipped": float(np.mean([a == b for a, b in zip(shipped, int8, strict=True)])),
        "weighted_f1_shipped": weighted_f1(gold, shipped, clf.labels),
        "weighted_f1_int8": weighted_f1(gold, int8, clf.labels),
        "cpu_flags": flags,
    }


def calibrate_int8(
    directory: str,
    calibration: str,
    every: int = 8,
    fraction: float = 0.01,
    check: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Write the int8 calibration of the onnx-classifier at `directory` into its manifest; return the manifest.

    Args:
        calibration: conversations to measure activations on (the training set: labels are not needed).
        every: use every `every`-th conversation (mpnet on MELD train: 130 calls, ~1 minute on 2 cores).
        fraction: share of each MatMul's input channels computed apart in fp32 (0.01: 99.0% of MELD valid
            labels kept; docs/BENCHMARKS.md).
        check: gold-labelled conversations to measure label agreement on (e.g. the valid set).
    """
    if every < 1 or not 0 < fraction < 0.5:
        raise ValueError(f"every must be >= 1 and fraction in (0, 0.5); got {every} and {fraction}")
    manifest = verify_artifact(directory, "onnx-classifier")
    clf = OnnxClassifier(directory, provider="cpu", threads=threads, manifest=manifest, int8="off")
    encoder = artifact_file(directory, manifest, (manifest.get("graphs") or {}).get("encoder", "encoder.onnx"))
    convs = list(read_conversations(calibration))[::every]
    if not convs:
        raise ValueError(f"--calibration {calibration}: no conversations")
    logger.info("int8 calibration: activations of %d conversations of %s", len(convs), calibration)
    channels = outlier_channels(activation_maxima(clf, encoder, convs, threads), fraction)
    section: dict[str, Any] = {
        "recipe": RECIPE,
        "outlier_fraction": fraction,
        "calibration": {"data": os.path.basename(calibration), "conversations": len(convs), "every": every},
        "outlier_channels": channels,
    }
    if check:
        section["check"] = check_int8(clf, channels, encoder, check, threads)
    fields = {key: value for key, value in manifest.items() if key not in (*WRITTEN, "int8_compute")}
    return write_manifest(directory, "onnx-classifier", **fields, int8_compute=section)
