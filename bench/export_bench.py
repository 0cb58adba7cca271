"""Classifier serving speed and int8 accuracy: PyTorch eager vs ONNX Runtime fp32 vs ORT int8, one process, one run.

    python bench/export_bench.py --model runs/meld-minilm/best --data ../shared/data/raw/meld/meld.valid.json \
        --bios data/bios/meld.valid.bios.jsonl.gz --out docs/bench/export.json

Exports the model (fp32, int8 weights, int8 dynamic; or reuses --onnx-fp32/--onnx-int8 folders), then times every
variant on the same conversations in interleaved rounds after a warm-up, so machine drift hits them all alike:

    pytorch eager            length-sorted conversation batches, windows padded to the batch's longest (predict.py)
    ort fp32 / ort int8      the same batches through the exported graphs (int8: `--quantize weights`, the release
                             format: int8 weights per channel, ORT's default block-quantized activations)
    ort int8 dynamic         `--quantize dynamic --per-channel` (quantize_dynamic: activations int8 per tensor)
    ort fp32 input-order     batches in file order (no length sorting), windows padded to the batch's longest
    ort fp32 pad-to-max      batches in file order, every window padded to max_length (a fixed-shape engine's cost)

and reports utterances/s (median over rounds), int8-vs-fp32 and fp32-vs-PyTorch label agreement, max probability
difference, the weighted F1 of each against the gold labels, and `fraction_of_sgemm`: the encoder FLOPs the real
(unpadded) tokens need, per second of the whole predict call, over a 2048^3 fp32 torch.mm's rate on this machine.
The release bar for int8 is >= 99% label agreement
with fp32 on MELD valid and weighted F1 within 0.5 (`int8_ok`, `int8_dynamic_ok`). Check that nothing else is running
(`loadavg` is recorded before and after); shared/docs/dependencies.md section 6 explains why.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from report_io import emit

from bioserc.metrics import weighted_f1
from bioserc.models import load_bios
from bioserc.models.classifier import TorchClassifier
from bioserc.models.onnx_classifier import OnnxClassifier
from bioserc.readers import read_conversations


def in_file_order(classifier, batch_size: int) -> Callable:
    """Predict batch by batch in input order, so no length sorting happens across the whole set."""

    def run(convs, bios):
        return [
            p
            for i in range(0, len(convs), batch_size)
            for p in classifier.predict(convs[i : i + batch_size], bios, batch_size=batch_size)
        ]

    return run


def sgemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate (PyTorch, `threads` threads): the peak the encoder is compared with."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def useful_encoder_gflop(model, convs, bios, batch_size: int) -> float:
    """FLOPs the encoder must spend on the real (unpadded) tokens of every window and bio: 2 x weights x tokens
    for the dense layers plus 4 x T^2 x H per sequence for attention. Padding is work the runtime adds on top."""
    from bioserc.models.collate import Collator

    cfg = model.encoder.config
    layers, hidden, inter = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    per_token = 2 * layers * (4 * hidden * hidden + 2 * hidden * inter)
    collator, total = Collator(model.tokenizer, model.config), 0.0
    for i in range(0, len(convs), batch_size):
        inputs = collator(convs[i : i + batch_size], bios).inputs
        for mask in (inputs["attention_mask"], inputs.get("bio_attention_mask")):
            if mask is not None:
                lengths = mask.sum(dim=1).double()
                total += float(per_token * lengths.sum() + 4 * layers * hidden * (lengths**2).sum())
    return total / 1e9


def timed(fn: Callable, convs, bios) -> tuple[float, list]:
    start = time.perf_counter()
    preds = fn(convs, bios)
    return time.perf_counter() - start, preds


def agreement(a: list, b: list) -> float:
    return float(np.mean([x.label == y.label for x, y in zip(a, b, strict=True)]))


def max_prob_diff(a: list, b: list) -> float:
    return float(np.abs(np.array([x.probs for x in a]) - np.array([y.probs for y in b])).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="trained classifier folder (pytorch-classifier artifact)")
    p.add_argument("--data", default="../shared/data/raw/meld/meld.valid.json")
    p.add_argument("--bios", nargs="*", default=[], help="bios.jsonl file(s) for the data")
    p.add_argument("--limit", type=int, help="first N conversations only")
    p.add_argument("--batch-size", type=int, default=8, help="conversations per batch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch and ORT intra-op threads (default: all CPUs)")
    p.add_argument("--onnx-fp32", help="reuse this fp32 export instead of exporting")
    p.add_argument("--onnx-int8", help="reuse this int8 export instead of exporting")
    p.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args()

    from bioserc.runtime import default_threads

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    convs = read_conversations(args.data)[: args.limit]
    bios = load_bios(args.bios) if args.bios else {}
    report = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "conversations": len(convs),
        "utterances": sum(len(c.utterances) for c in convs),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "loadavg_before": os.getloadavg(),
        "export_s": {},
    }
    n_utt = report["utterances"]

    with tempfile.TemporaryDirectory() as tmp:
        from bioserc.export.onnx_classifier import export_classifier

        dirs = {}
        for name, given, quantize, per_channel in (
            ("fp32", args.onnx_fp32, None, False),
            ("int8", args.onnx_int8, "weights", False),
            ("int8-dynamic", None, "dynamic", True),
        ):
            if given:
                dirs[name] = given
                continue
            dirs[name] = os.path.join(tmp, name)
            start = time.perf_counter()
            export_classifier(args.model, dirs[name], quantize=quantize, per_channel=per_channel)
            report["export_s"][name] = round(time.perf_counter() - start, 2)
        report["encoder_mb"] = {
            k: round(os.path.getsize(os.path.join(d, "encoder.onnx")) / 2**20, 1) for k, d in dirs.items()
        }

        torch_clf = TorchClassifier(args.model)
        fp32 = OnnxClassifier(dirs["fp32"], provider="cpu", threads=threads)
        int8 = OnnxClassifier(dirs["int8"], provider="cpu", threads=threads)
        int8_dyn = OnnxClassifier(dirs["int8-dynamic"], provider="cpu", threads=threads)
        padded = OnnxClassifier(dirs["fp32"], provider="cpu", threads=threads, pad_to_max=True)
        import onnxruntime

        report["onnxruntime"] = onnxruntime.__version__
        bs = args.batch_size
        variants: dict[str, Callable] = {
            "pytorch eager": lambda c, b: torch_clf.predict(c, b, batch_size=bs),
            "ort fp32": lambda c, b: fp32.predict(c, b, batch_size=bs),
            "ort int8": lambda c, b: int8.predict(c, b, batch_size=bs),
            "ort int8 dynamic": lambda c, b: int8_dyn.predict(c, b, batch_size=bs),
            "ort fp32 input-order": in_file_order(fp32, bs),
            "ort fp32 pad-to-max": in_file_order(padded, bs),
        }
        for fn in variants.values():  # warm-up: first-run allocations and graph set-up stay out of the timings
            fn(convs[:bs], bios)
        walls: dict[str, list[float]] = {name: [] for name in variants}
        preds: dict[str, list] = {}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                wall, out = timed(fn, convs, bios)
                walls[name].append(wall)
                preds.setdefault(name, out)
    report["loadavg_after"] = os.getloadavg()
    report["sgemm_gflops"] = round(sgemm_gflops(threads), 1)
    report["encoder_useful_gflop"] = round(useful_encoder_gflop(torch_clf.model, convs, bios, args.batch_size), 1)

    base = statistics.median(walls["pytorch eager"])
    report["rows"] = [
        {
            "variant": name,
            "median_s": round(statistics.median(w), 3),
            "walls_s": [round(x, 3) for x in w],
            "utterances_per_s": round(n_utt / statistics.median(w), 2),
            "speedup_vs_pytorch": round(base / statistics.median(w), 3),
            "fraction_of_sgemm": round(
                report["encoder_useful_gflop"] / statistics.median(w) / report["sgemm_gflops"], 3
            ),
        }
        for name, w in walls.items()
    ]
    gold = {(c.id, u.index): u.label for c in convs for u in c.utterances if u.label is not None}
    labels = torch_clf.labels
    f1 = {}
    for name in ("pytorch eager", "ort fp32", "ort int8", "ort int8 dynamic"):
        pairs = [
            (gold[q.conversation_id, q.index], q.label) for q in preds[name] if (q.conversation_id, q.index) in gold
        ]
        if pairs:
            f1[name] = round(weighted_f1([g for g, _ in pairs], [y for _, y in pairs], labels), 4)
    int8_agree = agreement(preds["ort int8"], preds["ort fp32"])
    dyn_agree = agreement(preds["ort int8 dynamic"], preds["ort fp32"])

    def within(name: str) -> bool:
        return name in f1 and abs(f1[name] - f1["ort fp32"]) <= 0.5

    report["accuracy"] = {
        "weighted_f1": f1,
        "fp32_vs_pytorch_label_agreement": agreement(preds["ort fp32"], preds["pytorch eager"]),
        "fp32_vs_pytorch_max_prob_diff": max_prob_diff(preds["ort fp32"], preds["pytorch eager"]),
        "int8_vs_fp32_label_agreement": int8_agree,
        "int8_vs_fp32_max_prob_diff": max_prob_diff(preds["ort int8"], preds["ort fp32"]),
        "int8_dynamic_vs_fp32_label_agreement": dyn_agree,
        "int8_dynamic_vs_fp32_max_prob_diff": max_prob_diff(preds["ort int8 dynamic"], preds["ort fp32"]),
        "pad_to_max_vs_fp32_label_agreement": agreement(preds["ort fp32 pad-to-max"], preds["ort fp32"]),
        "int8_ok": int8_agree >= 0.99 and within("ort int8"),
        "int8_dynamic_ok": dyn_agree >= 0.99 and within("ort int8 dynamic"),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
