"""Bio-extraction throughput on MELD valid with the embedded SmolLM2, all variants in one process and one run.

    python bench/bios_bench.py --conversations 24 --out docs/bench/bios.json

Measures, on the same conversations: batched vs one-at-a-time generation, ONNX Runtime vs PyTorch, and a rerun
against a warm cache. Prints one JSON object. (Shared-prefix generation and threads: bench/bios_speed.py.)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch
from report_io import emit

from bioserc.bios.backends import make_backend
from bioserc.bios.base import GenerationConfig
from bioserc.bios.cache import BioCache
from bioserc.bios.extract import BioExtractor
from bioserc.readers import read_conversations


def measure(name: str, extractor: BioExtractor, conversations) -> dict:
    start = time.perf_counter()
    results = list(extractor.run(conversations))
    wall = time.perf_counter() - start
    generated = sum(r.new_tokens for r in results if not r.cached)
    prefilled = sum(r.prompt_tokens for r in results if not r.cached)
    row = {
        "variant": name,
        "bios": len(results),
        "failed": sum(r.error is not None for r in results),
        "wall_s": round(wall, 2),
        "bios_per_s": round(len(results) / wall, 3),
        "generated_tokens": generated,
        "prefilled_tokens": prefilled,
        "generated_tokens_per_s": round(generated / wall, 2),
    }
    print(json.dumps(row), flush=True)
    return row


def export_onnx(model_dir: str, out_dir: str) -> float:
    from optimum.exporters.onnx import main_export

    start = time.perf_counter()
    main_export(model_dir, output=out_dir, task="text-generation-with-past")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/raw/meld/meld.valid.json")
    p.add_argument("--conversations", type=int, default=24, help="first N conversations of the file")
    p.add_argument("--single", type=int, default=6, help="conversations for the slow one-at-a-time variant")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--skip-onnx", action="store_true")
    p.add_argument("--only-onnx", action="store_true", help="only PyTorch batched vs ONNX Runtime batched")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    convs = read_conversations(args.data)[: args.conversations]
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    report = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "conversations": len(convs),
        "pairs": sum(len(c.speakers) for c in convs),
        "max_new_tokens": args.max_new_tokens,
        "rows": [],
    }
    rows = report["rows"]
    batched = make_backend("transformers", "smollm2", batch_size=args.batch_size)
    if args.only_onnx:
        return emit(interleaved_onnx_vs_pytorch(args, config, convs, batched, report), args.out)
    rows.append(measure(f"pytorch batched (batch {args.batch_size})", BioExtractor(batched, config), convs))
    single = make_backend("transformers", "smollm2", batch_size=1)
    small = convs[: args.single]
    rows.append(measure("pytorch batched, single subset", BioExtractor(batched, config), small))
    rows.append(measure("pytorch one-at-a-time, single subset", BioExtractor(single, config), small))
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = measure("pytorch batched, cold cache", BioExtractor(batched, config, cache=BioCache(cache_dir)), convs)
        warm = measure("pytorch batched, warm cache", BioExtractor(batched, config, cache=BioCache(cache_dir)), convs)
        rows += [cold, warm]
    if not args.skip_onnx:
        onnx_vs_pytorch(args, config, convs, report)
    by = {r["variant"]: r for r in rows}
    report.setdefault("ratios", {}).update(
        {
            "batched_vs_single_bios_per_s": round(
                by["pytorch batched, single subset"]["bios_per_s"]
                / by["pytorch one-at-a-time, single subset"]["bios_per_s"],
                2,
            ),
            "warm_cache_wall_fraction": round(warm["wall_s"] / cold["wall_s"], 4),
        }
    )
    emit(report, args.out)


def export_cached_onnx() -> str:
    """The SmolLM2 ONNX export (KV cache) under the bioserc cache; exported once."""
    from bioserc.embedded import cache_dir, model_path

    out = cache_dir() / "smollm2-135m-instruct-onnx"
    if not (out / "model.onnx").is_file():
        export_onnx(str(model_path("smollm2")), str(out))
    return str(out)


def onnx_vs_pytorch(args, config: GenerationConfig, convs, report: dict) -> None:
    """Run the same bios on ONNX Runtime; rows[0] is the PyTorch run on the same conversations."""
    start = time.perf_counter()
    ort = make_backend("onnx", export_cached_onnx(), batch_size=args.batch_size)
    report["onnx_export_and_load_s"] = round(time.perf_counter() - start, 1)
    row = measure(f"onnxruntime batched (batch {args.batch_size})", BioExtractor(ort, config), convs)
    report["rows"].append(row)
    report.setdefault("ratios", {})["onnx_vs_pytorch_bios_per_s"] = round(
        row["bios_per_s"] / report["rows"][0]["bios_per_s"], 2
    )


def interleaved_onnx_vs_pytorch(args, config: GenerationConfig, convs, torch_backend, report: dict) -> dict:
    """PyTorch and ORT alternate on chunks of 4 conversations, so machine load drift hits both alike."""
    ort = make_backend("onnx", export_cached_onnx(), batch_size=args.batch_size)
    extractors = {"pytorch": BioExtractor(torch_backend, config), "onnxruntime": BioExtractor(ort, config)}
    wall = dict.fromkeys(extractors, 0.0)
    bios: dict[str, list[str]] = {name: [] for name in extractors}
    for start in range(0, len(convs), 4):
        for name, extractor in extractors.items():
            t0 = time.perf_counter()
            bios[name] += [r.bio for r in extractor.run(convs[start : start + 4])]
            wall[name] += time.perf_counter() - t0
    n = len(bios["pytorch"])
    report["rows"] = [
        {
            "variant": f"{name} batched (batch {args.batch_size}), interleaved",
            "bios": n,
            "wall_s": round(wall[name], 2),
            "bios_per_s": round(n / wall[name], 3),
        }
        for name in wall
    ]
    report["identical_bios"] = sum(a == b for a, b in zip(bios["pytorch"], bios["onnxruntime"], strict=True))
    report["ratios"] = {"onnx_vs_pytorch_bios_per_s": round(wall["pytorch"] / wall["onnxruntime"], 2)}
    return report


if __name__ == "__main__":
    main()
