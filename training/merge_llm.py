"""Fold a LoRA adapter from `train_llm` into its base model: one plain HF folder (safetensors) for serving/export.

    python -m bioserc.training.merge_llm --adapter runs/meld-smollm2-lora/adapter -o runs/meld-smollm2-merged
    python -m bioserc.training.merge_llm --base models/Llama-2-13b-hf --adapter runs/meld-13b/adapter -o merged/

The base defaults to the one the adapter's manifest names. A QLoRA adapter is merged into the 16/32-bit base
(the usual practice: merging into 4-bit weights would round the update away). The merge runs and is saved in
`--dtype`, bfloat16 by default: the base is loaded in it, so peak memory is the model in that dtype (13B: 26 GB, where
float32 needs 52 GB), and it is the dtype GPU servers run. Scoring on CPU upcasts to float32 on load; pass
`--dtype float32` for weights that match base + adapter to fp32 rounding. The output holds the merged weights,
the adapter's tokenizer (with its chat template) and an hf-llm manifest that keeps the labels and prompt settings,
so `bioserc evaluate --model OUT` and the pipelines classify with it exactly like with the adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence

import torch

from bioserc.artifacts import manifest_id, verify_artifact, write_manifest
from bioserc.embedded import resolve_model
from bioserc.fsutil import replace_dir
from bioserc.training.checkpoint import DEV_REPORT


DTYPES = ("bfloat16", "float32", "float16")


def merge(base: str | None, adapter: str, out: str, dtype: str = DTYPES[0]) -> dict:
    """Merge `adapter` (a lora-adapter artifact) into `base` (None: the manifest's) and write `out`; returns the
    new manifest. `dtype` is the dtype the merged weights are computed and saved in."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = verify_artifact(adapter, "lora-adapter")
    base = base or manifest["base_model"]
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(base), dtype=getattr(torch, dtype), use_safetensors=True
    )
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tmp = f"{out.rstrip(os.sep)}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(tmp)
    if os.path.isfile(os.path.join(adapter, DEV_REPORT)):
        shutil.copy(os.path.join(adapter, DEV_REPORT), tmp)
    keep = (
        "model_family",
        "label_set",
        "labels",
        "prompt_version",
        "prompt",
        "chat_template",
        "lora",
        "metrics",
        "step",
    )
    fields = {k: manifest[k] for k in keep if k in manifest}
    new = write_manifest(
        tmp,
        "hf-llm",
        **fields,
        base_model=base,
        dtype=dtype,
        source_adapter={"path": os.path.abspath(adapter), "manifest_hash": manifest_id(adapter)},
    )
    replace_dir(tmp, out)
    return new


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring's layout kept, every flag's default shown."""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bioserc merge", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--adapter", required=True, help="adapter folder written by train_llm (OUT/adapter)")
    parser.add_argument(
        "--base", help="base model folder or embedded name; None: the base the adapter's manifest names"
    )
    parser.add_argument("-o", "--output", required=True, help="folder for the merged model")
    parser.add_argument(
        "--dtype",
        default=DTYPES[0],
        choices=DTYPES,
        help="dtype the merge runs in and the weights are saved in (recorded in the manifest)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    manifest = merge(args.base, args.adapter, args.output, args.dtype)
    print(
        json.dumps({k: manifest[k] for k in ("kind", "base_model", "dtype", "label_set", "prompt_version")}, indent=2)
    )
    print(f"merged model written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
