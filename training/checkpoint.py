"""Training checkpoints: best/ (a plain model folder + its dev report) and last/ (model + optimiser state to resume).

Weights are always safetensors (`BiosercBert.save_pretrained`). Only the optimiser, scheduler and RNG state, which
are tensors and plain numbers, go through `torch.save`, and they are read back with `weights_only=True`.
Folders are written beside their target and renamed into place, so a killed run leaves the old one or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass

import torch
from torch.optim.swa_utils import AveragedModel

from bioserc.artifacts import write_manifest
from bioserc.fsutil import replace_dir


STATE_TENSORS, STATE_JSON, DEV_REPORT = "trainer_state.pt", "trainer_state.json", "dev_report.json"
EMA_DIR = "ema"  # last/ema: the averaged weights (`ema_decay`), a model folder like best/


@dataclass
class TrainState:
    """Counters saved in last/trainer_state.json; `batch_in_epoch` lets a resumed run skip what it trained on."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_f1: float = -1.0
    best_step: int = 0
    bad_evals: int = 0


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)


def save_best(directory: str, model, report: dict, step: int) -> None:
    tmp = f"{directory}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    _write_json(os.path.join(tmp, DEV_REPORT), {**report, "step": step})
    cfg = model.config
    write_manifest(
        tmp,
        "pytorch-classifier",
        model_family="bioserc-bert",
        label_set=cfg.label_set,
        labels=list(cfg.labels),
        window=cfg.window,
        bio_mode=cfg.bio_mode,
        profile=cfg.profile,
        profile_dim=cfg.profile_dim,
        step=step,
        metrics={"dev_weighted_f1": report.get("weighted_f1")},
    )
    replace_dir(tmp, directory)


def load_dev_report(directory: str) -> dict:
    with open(os.path.join(directory, DEV_REPORT), encoding="utf-8") as fh:
        return json.load(fh)


def save_last(
    directory: str, model, optimizer, scheduler, state: TrainState, ema: AveragedModel | None = None
) -> None:
    tmp = f"{directory}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if ema is not None:
        ema.module.save_pretrained(os.path.join(tmp, EMA_DIR))
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
        os.path.join(tmp, STATE_TENSORS),
    )
    _write_json(os.path.join(tmp, STATE_JSON), asdict(state))
    replace_dir(tmp, directory)


def load_last(directory: str, optimizer, scheduler, ema: AveragedModel | None = None) -> TrainState:
    """Restore the optimiser, scheduler, RNG state and averaged weights in place and return the counters (the model
    loads separately)."""
    if ema is not None:
        ema_dir = os.path.join(directory, EMA_DIR)
        if not os.path.isdir(ema_dir):
            raise ValueError(
                f"{directory} has no {EMA_DIR}/ (trained without ema_decay): resume with the same ema_decay"
            )
        ema.module.load_state_dict(type(ema.module).from_pretrained(ema_dir).state_dict())
        ema.n_averaged.fill_(1)  # already started: later updates average into these weights
    saved = torch.load(os.path.join(directory, STATE_TENSORS), weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["torch"])
    if saved["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    with open(os.path.join(directory, STATE_JSON), encoding="utf-8") as fh:
        return TrainState(**json.load(fh))
