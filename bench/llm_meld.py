"""The LLM variant's MELD valid score on this CPU (issue 16), resumable: rerun the same command after a stop.

    python bench/llm_meld.py --out docs/bench/llm_meld.json
    python bench/llm_meld.py --bio-mode none --root runs/llm-meld-nobio --out docs/bench/llm_meld_nobio.json

Stages, each skipped when ROOT/results.json already holds it (training continues from its last checkpoint-N):
train  LoRA on the embedded SmolLM2 with training/configs/meld_smollm2_lora.yaml (a class-balanced MELD train
       subset, bios in the prompt; `--bio-mode none`: the paper's "LoRA without bios"), the committed bios of
       data/bios/ (--bios-dir); the loss curve is read from the Trainer's log.
eval   every MELD valid utterance scored twice, with each speaker's bio and with the bio left out; each pass gives
       the sum, mean and first-token scorings from the same forward passes (`label_logliks`): weighted and macro
       F1, and the share of the most-predicted label (1.0 would be the one-label collapse).
bert   the shipped default (serving_artifacts/default, no bios) on the same utterances.
speed  the adapter merged (`bioserc merge`, bf16) and exported (`bioserc export onnx-llm`, parity checked), then
       utterances/s of PyTorch and ONNX Runtime on the first --speed-utterances valid utterances (with bios),
       alternating --rounds times, and their label agreement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from report_io import emit


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "training", "configs", "meld_smollm2_lora.yaml")


def bioserc(*args: str) -> None:
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "bioserc"), *args], check=True)


def train_stage(args) -> dict[str, Any]:
    from bioserc.training.train_llm import load_config, train

    out = os.path.join(args.root, "lora")
    adapter = os.path.join(out, "adapter")
    if not os.path.isfile(os.path.join(adapter, "manifest.json")):
        resume = any(name.startswith("checkpoint-") for name in os.listdir(out)) if os.path.isdir(out) else False
        config = load_config(
            CONFIG,
            train_data=[os.path.join(args.data, "meld.train.json")],
            dev_data=[os.path.join(args.data, "meld.valid.json")],
            train_bios=[os.path.join(args.bios_dir, "meld.train.bios.jsonl.gz")],
            dev_bios=[os.path.join(args.bios_dir, "meld.valid.bios.jsonl.gz")],
            bio_mode=args.bio_mode,
            eval_mode="none",
            logging_steps=1,
            threads=args.threads,
            output_dir=out,
            resume=resume,
        )
        train(config)
    with open(os.path.join(out, "train_config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    checkpoint = max((d for d in os.listdir(out) if d.startswith("checkpoint-")), key=lambda d: int(d.split("-")[1]))
    with open(os.path.join(out, checkpoint, "trainer_state.json"), encoding="utf-8") as fh:
        state = json.load(fh)
    logs = [row for row in state["log_history"] if "loss" in row]
    return {
        "adapter": adapter,
        "steps": state["global_step"],
        "config": {
            k: config[k]
            for k in (
                "max_train_samples",
                "class_balance",
                "window",
                "bio_mode",
                "lora_r",
                "lora_alpha",
                "learning_rate",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "num_train_epochs",
                "max_seq_length",
                "seed",
            )
        },
        "loss_curve": [[row["step"], round(row["loss"], 4)] for row in logs],
    }


def predictions(classifier, conversations, bios, batch_size: int) -> tuple[dict[str, list[str]], float, int]:
    """Every utterance's label under each scoring, from one pass; (labels per scoring, seconds, prompt tokens)."""
    from tqdm import tqdm

    from bioserc.batching import length_sorted_chunks
    from bioserc.models.llm_encoding import utterance_bio
    from bioserc.models.llm_scoring import check_scoring, label_logliks

    encoder, labels = classifier.encoder, classifier.labels
    prompts = [
        encoder.prompt_ids(c, i, utterance_bio(bios, c, i)) for c in conversations for i in range(len(c.utterances))
    ]
    try:
        check_scoring("first", labels, encoder.answers)
        scorings = ["sum", "mean", "first"]
    except ValueError:
        scorings = ["sum", "mean"]
    out = {s: [""] * len(prompts) for s in scorings}
    start = time.perf_counter()
    for chunk in tqdm(length_sorted_chunks([len(p) for p in prompts], batch_size), desc="scoring", unit="batch"):
        scores = label_logliks(classifier.model, [prompts[n] for n in chunk], encoder.answers, encoder.pad_id)
        for s in scorings:
            for n, row in zip(chunk, scores[s], strict=True):
                out[s][n] = labels[int(row.argmax())]
    return out, time.perf_counter() - start, sum(map(len, prompts))


def report(gold: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    from bioserc.metrics import classification_report

    r = classification_report(gold, predicted, labels)
    top, n = Counter(predicted).most_common(1)[0]
    return {
        "weighted_f1": round(r["weighted_f1"], 2),
        "macro_f1": round(r["macro_f1"], 2),
        "accuracy": round(r["accuracy"], 2),
        "most_predicted": top,
        "most_predicted_share": round(n / len(gold), 3),
        "predicted": dict(Counter(predicted)),
        "per_class_f1": {k: round(v["f1"], 1) for k, v in r["per_class"].items()},
    }


def eval_stage(args, results: dict) -> None:
    from bioserc.models.collate import load_bios
    from bioserc.models.llm_scoring import LlmClassifier
    from bioserc.readers import read_conversations

    convs = read_conversations(os.path.join(args.data, "meld.valid.json"))
    gold = [u.label for c in convs for u in c.utterances]
    classifier = LlmClassifier.from_pretrained(results["train"]["adapter"], device="cpu")
    bios = load_bios(os.path.join(args.bios_dir, "meld.valid.bios.jsonl.gz"))
    evals = results.setdefault("eval", {})
    conditions = (
        (("with bios", bios), ("bios left out", None))
        if classifier.bio_mode != "none"
        else (("trained and scored without bios", None),)
    )
    for name, condition in conditions:
        if name in evals:
            continue
        labels, seconds, tokens = predictions(classifier, convs, condition, args.batch_size)
        missing = sum((c.id, u.speaker) not in (condition or {}) for c in convs for u in c.utterances)
        evals[name] = {
            "utterances": len(gold),
            "without_bio": missing,
            "seconds": round(seconds, 1),
            "prompt_tokens": tokens,
            "utterances_per_s": round(len(gold) / seconds, 2),
            **{s: report(gold, p, classifier.labels) for s, p in labels.items()},
        }
        save(args, results)


def bert_stage(args) -> dict[str, Any]:
    from bioserc.artifacts import default_model_dir
    from bioserc.training.evaluate import evaluate

    start = time.perf_counter()
    r = evaluate(default_model_dir(), os.path.join(args.data, "meld.valid.json"), threads=args.threads)
    return {
        "model": "serving_artifacts/default",
        "utterances": r["n"],
        "weighted_f1": round(r["weighted_f1"], 2),
        "macro_f1": round(r["macro_f1"], 2),
        "seconds": round(time.perf_counter() - start, 1),
    }


def speed_stage(args, results: dict) -> dict[str, Any]:
    from bioserc.models.classifier import load_classifier
    from bioserc.models.collate import load_bios
    from bioserc.readers import read_conversations
    from bioserc.training.llm_setup import first_utterances

    merged, onnx = os.path.join(args.root, "merged"), os.path.join(args.root, "merged-onnx")
    if not os.path.isfile(os.path.join(merged, "manifest.json")):
        bioserc("merge", "--adapter", results["train"]["adapter"], "-o", merged)
    if not os.path.isfile(os.path.join(onnx, "manifest.json")):
        bioserc("export", "onnx-llm", "--model", merged, "-o", onnx)
    with open(os.path.join(onnx, "manifest.json"), encoding="utf-8") as fh:
        parity = json.load(fh).get("parity")
    convs = first_utterances(read_conversations(os.path.join(args.data, "meld.valid.json")), args.speed_utterances)
    bios = load_bios(os.path.join(args.bios_dir, "meld.valid.bios.jsonl.gz"))
    models = {
        "pytorch": load_classifier(merged, threads=args.threads),
        "onnxruntime": load_classifier(onnx, threads=args.threads),
    }
    wall, labels = Counter(), {}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            labels[name] = [p.label for p in model.predict(convs, bios, batch_size=args.batch_size)]
            wall[name] += time.perf_counter() - start
    n = len(labels["pytorch"])
    rows = {name: {"utterances_per_s": round(args.rounds * n / wall[name], 2)} for name in models}
    return {
        "utterances": n,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "export_parity": parity,
        **rows,
        "onnxruntime_vs_pytorch": round(wall["pytorch"] / wall["onnxruntime"], 2),
        "same_labels": sum(a == b for a, b in zip(labels["pytorch"], labels["onnxruntime"], strict=True)),
    }


def save(args, results: dict) -> None:
    with open(os.path.join(args.root, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data",
        default=os.path.join(ROOT, "..", "shared", "data", "raw", "meld"),
        help="folder with meld.train.json and meld.valid.json",
    )
    p.add_argument("--bios-dir", default=os.path.join(ROOT, "data", "bios"))
    p.add_argument("--root", default=os.path.join(ROOT, "runs", "llm-meld"), help="checkpoints, exports, results")
    p.add_argument(
        "--stages", nargs="+", default=["train", "eval", "bert", "speed"], choices=["train", "eval", "bert", "speed"]
    )
    p.add_argument("--bio-mode", default="prompt", choices=["prompt", "none"], help="train with bios or without")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per scoring pass")
    p.add_argument("--speed-utterances", type=int, default=150)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.makedirs(args.root, exist_ok=True)
    path = os.path.join(args.root, "results.json")
    results: dict[str, Any] = json.load(open(path, encoding="utf-8")) if os.path.isfile(path) else {}
    results.update(cpus=os.cpu_count(), threads=args.threads)
    run = {
        "train": lambda: train_stage(args),
        "bert": lambda: bert_stage(args),
        "speed": lambda: speed_stage(args, results),
    }
    for stage in args.stages:
        if stage == "eval":
            eval_stage(args, results)
        elif stage not in results:
            results[stage] = run[stage]()
        save(args, results)
        print(json.dumps({stage: "done"}), flush=True)
    emit(results, args.out)


if __name__ == "__main__":
    main()
