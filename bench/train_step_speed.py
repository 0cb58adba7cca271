"""Seconds per training step of the BiosERC classifier on different encoders, measured in one process and run.

    python bench/train_step_speed.py --encoders minilm mpnet mpnet:8 --out docs/bench/train_step_speed.json

Each encoder (`NAME[:FROZEN_LAYERS]`, an embedded name or a local folder) gets the same train config and the same
batches; the models take turns on chunks of `--chunk` steps so load drift on a shared machine hits all alike. A step
is forward + backward + AdamW update, as `bioserc train bert` does it; the first `--warmup` steps of each are not
timed. The ratio to the first encoder is what to quote (absolute seconds vary between machines of the same kind).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from report_io import emit

from bioserc.models.collate import length_sorted_batches
from bioserc.training.train_bert import load_config, setup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="training/configs/meld_minilm.yaml")
    parser.add_argument("--train-data", help="override the config's train_data")
    parser.add_argument("--encoders", nargs="+", default=["minilm", "mpnet"], help="NAME[:FROZEN_LAYERS] each")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per encoder")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per encoder first")
    parser.add_argument("--chunk", type=int, default=5, help="steps per turn")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    overrides = {
        "bio_mode": "none",
        "train_bios": [],
        "dev_bios": [],
        "threads": args.threads,
        "output_dir": "runs/train_step_speed",
    }
    if args.train_data:
        overrides["train_data"] = args.train_data
    runs = {}
    for spec in args.encoders:
        name, _, frozen = spec.partition(":")
        runs[spec] = setup(
            load_config(args.config, encoder=name, freeze_layers=int(frozen or 0), **overrides), dry_run=True
        )
    first = next(iter(runs.values()))
    batches = length_sorted_batches(first.train_convs, first.config.batch_size, shuffle_seed=first.config.seed)
    batches = batches[: args.warmup + args.steps]
    seconds = dict.fromkeys(runs, 0.0)
    for start in range(0, len(batches), args.chunk):
        for spec, run in runs.items():
            for i in range(start, min(start + args.chunk, len(batches))):
                t0 = time.perf_counter()
                run.loss([run.train_convs[j] for j in batches[i]], run.train_bios).backward()
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
                if i >= args.warmup:
                    seconds[spec] += time.perf_counter() - t0
    base = seconds[args.encoders[0]]
    emit(
        {
            "config": args.config,
            "conversations_per_step": first.config.batch_size,
            "timed_steps": args.steps,
            "threads": args.threads,
            "torch": torch.__version__,
            "machine": platform.machine(),
            "encoders": {
                spec: {
                    "parameters": sum(p.numel() for p in run.model.parameters()),
                    "trainable": sum(p.numel() for p in run.model.parameters() if p.requires_grad),
                    "seconds_per_step": round(seconds[spec] / args.steps, 3),
                    "ratio_to_first": round(seconds[spec] / base, 2),
                }
                for spec, run in runs.items()
            },
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
