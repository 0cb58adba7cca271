"""Fine-tune the BERT-based BiosERC classifier on labelled conversations and their speaker bios.

    python -m bioserc.training.train_bert --config training/configs/meld_minilm.yaml
    python -m bioserc.training.train_bert --config training/configs/meld_minilm.yaml --epochs 1 --output_dir runs/try
    python -m bioserc.training.train_bert --config training/configs/meld_minilm.yaml --resume
    python -m bioserc.training.train_bert --config training/configs/meld_roberta_large_paper.yaml --dry-run

Bios come from `bioserc bios DATA -o DIR` (DIR/bios.jsonl); `profile` says which kind the model reads: bio text
(text or emotion rows, encoded by the encoder) or the scores/latent vectors of `bioserc bios --profile scores|latent`,
whose size is read from the train bios and saved in the model's config (profile_dim).

Outputs in output_dir: metrics.jsonl (one row per dev evaluation), best/ (the best dev weighted-F1 model,
`BiosercBert.from_pretrained`-loadable, with dev_report.json), last/ (the resumable checkpoint), train_config.json,
training_curve.png, confusion_dev.png and, once training has ended, done.json (the run's summary: what a sweep
checks to skip a finished run). `--resume` with no last/ starts fresh. With `--teachers` (distillation,
`bioserc.training.distill`) also the teachers' cached train probabilities, teacher_probs.jsonl.gz, unless
`--teacher_cache` puts them elsewhere.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from bioserc.devices import resolve_device
from bioserc.models import (
    BiosercBert,
    BiosercBertConfig,
    Collator,
    length_sorted_batches,
    load_bios,
    missing_bios,
)
from bioserc.models.bioserc_bert import HEAD_PROFILES
from bioserc.models.collate import IGNORE, Bio, BioKey
from bioserc.models.predict import predict
from bioserc.readers import read_conversations
from bioserc.schema import Conversation
from bioserc.training import config_files
from bioserc.training.checkpoint import TrainState, load_dev_report, load_last, save_best, save_last
from bioserc.training.distill import (
    STATES_FILE,
    TEACHER_FILE,
    UtteranceKey,
    check_teachers,
    distill_loss,
    hidden_loss,
    pooled_utterances,
    soft_targets,
    teacher_probs,
    teacher_states,
    unlabelled_conversations,
)
from bioserc.training.evaluate import score
from bioserc.training.plots import plot_confusion, plot_training_curve


logger = logging.getLogger(__name__)

LIST_FIELDS = ("train_data", "dev_data", "train_bios", "dev_bios", "teachers", "unlabelled_data")
DONE_MARKER = "done.json"  # written last: its presence means the run ended (budget spent or early stop)


@dataclass
class TrainBertConfig:
    # data
    train_data: list[str] = field(default_factory=list, metadata={"help": "training conversations (any format)"})
    dev_data: list[str] = field(default_factory=list, metadata={"help": "dev conversations: model selection"})
    train_bios: list[str] = field(default_factory=list, metadata={"help": "bios.jsonl(.gz) for the training data"})
    dev_bios: list[str] = field(default_factory=list, metadata={"help": "bios.jsonl(.gz) for the dev data"})
    label_set: str = field(default="meld", metadata={"help": "meld | emorynlp | iemocap"})
    # model
    encoder: str = field(default="minilm", metadata={"help": "embedded model name or local HF folder (no Hub)"})
    window: int = field(default=2, metadata={"help": "± utterances of context around the target"})
    bio_mode: str = field(default="mlp", metadata={"help": "mlp | attn | none: how the bio head fuses profiles"})
    profile: str = field(
        default="text",
        metadata={
            "help": "the speaker profiles read: text (bio text, also emotion "
            "bios) | scores | latent (vectors from `bioserc bios "
            "--profile`); ignored with bio_mode none"
        },
    )
    context: str = field(
        default="transformer",
        metadata={"help": "the conversation-level layer: transformer (the paper's) | gru (a BiGRU, for long calls)"},
    )
    positions: bool = field(
        default=True, metadata={"help": "add sinusoidal utterance positions before the conversation-level layer"}
    )
    max_length: int = field(default=256, metadata={"help": "tokens per utterance window"})
    bio_max_length: int = field(default=128, metadata={"help": "tokens per bio"})
    freeze_layers: int = field(default=0, metadata={"help": "freeze the embeddings and this many bottom layers"})
    encoder_layers: int = field(
        default=0, metadata={"help": "keep only the encoder's bottom N pretrained layers (0: all): faster to serve"}
    )
    dropout: float = field(default=0.2, metadata={"help": "dropout before every head and in the speaker attentions"})
    # optimisation (AdamW betas 0.9/0.98, eps 1e-6 as in the paper)
    epochs: int = field(default=3, metadata={"help": "passes over the train data (unless max_steps ends sooner)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimiser steps (0: epochs decide)"})
    batch_size: int = field(default=4, metadata={"help": "conversations per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    lr_encoder: float = field(default=3e-5, metadata={"help": "learning rate of the encoder"})
    lr_head: float = field(default=1e-3, metadata={"help": "learning rate of everything above the encoder"})
    weight_decay: float = field(default=0.001, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "linear warm-up over this share of the steps"})
    label_smoothing: float = field(default=0.1, metadata={"help": "cross-entropy label smoothing"})
    class_weights: bool = field(default=True, metadata={"help": "weigh class c by ln(N / N_c) of the train labels"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "evaluate and save an exponential moving average of the "
            "weights with this decay per step (e.g. 0.99; 0: off): "
            "it smooths the noisy epoch-to-epoch dev curve, but did "
            "not beat the raw weights on MELD over 3 seeds"
        },
    )
    teachers: list[str] = field(
        default_factory=list,
        metadata={
            "help": "distil from these trained classifiers (best/ folders or ONNX exports; DIR=BIOS for one that "
            "reads profiles): their mean probabilities on the train data become a second target"
        },
    )
    distill_weight: float = field(
        default=0.5,
        metadata={"help": "with teachers: the loss is (1 - w) x the gold labels' + w x the teachers' (0 < w <= 1)"},
    )
    teacher_cache: str = field(
        default="",
        metadata={
            "help": "file caching the teachers' train probabilities (default: output_dir/teacher_probs.jsonl.gz); "
            "runs with the same teachers and train data (a sweep's seeds) can share one"
        },
    )
    unlabelled_data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "with teachers: more conversations (any format bioserc reads; their own labels are ignored) on "
            "which the student learns the teachers' probabilities only; those sharing an utterance of 5+ words "
            "with the dev data are left out"
        },
    )
    distill_hidden_weight: float = field(
        default=0.0,
        metadata={
            "help": "with one teacher of the student's hidden size (e.g. mpnet's bottom layers under the default): "
            "adds this weight x (1 - cosine) between the student's and the teacher's pooled utterance vectors "
            "(DistilBERT's cosine loss; 0: off)"
        },
    )
    teacher_states_cache: str = field(
        default="",
        metadata={
            "help": "with distill_hidden_weight: file caching the teacher's pooled train states (default: "
            "output_dir/teacher_states.npz); a sweep's seeds can share one"
        },
    )
    # evaluation, checkpoints
    eval_every: int = field(default=0, metadata={"help": "evaluate on dev every N optimiser steps (0: per epoch)"})
    patience: int = field(default=3, metadata={"help": "stop after N evaluations without a better dev F1 (0: off)"})
    output_dir: str = field(default="runs/bioserc-bert", metadata={"help": "best/, last/, metrics and plots"})
    resume: bool = field(default=False, metadata={"help": "continue from output_dir/last"})
    seed: int = field(default=42, metadata={"help": "torch/random seed; also the batch shuffles per epoch"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    threads: int = field(default=0, metadata={"help": "torch intra-op CPU threads (0: torch's default)"})

    def __post_init__(self) -> None:
        config_files.normalize_fields(self, LIST_FIELDS)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.profile not in HEAD_PROFILES:
            raise ValueError(f"profile must be one of {HEAD_PROFILES}, got {self.profile!r}")
        if self.teachers and not 0.0 < self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in (0, 1] with teachers, got {self.distill_weight}")
        if self.distill_hidden_weight < 0 or self.distill_hidden_weight and len(self.teachers) != 1:
            raise ValueError(
                f"distill_hidden_weight must be >= 0, and > 0 only with exactly one teacher; got "
                f"{self.distill_hidden_weight} with {len(self.teachers)} teachers"
            )
        if self.unlabelled_data and not self.teachers:
            raise ValueError("unlabelled_data is learnt from the teachers' probabilities: set teachers too")
        if self.unlabelled_data and self.bio_mode != "none":
            raise ValueError("unlabelled_data has no speaker bios: use it with bio_mode none")

    def model_config(self, profile_dim: int = 0) -> BiosercBertConfig:
        """The model's settings; `profile_dim` is the train bios' vector size (scores/latent profiles). A bio_mode
        none model reads no profile, so its config says text, as every model's did before profiles."""
        profile = self.profile if self.bio_mode != "none" else "text"
        return BiosercBertConfig(
            encoder=self.encoder,
            label_set=self.label_set,
            window=self.window,
            bio_mode=self.bio_mode,
            profile=profile,
            profile_dim=profile_dim,
            context=self.context,
            positions=self.positions,
            dropout=self.dropout,
            max_length=self.max_length,
            bio_max_length=self.bio_max_length,
            freeze_layers=self.freeze_layers,
            encoder_layers=self.encoder_layers,
        )


def load_config(path: str | None = None, **overrides: Any) -> TrainBertConfig:
    """The config in `path` (YAML or TOML) with keyword overrides; unknown keys are an error."""
    return config_files.load_config(TrainBertConfig, path, **overrides)


def class_weights(conversations: Sequence[Conversation], labels: Sequence[str]) -> torch.Tensor:
    """w_c = ln(N / N_c) over the train labels (paper-notes 4.5); 0 for a class absent from training."""
    counts = Counter(u.label for c in conversations for u in c.utterances if u.label is not None)
    total = sum(counts.values())
    return torch.tensor([math.log(total / counts[y]) if counts[y] else 0.0 for y in labels])


def _load_split(
    config: TrainBertConfig, name: str, dim: int | None = None
) -> tuple[list[Conversation], dict[BioKey, Bio]]:
    """`{name}_data` and its bios of the configured profile; vectors must have `dim` entries (None: any one size)."""
    data, bios_paths = getattr(config, f"{name}_data"), getattr(config, f"{name}_bios")
    if not data:
        raise ValueError(f"no {name} data: set {name}_data in the config or pass --{name}_data PATH")
    conversations = read_conversations(data)
    if config.bio_mode == "none":
        return conversations, {}
    if not bios_paths:
        raise ValueError(
            f"bio_mode={config.bio_mode} needs {name}_bios (bios.jsonl from `bioserc bios`); or set bio_mode: none"
        )
    bios = load_bios(bios_paths, config.profile, dim)
    if config.profile != "text" and not bios:
        raise ValueError(f"{name}_bios {bios_paths} hold no {config.profile} vector to train with")
    missing = missing_bios(conversations, bios)
    if missing:
        logger.warning(
            "%s: %d speaker(s) have no bio and get %s, e.g. %s",
            name,
            len(missing),
            "an empty one" if config.profile == "text" else f"a zero {config.profile} vector",
            missing[:3],
        )
    return conversations, bios


def make_optimizer(model: BiosercBert, config: TrainBertConfig, total_steps: int):
    from transformers import get_linear_schedule_with_warmup

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # every trainable one, heads included
    groups = [
        {"params": [p for n, p in params if n.startswith("encoder.")], "lr": config.lr_encoder},
        {"params": [p for n, p in params if not n.startswith("encoder.")], "lr": config.lr_head},
    ]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def _write_history(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)


@dataclass
class Run:
    """What one training run works with: built by `setup`, advanced by `train_epoch`."""

    config: TrainBertConfig
    device: torch.device
    model: BiosercBert
    collator: Collator
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_convs: list[Conversation]
    train_bios: dict[BioKey, Bio]
    dev_convs: list[Conversation]
    dev_bios: dict[BioKey, Bio]
    steps_per_epoch: int
    total: int  # optimiser steps of the whole run
    resuming: bool
    state: TrainState = field(default_factory=TrainState)
    history: list[dict] = field(default_factory=list)  # one row per dev evaluation (metrics.jsonl)
    running: list[float] = field(default_factory=list)  # train losses since the last evaluation
    start: float = 0.0
    ema: AveragedModel | None = None  # the weights evaluated and saved when `ema_decay` is set
    teacher: dict[UtteranceKey, list[float]] | None = None  # the teachers' mean train probabilities (`begin`)
    states: dict[UtteranceKey, np.ndarray] | None = None  # the teacher's pooled train states (distill_hidden_weight)

    @property
    def eval_model(self) -> BiosercBert:
        return self.ema.module if self.ema is not None else self.model

    @property
    def last_dir(self) -> str:
        return os.path.join(self.config.output_dir, "last")

    @property
    def best_dir(self) -> str:
        return os.path.join(self.config.output_dir, "best")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.config.output_dir, "metrics.jsonl")

    def loss(self, conversations: Sequence[Conversation], bios: dict[BioKey, Bio]) -> torch.Tensor:
        batch = self.collator(conversations, bios).to(self.device)
        with pooled_utterances(self.model) if self.states is not None else nullcontext([]) as pooled:
            logits = self.model(**batch.inputs)
        flat, labels = logits.flatten(0, 1), batch.labels.flatten()
        if self.teacher is None:
            return self.loss_fn(flat, labels)
        # a batch of unlabelled conversations only (unlabelled_data) has no gold term: its mean would be 0 / 0
        loss = self.loss_fn(flat, labels) if bool((labels != IGNORE).any()) else flat.sum() * 0.0
        targets = soft_targets(batch.conversation_ids, batch.utterance_indices, self.teacher, *logits.shape[1:])
        soft = distill_loss(flat, targets.to(self.device).flatten(0, 1), labels, IGNORE, self.loss_fn.weight)
        loss = (1 - self.config.distill_weight) * loss + self.config.distill_weight * soft
        if self.states is None:
            return loss
        where = (batch.conversation_ids, batch.utterance_indices, batch.inputs["utt_position"], logits.shape[1])
        return loss + self.config.distill_hidden_weight * hidden_loss(pooled[0], *where, self.states)


def setup(config: TrainBertConfig, dry_run: bool = False) -> Run:
    """Seeds, data, model (new, or `last/` when resuming), loss, optimiser and schedule; nothing is written."""
    if config.threads > 0:  # torch's default (every core) thrashes when other jobs share the CPU
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = torch.device(resolve_device(config.device))
    train_convs, train_bios = _load_split(config, "train")
    profile_dim = len(next(iter(train_bios.values()))) if config.profile != "text" and train_bios else 0
    train_convs = [c for c in train_convs if any(u.label is not None for u in c.utterances)]
    if not train_convs or config.epochs < 1 and not config.max_steps:
        raise ValueError("nothing to train: the train data has no labelled conversation, or epochs < 1")
    dev_convs, dev_bios = _load_split(config, "dev", profile_dim or None)
    if not any(u.label is not None for c in dev_convs for u in c.utterances):
        raise ValueError("the dev data has no gold labels to select the best checkpoint with")
    last = os.path.join(config.output_dir, "last")
    resuming = config.resume and os.path.isdir(last)
    if os.path.isdir(last) and not config.resume and not dry_run:
        raise ValueError(
            f"{config.output_dir} already holds a checkpoint: pass --resume to continue it, or another output_dir"
        )
    model = (
        BiosercBert.from_pretrained(last, device=device)
        if resuming
        else BiosercBert.from_encoder(config.model_config(profile_dim)).to(device)
    )
    saved, wanted = model.config.settings(), config.model_config(profile_dim).settings()
    if resuming and (saved["profile"], saved["profile_dim"]) != (wanted["profile"], wanted["profile_dim"]):
        # the bios were read for the config, not for the checkpoint
        raise ValueError(
            f"{last} reads profile {saved['profile']} (profile_dim {saved['profile_dim']}), but the "
            f"config and bios give {wanted['profile']} ({wanted['profile_dim']}): resume with the same "
            "profile and bios"
        )
    if resuming and saved | {"encoder": ""} != wanted | {"encoder": ""}:
        logger.warning("resuming with the checkpoint's model settings %s; the config's differ", saved)
    check_teachers(config.teachers, model.config.labels)
    weights = class_weights(train_convs, model.config.labels).to(device) if config.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE, label_smoothing=config.label_smoothing)
    train_convs += unlabelled_conversations(config.unlabelled_data, dev_convs)
    steps_per_epoch = math.ceil(math.ceil(len(train_convs) / config.batch_size) / config.grad_accum)
    total = config.max_steps or steps_per_epoch * config.epochs
    optimizer, scheduler = make_optimizer(model, config, total)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay)) if config.ema_decay else None
    return Run(
        config,
        device,
        model,
        Collator(model.tokenizer, model.config),
        loss_fn,
        optimizer,
        scheduler,
        train_convs,
        train_bios,
        dev_convs,
        dev_bios,
        steps_per_epoch,
        total,
        resuming,
        ema=ema,
    )


def dry_run_report(run: Run) -> dict[str, Any]:
    """One forward pass + loss on the first batch: the config, data and model fit together."""
    loss = run.loss(run.train_convs[: run.config.batch_size], run.train_bios)
    return {
        "dry_run": True,
        "train_conversations": len(run.train_convs),
        "dev_conversations": len(run.dev_convs),
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in run.model.parameters() if p.requires_grad),
        "steps": run.total,
        "loss": loss.item(),
        "device": str(run.device),
    }


def begin(run: Run) -> None:
    """Write train_config.json; when resuming, restore the optimiser state, counters and metric history."""
    out = run.config.output_dir
    os.makedirs(out, exist_ok=True)
    if os.path.exists(done := os.path.join(out, DONE_MARKER)):  # a resumed run with a larger budget is not done yet
        os.remove(done)
    with open(os.path.join(out, "train_config.json"), "w", encoding="utf-8") as fh:
        json.dump(asdict(run.config), fh, indent=2)
    logger.info("training config: %s", json.dumps(asdict(run.config)))
    if run.resuming:
        run.state = load_last(run.last_dir, run.optimizer, run.scheduler, run.ema)
        with open(run.metrics_path, encoding="utf-8") as fh:  # drop rows logged after the checkpoint was written
            run.history = [row for row in map(json.loads, fh) if row["step"] <= run.state.step]
        logger.info(
            "resuming %s at step %d (epoch %d, batch %d)",
            out,
            run.state.step,
            run.state.epoch,
            run.state.batch_in_epoch,
        )
    _write_history(run.metrics_path, run.history)
    if run.config.teachers:
        cache = run.config.teacher_cache or os.path.join(out, TEACHER_FILE)
        data = run.config.train_data + run.config.unlabelled_data
        run.teacher = teacher_probs(run.config.teachers, data, run.train_convs, run.model.config.labels, cache)
    if run.config.distill_hidden_weight:
        cache = run.config.teacher_states_cache or os.path.join(out, STATES_FILE)
        run.states = teacher_states(run.config.teachers[0], data, run.train_convs, cache)
        width, hidden = len(next(iter(run.states.values()))), run.model.config.encoder_config.hidden_size
        if width != hidden:
            raise ValueError(
                f"teacher {run.config.teachers[0]} pools {width}-dim states but the student's encoder is "
                f"{hidden}-dim: distill_hidden_weight needs a student of the teacher's width"
            )
    run.start = time.monotonic()


def finished(run: Run) -> bool:
    """The step budget is spent, or `patience` evaluations in a row did not improve the dev F1."""
    config, state = run.config, run.state
    return state.step >= run.total or bool(config.patience and state.bad_evals >= config.patience)


def train_epoch(run: Run, bar: tqdm) -> None:
    """Train from the current position to the end of the epoch (or until `finished`), evaluating as configured."""
    config, state = run.config, run.state
    batches = length_sorted_batches(run.train_convs, config.batch_size, shuffle_seed=config.seed + state.epoch)
    for i in range(state.batch_in_epoch, len(batches)):
        group_start = i - i % config.grad_accum
        group_size = min(config.grad_accum, len(batches) - group_start)
        loss = run.loss([run.train_convs[j] for j in batches[i]], run.train_bios)
        (loss / group_size).backward()
        run.running.append(loss.item())
        if i + 1 < group_start + group_size:
            continue
        if config.max_grad_norm:
            nn.utils.clip_grad_norm_(run.model.parameters(), config.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        state.step, state.batch_in_epoch = state.step + 1, i + 1
        bar.update()
        bar.set_postfix(loss=f"{run.running[-1]:.3f}")
        end_of_epoch = i + 1 == len(batches)
        if end_of_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if (
            state.step >= run.total
            or (config.eval_every and state.step % config.eval_every == 0)
            or (not config.eval_every and end_of_epoch)
        ):
            bar.write(evaluate_and_checkpoint(run))
        if finished(run):
            return


def evaluate_and_checkpoint(run: Run) -> str:
    """Score dev, save best/ when it improved and last/ always, log the metrics row; returns the progress line."""
    state = run.state
    report = score(
        run.dev_convs,
        predict(run.eval_model, run.dev_convs, run.dev_bios, run.config.batch_size),
        run.model.config.labels,
    )
    row = {
        "step": state.step,
        "epoch": round(state.step / run.steps_per_epoch, 3),
        "train_loss": sum(run.running) / len(run.running),
        "lr": run.scheduler.get_last_lr()[0],
        "dev_weighted_f1": report["weighted_f1"],
        "dev_accuracy": report["accuracy"],
        "dev_macro_f1": report["macro_f1"],
        "elapsed_s": round(time.monotonic() - run.start, 1),
    }
    run.running = []
    if report["weighted_f1"] > state.best_f1:
        state.best_f1, state.best_step, state.bad_evals = report["weighted_f1"], state.step, 0
        save_best(run.best_dir, run.eval_model, report, state.step)
    else:
        state.bad_evals += 1
    save_last(run.last_dir, run.model, run.optimizer, run.scheduler, state, run.ema)
    run.history.append(row)
    _write_history(run.metrics_path, run.history)
    return (
        f"step {state.step}: train loss {row['train_loss']:.4f}, dev W-F1 {row['dev_weighted_f1']:.2f} "
        f"(best {state.best_f1:.2f} @ {state.best_step})"
    )


def final_report(run: Run) -> dict[str, Any]:
    """Plot the curve and the best model's dev confusion matrix; return the run's summary."""
    out, state = run.config.output_dir, run.state
    plot_training_curve(run.history, os.path.join(out, "training_curve.png"))
    plot_confusion(load_dev_report(run.best_dir), os.path.join(out, "confusion_dev.png"))
    return {
        "output_dir": out,
        "best_dir": run.best_dir,
        "best_step": state.best_step,
        "best_dev_weighted_f1": state.best_f1,
        "steps": state.step,
        "stopped_early": state.step < run.total,
        "history": run.history,
    }


def train(config: TrainBertConfig, dry_run: bool = False) -> dict[str, Any]:
    """Train, evaluating on dev as configured; returns the best step, its dev weighted F1 and the metric history.

    With `dry_run`, builds the data, model, optimiser and one forward pass + loss, and trains nothing.
    """
    run = setup(config, dry_run)
    if dry_run:
        return dry_run_report(run)
    begin(run)
    with tqdm(
        total=run.total, initial=run.state.step, desc="training", unit="step", file=sys.stderr, mininterval=10
    ) as bar:
        run.model.train()
        while not finished(run):
            train_epoch(run, bar)
    result = final_report(run)
    done = os.path.join(config.output_dir, DONE_MARKER)
    with open(f"{done}.tmp", "w", encoding="utf-8") as fh:  # renamed into place: a killed run leaves no marker
        json.dump({k: v for k, v in result.items() if k != "history"}, fh, indent=2)
    os.replace(f"{done}.tmp", done)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, dry_run = config_files.parse_config(TrainBertConfig, __doc__, argv, prog="bioserc train bert")
    result = train(config, dry_run=dry_run)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
