"""`bioserc export`: trained models -> serving artifacts (each with a checksummed manifest.json).

    bioserc export onnx     --model runs/meld-minilm/best -o serving_artifacts/meld-minilm-onnx [--quantize]
    bioserc export onnx-llm --model runs/meld-smollm2-merged -o serving_artifacts/smollm2-onnx
    bioserc export trtllm   --model runs/meld-smollm2-merged -o serving_artifacts/smollm2-trt [--serve-only]
    bioserc export refresh  serving_artifacts/default [--seed-results RESULTS.json --seed-variant meld/mpnet]
    bioserc export int8     serving_artifacts/default --calibration meld.train.json [--check meld.valid.json]

`onnx` exports the BERT-based classifier (encoder + conversation head graphs; --quantize = int8 weights),
`refresh` rewrites an exported classifier's card and manifest in place (more seeds finished, a newer layout),
`int8` calibrates an exported classifier for int8 compute on CPUs with VNNI/AMX (`bioserc label --int8`),
`onnx-llm` the merged LLM with a KV cache for `bioserc bios --backend onnx`, and `trtllm` builds a TensorRT-LLM
engine (Python 3.12 NVIDIA container with a GPU only) or, with --serve-only, writes the `trtllm-serve`
instructions for TensorRT-LLM's engine-free PyTorch backend.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from bioserc.artifacts import ArtifactError
from bioserc.export.onnx_llm import PARITY_TOLERANCE


def _files(directory: str) -> list[tuple[str, int]]:
    out = []
    for root, _dirs, names in os.walk(directory):
        for name in sorted(names):
            path = os.path.join(root, name)
            out.append((os.path.relpath(path, directory), os.path.getsize(path)))
    return sorted(out)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def summarize(out_dir: str, manifest: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    lines = [f"{manifest['kind']} artifact written to {out_dir}"]
    for rel, size in _files(out_dir):
        lines.append(f"  {rel:<40} {_human(size):>10}")
    for key in ("precision", "opset", "bio_mode", "labels", "prompt_version", "limits", "model_path"):
        if manifest.get(key) is not None:
            lines.append(f"  {key}: {json.dumps(manifest[key])}")
    for key, value in {**(manifest.get("parity") or {}), **(extra or {})}.items():
        lines.append(f"  {key}: {value:.3g}" if isinstance(value, float) else f"  {key}: {value}")
    return "\n".join(lines)


def cmd_onnx(args: argparse.Namespace) -> int:
    from bioserc.export.onnx_classifier import export_classifier

    if args.per_channel and args.quantize != "dynamic":
        raise ValueError("--per-channel only applies with --quantize dynamic (--quantize weights has finer scales)")
    if args.bits != 8 and args.quantize != "weights":
        raise ValueError(f"--bits {args.bits} only applies with --quantize weights (dynamic int8 is 8-bit)")
    if args.int8_check and not args.int8_calibration:
        raise ValueError("--int8-check needs --int8-calibration (the data the outlier channels are measured on)")
    if (args.seed_results is None) != (args.seed_variant is None):
        missing = "--seed-variant" if args.seed_results else "--seed-results"
        raise ValueError(
            f"--seed-results and --seed-variant go together (the results.json and its DATASET/VARIANT "
            f"row): {missing} is missing"
        )
    manifest = export_classifier(
        args.model,
        args.output,
        quantize=args.quantize,
        optimize=args.optimize,
        opset=args.opset,
        per_channel=args.per_channel,
        bits=args.bits,
        seed_results=args.seed_results,
        seed_variant=args.seed_variant,
    )
    if args.int8_calibration:
        from bioserc.export.int8_calibration import calibrate_int8

        manifest = calibrate_int8(args.output, args.int8_calibration, check=args.int8_check)
    print(summarize(args.output, manifest))
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    from bioserc.export.refresh import refresh_classifier

    manifest = refresh_classifier(args.model, seed_results=args.seed_results, seed_variant=args.seed_variant)
    print(summarize(args.model, manifest))
    return 0


def cmd_int8(args: argparse.Namespace) -> int:
    from bioserc.export.int8_calibration import calibrate_int8

    manifest = calibrate_int8(
        args.model, args.calibration, args.every, args.outliers, args.check, args.threads or None
    )
    check = manifest["int8_compute"].get("check")
    extra = (
        {
            "int8 check": f"{100 * check['labels_equal_shipped']:.2f}% of {check['utterances']} labels as the "
            f"shipped graph's; W-F1 {check['weighted_f1_shipped']:.2f} -> {check['weighted_f1_int8']:.2f}"
        }
        if check
        else None
    )
    print(summarize(args.model, manifest, extra))
    return 0


def cmd_onnx_llm(args: argparse.Namespace) -> int:
    from bioserc.export.onnx_llm import export_llm

    manifest = export_llm(
        args.model,
        args.output,
        opset=args.opset,
        validate=args.validate,
        parity=not args.no_parity,
        parity_tolerance=args.parity_tolerance,
    )
    print(summarize(args.output, manifest))
    return 0


def cmd_trtllm(args: argparse.Namespace) -> int:
    from bioserc.export import trtllm

    context = None
    if args.context_limit is None and os.path.isfile(os.path.join(args.model, "config.json")):
        with open(os.path.join(args.model, "config.json"), encoding="utf-8") as fh:
            context = json.load(fh).get("max_position_embeddings")
    size = trtllm.size_for_workload(
        args.bio_prompt_tokens,
        args.bio_new_tokens,
        args.label_prompt_tokens,
        args.label_tokens,
        max_batch_size=args.max_batch_size,
        context_limit=args.context_limit or context,
    )
    size = trtllm.EngineSize(
        size.max_batch_size,
        args.max_input_len or size.max_input_len,
        args.max_seq_len or size.max_seq_len,
        args.max_num_tokens or size.max_num_tokens,
    )
    if args.serve_only:
        manifest = trtllm.write_serve_only(
            args.model,
            args.output,
            adapter_dir=args.adapter,
            base_dir=args.base,
            size=size,
            host=args.host,
            port=args.port,
        )
    else:
        manifest = trtllm.build_engine(
            args.model,
            args.output,
            size.max_batch_size,
            size.max_input_len,
            size.max_seq_len,
            dtype=args.dtype,
            max_num_tokens=size.max_num_tokens,
            host=args.host,
            port=args.port,
        )
    print(summarize(args.output, manifest))
    print(f"serve it: see {os.path.join(args.output, trtllm.SERVE_README)}")
    return 0


def in_place(sub: Any, name: str, what: str) -> argparse.ArgumentParser:
    """A subcommand that rewrites an exported classifier in place (its one positional argument)."""
    p = sub.add_parser(
        name, formatter_class=argparse.ArgumentDefaultsHelpFormatter, help=f"an exported classifier, in place: {what}"
    )
    p.add_argument("model", metavar="ARTIFACT", help="an exported classifier folder (bioserc export onnx)")
    return p


def make_parser(prog: str = "bioserc export") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="target", required=True)

    p = sub.add_parser(
        "onnx",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="the BERT-based classifier -> ONNX (encoder + head graphs), optionally int8",
    )
    p.add_argument("--model", required=True, help="trained classifier folder (e.g. runs/NAME/best)")
    p.add_argument("-o", "--output", required=True, help="artifact folder to write (replaced if it is one)")
    p.add_argument(
        "--quantize",
        nargs="?",
        const="weights",
        choices=("weights", "dynamic"),
        help="'weights' (what a bare --quantize means: int8 weights in both graphs, fp32 activations, "
        "4x smaller, >=99%% labels kept on MELD; see --bits) or 'dynamic' (the encoder's activations "
        "int8 too; loses labels); None: fp32",
    )
    p.add_argument(
        "--bits",
        type=int,
        choices=(8, 4),
        default=8,
        help="with --quantize weights: bits per encoder MatMul weight; 4 for encoders over ~100M "
        "parameters (mpnet's graph: 115 -> 74 MB; embedding tables stay int8), at some accuracy "
        "(docs/BENCHMARKS.md)",
    )
    p.add_argument("--per-channel", action="store_true", help="with --quantize dynamic: scales per output channel")
    p.add_argument("--optimize", action="store_true", help="fuse attention/LayerNorm/GELU in the encoder graph")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument(
        "--seed-results",
        metavar="RESULTS.json",
        help="a bench/sweep.py results.json: the model card states weighted F1 as mean ± std over the "
        "seeds of --seed-variant's row (and the manifest records them); None: this checkpoint only",
    )
    p.add_argument(
        "--seed-variant",
        metavar="DATASET/VARIANT",
        help="with --seed-results: the row of the settings this checkpoint was trained with (e.g. meld/scores)",
    )
    p.add_argument(
        "--int8-calibration",
        metavar="DATA",
        help="also calibrate the export for int8 compute on VNNI/AMX CPUs, as `bioserc export int8 OUT "
        "--calibration DATA` (the training set)",
    )
    p.add_argument(
        "--int8-check", metavar="DATA", help="with --int8-calibration: as `bioserc export int8 --check DATA`"
    )
    p.set_defaults(func=cmd_onnx)

    p = in_place(
        sub,
        "refresh",
        "graphs sharded, card and manifest rewritten (no checkpoint needed; weights unchanged)",
    )
    p.add_argument(
        "--seed-results",
        metavar="RESULTS.json",
        help="a newer bench/sweep.py results.json: the card states --seed-variant's row; None: keep the "
        "manifest's seed results",
    )
    p.add_argument("--seed-variant", metavar="DATASET/VARIANT", help="with --seed-results: this model's row")
    p.set_defaults(func=cmd_refresh)

    p = in_place(
        sub,
        "int8",
        "its encoder calibrated for int8 compute on CPUs with VNNI/AMX (`bioserc label --int8`; weights unchanged)",
    )
    p.add_argument(
        "--calibration",
        required=True,
        metavar="DATA",
        help="conversations to measure the encoder's activations on, any supported format (the training set; "
        "labels not needed)",
    )
    p.add_argument("--every", type=int, default=8, metavar="N", help="use every N-th calibration conversation")
    p.add_argument(
        "--outliers",
        type=float,
        default=0.01,
        metavar="FRACTION",
        help="share of each encoder MatMul's input channels (the largest activations) kept in fp32",
    )
    p.add_argument(
        "--check",
        metavar="DATA",
        help="gold-labelled conversations (the valid set): record how many labels the int8 graph keeps and "
        "both weighted F1s in the manifest (needs a CPU with VNNI or AMX)",
    )
    p.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads; 0: automatic")
    p.set_defaults(func=cmd_int8)

    p = sub.add_parser(
        "onnx-llm",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="a merged LLM -> ONNX with KV cache (optimum), for bios --backend onnx and label scoring",
    )
    p.add_argument("--model", required=True, help="merged HF model folder (python -m bioserc.training.merge_llm)")
    p.add_argument("-o", "--output", required=True, help="artifact folder to write")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset; None: optimum's choice for the architecture")
    p.add_argument(
        "--no-parity",
        action="store_true",
        help="skip the parity check (fixed prompts scored by PyTorch and ONNX Runtime; the export fails "
        "when they differ); it loads the fp32 model once more, too much for very large models",
    )
    p.add_argument(
        "--parity-tolerance",
        type=float,
        default=PARITY_TOLERANCE,
        metavar="NATS",
        help="largest |answer log-likelihood difference| the parity check accepts",
    )
    p.add_argument(
        "--validate",
        action="store_true",
        help="also let optimum compare ORT and PyTorch outputs on random inputs (slow)",
    )
    p.set_defaults(func=cmd_onnx_llm)

    p = sub.add_parser(
        "trtllm",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="a merged LLM -> TensorRT-LLM engine (GPU + NVIDIA container), or serve notes",
    )
    p.add_argument("--model", required=True, help="merged HF model folder")
    p.add_argument("-o", "--output", required=True, help="engine folder (or instructions folder with --serve-only)")
    p.add_argument(
        "--serve-only",
        action="store_true",
        help="no engine: write trtllm-serve instructions (PyTorch backend) and a manifest; no GPU needed",
    )
    p.add_argument("--max-batch-size", type=int, default=64, help="requests batched by the engine")
    p.add_argument("--bio-prompt-tokens", type=int, default=1024, help="longest bio prompt (tokens) to size for")
    p.add_argument("--bio-new-tokens", type=int, default=96, help="bio generation limit (bios --max-new-tokens)")
    p.add_argument("--label-prompt-tokens", type=int, default=0, help="longest label prompt (LLM classifier)")
    p.add_argument("--label-tokens", type=int, default=0, help="tokens generated per label")
    p.add_argument("--max-input-len", type=int, help="override the sized longest prompt (None: sized)")
    p.add_argument("--max-seq-len", type=int, help="override the sized prompt + generation length (None: sized)")
    p.add_argument("--max-num-tokens", type=int, help="override the sized tokens per forward step (None: sized)")
    p.add_argument("--context-limit", type=int, help="model context; None: config.json max_position_embeddings")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float16", "bfloat16", "float32"],
        help="engine precision (auto: the checkpoint's)",
    )
    p.add_argument("--adapter", help="with --serve-only: a LoRA adapter to serve unmerged (writes the YAML)")
    p.add_argument("--base", help="with --adapter: the base model folder the adapter applies to")
    p.add_argument("--host", default="0.0.0.0", help="trtllm-serve address written into the instructions")
    p.add_argument("--port", type=int, default=8000, help="trtllm-serve port")
    p.set_defaults(func=cmd_trtllm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ArtifactError, FileNotFoundError, FileExistsError, ValueError, ImportError, RuntimeError) as err:
        print(f"bioserc export {args.target}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
