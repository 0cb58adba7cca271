"""Serving speed of one shipped classifier's encoder in every precision, as a fraction of this machine's matmul roof.

    python bench/serving_variants.py --model serving_artifacts/default \
        --data ../shared/data/raw/meld/meld.valid.json --rounds 3 --out docs/bench/serving_variants.json

Starts from the artifact folder (what users have; the default's fp32 checkpoint was not kept) and builds in a temp dir:

    fp32                 the shipped weights dequantized (`export.weight_only.dequantize_weights`): the reference
    shipped              the artifact as `bioserc label` runs it (int4/int8 weights, fp32 compute: accuracy level 1)
    int8 compute         the same graph with ORT's MatMulNBits accuracy level 4 (activations int8 in small blocks)
    int8 dynamic         `quantize_dynamic --per-channel` of the fp32 graph (activations int8, one scale per tensor)

and the shipped graph with the encoder-call limits changed (`ENCODE_TOKENS` off: 256 windows a call, as before issue
32; or other `--token-budgets`), and with the pipeline's batching (16 calls per predict, as
`--conversations-per-batch 16`) against 64 calls per predict. Every
variant labels the same conversations in interleaved rounds (median wall); reported: utterances/s, label agreement
and max probability difference with fp32, weighted F1, and `fraction_of_sgemm` (FLOPs of the real tokens per second
of the whole predict, over a 2048^3 fp32 torch.mm on the same threads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from types import SimpleNamespace

from export_bench import agreement, in_file_order, max_prob_diff, sgemm_gflops, useful_encoder_gflop
from report_io import emit

from bioserc.artifacts import artifact_file
from bioserc.export.onnx_classifier import dynamic_int8
from bioserc.export.weight_only import dequantize_weights
from bioserc.metrics import weighted_f1
from bioserc.models import onnx_classifier
from bioserc.models.onnx_classifier import OnnxClassifier
from bioserc.readers import read_conversations
from bioserc.runtime import make_session, session_options


def int8_compute_session(path: str, threads: int):
    import onnxruntime as ort

    options = session_options(threads)
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "4")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="serving_artifacts/default", help="an onnx-classifier artifact folder")
    parser.add_argument("--data", required=True, help="gold-labelled conversations (e.g. MELD valid)")
    parser.add_argument("--conversations", type=int, help="only the first N conversations (a quick check)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--token-budgets", type=int, nargs="*", default=[], help="more ENCODE_TOKENS to time")
    parser.add_argument("--out", default=None, help="write the report here (JSON)")
    args = parser.parse_args()

    convs = list(read_conversations(args.data))[: args.conversations]
    gold = [u.label for c in convs for u in c.utterances]
    n = len(gold)
    clf = OnnxClassifier(args.model, provider="cpu", threads=args.threads, int8="off")  # the shipped graph
    shipped = artifact_file(
        args.model, clf.manifest, (clf.manifest.get("graphs") or {}).get("encoder", "encoder.onnx")
    )
    tmp = tempfile.mkdtemp(prefix="serving-variants-")
    fp32, dyn = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "dynamic.onnx")
    dequantize_weights(shipped, fp32)
    dynamic_int8(fp32, dyn, per_channel=True)
    sessions = {
        "fp32": make_session(fp32, None, args.threads),
        "shipped": clf.encoder,
        "int8 compute": int8_compute_session(shipped, args.threads),
        "int8 dynamic": make_session(dyn, None, args.threads),
    }
    by_calls = in_file_order(clf, 16)  # 16 calls a predict, in file order: one pipeline batch

    def with_encoder(name: str, tokens: int = onnx_classifier.ENCODE_TOKENS, run: Callable = by_calls) -> Callable:
        def go(c):
            clf.encoder, onnx_classifier.ENCODE_TOKENS = sessions[name], tokens
            return run(c, None)

        return go

    variants = {name: with_encoder(name) for name in sessions}
    variants["shipped, no token budget (before)"] = with_encoder("shipped", tokens=10**9)
    for tokens in args.token_budgets:
        variants[f"shipped, {tokens} tokens a call"] = with_encoder("shipped", tokens=tokens)
    variants["shipped, 64 calls a predict"] = with_encoder("shipped", run=in_file_order(clf, 64))
    report: dict = {
        "model": args.model,
        "data": args.data,
        "utterances": n,
        "threads": args.threads,
        "machine": platform.machine(),
        "loadavg_before": os.getloadavg(),
        "sizes_mb": {"fp32": os.path.getsize(fp32 + ".data") / 2**20, "int8 dynamic": os.path.getsize(dyn) / 2**20},
    }
    with_encoder("shipped")(convs[:8])  # warm-up
    walls: dict[str, list[float]] = {k: [] for k in variants}
    preds: dict[str, list] = {}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            preds[name] = fn(convs)
            walls[name].append(time.perf_counter() - start)
    report["loadavg_after"] = os.getloadavg()
    roof = sgemm_gflops(args.threads)
    encoder_config = SimpleNamespace(
        **json.load(open(artifact_file(args.model, clf.manifest, "config.json")))["encoder_config"]
    )
    model = SimpleNamespace(encoder=SimpleNamespace(config=encoder_config), tokenizer=clf.tokenizer, config=clf.config)
    gflop = useful_encoder_gflop(model, convs, None, 16)
    report.update(sgemm_gflops=roof, useful_encoder_gflop=gflop, variants={})
    base = statistics.median(walls["shipped"])
    for name in variants:
        wall = statistics.median(walls[name])
        labels = [p.label for p in preds[name]]
        report["variants"][name] = {
            "wall_s": walls[name],
            "utterances_per_s": n / wall,
            "vs_shipped": base / wall,
            "fraction_of_sgemm": gflop / wall / roof,
            "labels_equal_fp32": agreement(preds[name], preds["fp32"]),
            "max_prob_diff_fp32": max_prob_diff(preds[name], preds["fp32"]),
            "weighted_f1": weighted_f1(gold, labels, clf.labels),
        }
    emit(report, args.out)


if __name__ == "__main__":
    main()
