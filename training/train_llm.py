r"""Fine-tune a causal LM with LoRA (or QLoRA) to name the emotion of each utterance: the LLM-based BiosERC.

    python -m bioserc.training.train_llm --config training/configs/meld_smollm2_lora.yaml
    python -m bioserc.training.train_llm --config training/configs/meld_smollm2_lora.yaml --max_train_samples 64 \
        --lora_r 8 --output_dir runs/try
    python -m bioserc.training.train_llm --config training/configs/meld_smollm2_lora.yaml --resume
    python -m bioserc.training.train_llm --config training/configs/meld_llama2_13b_qlora_paper.yaml \
        --model /models/Llama-2-13b-chat-hf --dry-run

`model` is an embedded name or a local folder (the Hub is never contacted). `--dry-run` reads the config, the data
and the model's tokenizer and config.json, and prints the plan: samples, optimiser steps, effective batch, parameter
counts and an estimated peak memory; where the machine can run the model (not QLoRA without CUDA + bitsandbytes) it
also loads the weights for one forward pass + loss. It writes nothing. A real QLoRA run without a CUDA GPU or without
bitsandbytes fails before reading anything, naming what is missing.

One chat sample per labelled utterance (bioserc.prompts.erc_llm); the loss covers the answer tokens only (the label
word and the end-of-turn token), unlike the paper's loss on every token. Training runs on `transformers.Trainer`,
whose checkpoint-N folders make a run resumable. Outputs in output_dir: adapter/ (the LoRA adapter in safetensors,
its tokenizer and a lora-adapter manifest naming the base model, prompt version and labels; with eval_steps it is the
best dev checkpoint, else the final one), adapter/dev_report.json, dev_metrics.jsonl, train_config.json.
Then: `bioserc evaluate --model OUT/adapter --data DEV [--mode generate]`, `bioserc merge --adapter OUT/adapter -o M`.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from bioserc.devices import resolve_device
from bioserc.labels import get_label_set
from bioserc.models.llm_encoding import ChatEncoder, apply_template_choice, pack
from bioserc.models.llm_scoring import LlmClassifier
from bioserc.prompts.erc_llm import ErcPromptConfig
from bioserc.schema import Conversation
from bioserc.training import config_files
from bioserc.training import llm_setup as setup
from bioserc.training.evaluate import llm_report


logger = logging.getLogger(__name__)

LIST_FIELDS = ("train_data", "dev_data", "train_bios", "dev_bios", "lora_target_modules")


@dataclass
class TrainLlmConfig:
    # data
    train_data: list[str] = field(default_factory=list, metadata={"help": "training conversations (any format)"})
    dev_data: list[str] = field(default_factory=list, metadata={"help": "dev conversations (evaluation, selection)"})
    train_bios: list[str] = field(default_factory=list, metadata={"help": "bios.jsonl(.gz) for the training data"})
    dev_bios: list[str] = field(default_factory=list, metadata={"help": "bios.jsonl(.gz) for the dev data"})
    label_set: str = field(default="meld", metadata={"help": "meld | emorynlp | iemocap"})
    max_train_samples: int = field(default=0, metadata={"help": "train on a seeded random subset (0: all)"})
    class_balance: float = field(
        default=0.0,
        metadata={"help": "label mix of the subset: 0 the corpus's, 1 equal per label, 0.5 between (count**0.5)"},
    )
    max_eval_samples: int = field(
        default=0, metadata={"help": "dev utterances to evaluate, whole conversations (0: all)"}
    )
    # prompt
    window: int = field(default=5, metadata={"help": "± utterances of context (past and future)"})
    bio_mode: str = field(default="prompt", metadata={"help": "prompt (target speaker's bio) | none (ablation)"})
    list_labels: bool = field(default=True, metadata={"help": "list the label set in the prompt (paper: no)"})
    chat_template: str = field(default="auto", metadata={"help": "auto (the tokenizer's) | chatml (plain text)"})
    max_seq_length: int = field(default=1024, metadata={"help": "tokens per sample (long prompts lose context)"})
    packing: bool = field(default=False, metadata={"help": "concatenate whole samples into max_seq_length rows"})
    # model
    model: str = field(default="smollm2", metadata={"help": "embedded model name or local HF folder (no Hub)"})
    attn_implementation: str = field(default="auto", metadata={"help": "auto: eager on CPU, sdpa on CUDA"})
    precision: str = field(default="auto", metadata={"help": "auto | bf16 | fp16 | fp32 (auto: fp32 on CPU)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: NF4 base weights (CUDA + bitsandbytes)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations to save memory"})
    # LoRA (paper: r 32, alpha 128, dropout 0.05, all linear layers but lm_head)
    lora_r: int = field(default=32, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA scaling alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "modules that get adapters (PEFT names)"}
    )
    # optimisation (Trainer names)
    num_train_epochs: float = field(default=3.0, metadata={"help": "passes over the training data"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimiser steps (0: epochs decide)"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "samples per forward pass"})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "forward passes per optimiser step"})
    learning_rate: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers scheduler name"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "share of steps spent warming up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=0.3, metadata={"help": "gradient clipping norm"})
    optim: str = field(default="adamw_torch", metadata={"help": "transformers optimiser name"})
    neftune_noise_alpha: float = field(default=0.0, metadata={"help": "NEFTune noise (paper: 5; 0: off)"})
    group_by_length: bool = field(default=False, metadata={"help": "batch samples of similar length"})
    # evaluation, checkpoints
    eval_mode: str = field(default="score", metadata={"help": "dev evaluation: score | generate | none"})
    eval_steps: int = field(default=0, metadata={"help": "dev W-F1 every N steps, keep the best (0: at the end)"})
    eval_batch_size: int = field(default=8, metadata={"help": "prompts per scoring batch"})
    logging_steps: int = field(default=10, metadata={"help": "log the loss every N steps"})
    save_steps: int = field(default=50, metadata={"help": "checkpoint every N steps"})
    save_total_limit: int = field(default=1, metadata={"help": "checkpoints kept"})
    output_dir: str = field(default="runs/bioserc-llm", metadata={"help": "where checkpoints and the adapter go"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint-N in output_dir"})
    seed: int = field(default=42, metadata={"help": "random seed (data order, LoRA init)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    threads: int = field(default=0, metadata={"help": "torch intra-op CPU threads (0: torch's default)"})

    def __post_init__(self) -> None:
        config_files.normalize_fields(self, LIST_FIELDS)
        if self.eval_mode not in ("score", "generate", "none"):
            raise ValueError(f"eval_mode {self.eval_mode!r}: use score, generate or none")
        if self.eval_steps and (self.eval_mode == "none" or not self.dev_data):
            raise ValueError("eval_steps needs dev_data and an eval_mode (score or generate)")

    def prompt(self) -> ErcPromptConfig:
        return ErcPromptConfig(window=self.window, bio_mode=self.bio_mode, list_labels=self.list_labels)

    def lora(self) -> dict[str, Any]:
        return {
            "r": self.lora_r,
            "alpha": self.lora_alpha,
            "dropout": self.lora_dropout,
            "target_modules": self.lora_target_modules,
            "qlora": self.load_in_4bit,
        }


def load_config(path: str | None = None, **overrides: Any) -> TrainLlmConfig:
    """The config in `path` (YAML or TOML) with keyword overrides; unknown keys are an error."""
    return config_files.load_config(TrainLlmConfig, path, **overrides)


def training_arguments(config: TrainLlmConfig, device: str, precision: str):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=config.output_dir,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=config.optim,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        neftune_noise_alpha=config.neftune_noise_alpha or None,
        group_by_length=config.group_by_length,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="no",
        report_to="none",
        seed=config.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def plan(config: TrainLlmConfig, model_dir: str, rows: Sequence[dict], precision: str) -> dict[str, Any]:
    """What a run will do, from the data and config.json alone: optimiser steps (the Trainer's arithmetic, one
    device), effective batch, parameter counts and a rough peak memory (`llm_setup.estimate_memory_gib`)."""
    from transformers import AutoConfig

    lora = setup.lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    counts = setup.parameter_counts(model_dir, lora)
    batches = math.ceil(len(rows) / config.per_device_train_batch_size)
    per_epoch = math.ceil(batches / config.gradient_accumulation_steps)
    batch_tokens = config.per_device_train_batch_size * max(len(row["input_ids"]) for row in rows)
    return {
        "model_dir": os.path.abspath(model_dir),
        "optimizer_steps_per_epoch": per_epoch,
        "optimizer_steps": config.max_steps or math.ceil(config.num_train_epochs * per_epoch),
        "effective_batch_size": config.per_device_train_batch_size * config.gradient_accumulation_steps,
        "parameters": counts["total"],
        "trainable_parameters": counts["trainable"],
        "estimated_memory_gib": setup.estimate_memory_gib(
            counts,
            AutoConfig.from_pretrained(model_dir),
            precision,
            config.load_in_4bit,
            batch_tokens,
            config.gradient_checkpointing,
        ),
    }


class DevEvaluator:
    """Scores the adapter on dev and keeps the history in output_dir/dev_metrics.jsonl (continued on --resume)."""

    def __init__(
        self, config: TrainLlmConfig, model, encoder: ChatEncoder, convs: list[Conversation], bios: dict
    ) -> None:
        self.config, self.model, self.encoder, self.convs, self.bios = config, model, encoder, convs, bios
        self.path = os.path.join(config.output_dir, "dev_metrics.jsonl")
        self.history: list[dict[str, Any]] = []
        if config.resume and os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as fh:
                self.history = [json.loads(line) for line in fh]

    def best_f1(self) -> float:
        return max((row["dev_weighted_f1"] for row in self.history), default=-1.0)

    def __call__(self, step: int) -> dict[str, Any]:
        classifier = LlmClassifier(self.model, self.encoder, mode=self.config.eval_mode)
        report = llm_report(classifier, self.convs, self.bios, self.config.eval_batch_size)
        row = {"step": step, "dev_weighted_f1": report["weighted_f1"], "dev_accuracy": report["accuracy"]}
        if "invalid_rate" in report:
            row["dev_invalid_rate"] = report["invalid_rate"]
        self.history.append(row)
        with open(self.path, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in self.history)
        logger.info("step %d: dev weighted F1 %.2f", step, report["weighted_f1"])
        return {**report, "step": step}


class DevEvalCallback(TrainerCallback):
    """Every eval_steps (and at the last step): dev W-F1; a better one replaces adapter/."""

    def __init__(self, evaluate: DevEvaluator, save: Callable[[dict[str, Any], int], None]) -> None:
        self.evaluate, self.save = evaluate, save

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.evaluate.config.eval_steps and state.global_step != state.max_steps:
            return
        best = self.evaluate.best_f1()
        report = self.evaluate(state.global_step)
        if report["weighted_f1"] > best:
            self.save(report, state.global_step)


def _train_features(config: TrainLlmConfig, encoder: ChatEncoder) -> tuple[list[dict], int, int]:
    """The rows to train on (samples packed when `packing`), how many samples were too long to keep, and how many
    were kept."""
    convs, bios = setup.load_split(config, "train")
    features, dropped = setup.build_features(
        convs, bios, encoder, config.max_train_samples, config.seed, config.class_balance
    )
    if not features:
        raise ValueError("nothing to train: no labelled utterance in train_data fits max_seq_length")
    if dropped:
        logger.warning("%d sample(s) longer than max_seq_length %d were dropped", dropped, config.max_seq_length)
    return (pack(features, config.max_seq_length) if config.packing else features), dropped, len(features)


def _start_output(config: TrainLlmConfig) -> list[str]:
    """Make output_dir and write train_config.json; the checkpoints already there (an error without --resume)."""
    checkpoints = glob.glob(os.path.join(config.output_dir, "checkpoint-*"))
    if checkpoints and not config.resume:
        raise ValueError(
            f"{config.output_dir} already holds checkpoints: pass --resume to continue, or another output_dir"
        )
    os.makedirs(config.output_dir, exist_ok=True)
    with open(os.path.join(config.output_dir, "train_config.json"), "w", encoding="utf-8") as fh:
        json.dump(asdict(config), fh, indent=2)
    return checkpoints


def train(config: TrainLlmConfig, dry_run: bool = False) -> dict[str, Any]:
    """Train; returns the plan, steps, loss, tokens/s and the adapter's dev report. `dry_run` returns the plan
    and, where this machine can load the model, one forward pass + loss; it writes nothing."""
    from transformers import AutoTokenizer, Trainer, set_seed

    if config.threads > 0:  # torch's default (every core) thrashes when other jobs share the CPU
        torch.set_num_threads(config.threads)
    set_seed(config.seed)
    device = resolve_device(config.device, allow_index=False)  # the Trainer runs on one GPU, its own pick
    cannot_load = setup.qlora_missing(device) if config.load_in_4bit else []
    if cannot_load and not dry_run:
        setup.require_qlora(device)
    model_dir = setup.local_model(config.model)
    precision = setup.pick_precision(config.precision, device)
    if config.load_in_4bit and device != "cuda" and config.precision == "auto":
        precision = "bf16"  # a QLoRA plan made off-GPU is for a CUDA run: auto is bf16 there (Ampere or newer)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    apply_template_choice(tokenizer, config.chat_template)
    encoder = ChatEncoder(tokenizer, get_label_set(config.label_set).labels, config.prompt(), config.max_seq_length)
    rows, dropped, samples = _train_features(config, encoder)
    dev_convs, dev_bios = setup.load_split(config, "dev")
    dev_convs = setup.first_utterances(dev_convs, config.max_eval_samples)
    summary = {
        "samples": samples,
        "dropped": dropped,
        "rows": len(rows),
        "device": device,
        "precision": precision,
        **plan(config, model_dir, rows, precision),
    }
    logger.info("plan: %s", json.dumps(summary))
    if dry_run and cannot_load:
        return {
            "dry_run": True,
            **summary,
            "dev_conversations": len(dev_convs),
            "not_run": f"loading the weights and a forward pass; missing for QLoRA: {', '.join(cannot_load)}",
        }
    args = training_arguments(config, device, precision)
    model = setup.load_base_model(model_dir, device, precision, config.attn_implementation, config.load_in_4bit)
    model = setup.add_lora(
        model,
        config.lora_r,
        config.lora_alpha,
        config.lora_dropout,
        config.lora_target_modules,
        config.load_in_4bit,
        config.gradient_checkpointing,
    )
    collator = setup.PadCollator(encoder.pad_id)
    if dry_run:
        batch = {k: v.to(device) for k, v in collator(rows[: config.per_device_train_batch_size]).items()}
        loss = model(**batch).loss
        return {
            "dry_run": True,
            **summary,
            "dev_conversations": len(dev_convs),
            "loss": loss.item(),
            "answer_tokens": int((batch["labels"] != -100).sum()),
        }

    checkpoints = _start_output(config)
    adapter_dir = os.path.join(config.output_dir, "adapter")
    evaluate = DevEvaluator(config, model, encoder, dev_convs, dev_bios)
    meta = {
        "base_model": setup.base_model_ref(config.model),
        "label_set": config.label_set,
        "lora": config.lora(),
        "chat_template": config.chat_template,
    }

    def save(report: dict[str, Any] | None, step: int) -> None:
        setup.save_adapter(model, encoder, adapter_dir, report=report, step=step, **meta)

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[DevEvalCallback(evaluate, save)] if config.eval_steps else [],
    )
    start = time.monotonic()
    result = trainer.train(resume_from_checkpoint=bool(checkpoints) and config.resume)
    elapsed = time.monotonic() - start
    if not config.eval_steps:
        step = trainer.state.global_step
        save(evaluate(step) if dev_convs and config.eval_mode != "none" else None, step)
    best = max(evaluate.history, key=lambda row: row["dev_weighted_f1"], default={})
    return {
        **summary,
        "output_dir": config.output_dir,
        "adapter_dir": adapter_dir,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "train_seconds": round(elapsed, 1),
        "train_tokens": collator.tokens,
        "train_tokens_per_second": round(collator.tokens / elapsed, 1) if elapsed else None,
        "dev_weighted_f1": best.get("dev_weighted_f1"),
        "best_step": best.get("step"),
        "loss_history": [row["loss"] for row in trainer.state.log_history if "loss" in row],
    }


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, dry_run = config_files.parse_config(TrainLlmConfig, __doc__, argv, prog="bioserc train llm")
    result = train(config, dry_run=dry_run)
    print(json.dumps({k: v for k, v in result.items() if k != "loss_history"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
