"""A short CPU measurement of the LLM variant: LoRA on a MELD train subset, then MELD valid weighted F1 on a subset by
label scoring and by free generation (+ invalid-output rate), and training tokens/s. Prints one JSON object.

    /work/venv/bin/python bench/llm_bench.py                       # SmolLM2, 64 train samples, 100 valid utterances
    /work/venv/bin/python bench/llm_bench.py --train-samples 16 --eval-utterances 20 --zero-shot

Bios are used only if data/bios/meld.train.bios.jsonl.gz exists (then the valid bios too); otherwise the run is the
"LoRA without bios" ablation (bio_mode none). Numbers from a tiny subset say how fast, not how good.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from bioserc.readers import read_conversations
from bioserc.training.evaluate import evaluate
from bioserc.training.llm_setup import first_utterances
from bioserc.training.train_llm import load_config, train


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MELD = os.path.join(ROOT, "..", "shared", "data", "raw", "meld")
BIOS = os.path.join(ROOT, "data", "bios")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--train-samples", type=int, default=64)
    p.add_argument("--eval-utterances", type=int, default=100)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-length", type=int, default=768)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--zero-shot", action="store_true", help="also label-score with the untrained base model")
    p.add_argument("--output", default=os.path.join(ROOT, "runs", "llm-bench"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    train_bios = os.path.join(BIOS, "meld.train.bios.jsonl.gz")
    use_bios = os.path.isfile(train_bios)
    bio_args = (
        {
            "bio_mode": "prompt",
            "train_bios": [train_bios],
            "dev_bios": [os.path.join(BIOS, "meld.valid.bios.jsonl.gz")],
        }
        if use_bios
        else {"bio_mode": "none"}
    )
    config = load_config(
        None,
        model=args.model,
        train_data=[os.path.join(MELD, "meld.train.json")],
        label_set="meld",
        max_train_samples=args.train_samples,
        num_train_epochs=args.epochs,
        lora_r=args.lora_r,
        lora_alpha=4 * args.lora_r,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_seq_length=args.max_seq_length,
        group_by_length=True,
        eval_mode="none",
        logging_steps=1,
        save_steps=10_000,
        output_dir=args.output,
        device="cpu",
        **bio_args,
    )
    result = train(config)
    valid = first_utterances(read_conversations([os.path.join(MELD, "meld.valid.json")]), args.eval_utterances)
    bios = bio_args.get("dev_bios")
    out = {
        "model": args.model,
        "bios": use_bios,
        "threads": torch.get_num_threads(),
        "train": {
            k: result[k]
            for k in (
                "samples",
                "steps",
                "train_loss",
                "train_seconds",
                "train_tokens",
                "train_tokens_per_second",
                "trainable_parameters",
            )
        },
        "loss_first_last": [result["loss_history"][0], result["loss_history"][-1]],
    }
    for mode in ("score", "generate"):
        start = time.monotonic()
        report = evaluate(result["adapter_dir"], valid, bios, batch_size=8, mode=mode)
        out[mode] = {
            "weighted_f1": round(report["weighted_f1"], 2),
            "accuracy": round(report["accuracy"], 2),
            "n": report["n"],
            "seconds": round(time.monotonic() - start, 1),
            **({"invalid_rate": round(report["invalid_rate"], 3)} if mode == "generate" else {}),
        }
        print(json.dumps({mode: out[mode]}), file=sys.stderr)
    if args.zero_shot:  # the same prompts on the base model: the adapter switched off
        from bioserc.models.collate import load_bios
        from bioserc.models.llm_scoring import LlmClassifier
        from bioserc.training.evaluate import llm_report

        start = time.monotonic()
        classifier = LlmClassifier.from_pretrained(result["adapter_dir"], device="cpu")
        with classifier.model.disable_adapter():
            report = llm_report(classifier, valid, load_bios(bios) if bios else None, 8)
        out["zero_shot_score"] = {
            "weighted_f1": round(report["weighted_f1"], 2),
            "n": report["n"],
            "seconds": round(time.monotonic() - start, 1),
        }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
