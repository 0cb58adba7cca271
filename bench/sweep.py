"""A grid of BiosERC-BERT trainings (dataset × variant × seed), one cell after another, resumable; one results table.

    python bench/sweep.py bench/sweeps/meld_profiles.yaml --dry-run                  # cells and their status
    python bench/sweep.py bench/sweeps/meld_profiles.yaml --threads 2                # train what is not done
    python bench/sweep.py bench/sweeps/meld_profiles.yaml --set meld.train_data=DIR/meld.train.json
    python bench/sweep.py bench/sweeps/meld_profiles.yaml --only 'meld/*'            # train some cells only
    python bench/sweep.py bench/sweeps/meld_profiles.yaml --report-only              # rebuild the table

A grid file (YAML):

    base_config: {meld: training/configs/meld_minilm.yaml, emorynlp: training/configs/emorynlp_minilm.yaml}
    datasets: [meld, emorynlp]
    seeds: [1, 2, 3]
    variants: {nobio: {bio_mode: none}, text: {bio_mode: mlp}}   # config overrides per variant
    # a string value may name its dataset: scores: {profile: scores, train_bios: data/profiles/{dataset}.train.jsonl}
    reference: nobio                                             # the variant the others are compared with
    overrides: {epochs: 4}                                       # optional: every cell
    root: runs/sweeps/meld_profiles
    record: docs/bench/meld_profiles_cells.jsonl                 # optional: the finished cells, kept in the repo

Every cell runs `python -m bioserc.training.train_bert --config BASE --FIELD VALUE ... --seed S
--output_dir ROOT/DATASET/VARIANT/seed-S --resume [--threads N]`, its output in that folder's train.log. Settings
apply in the order base config < `overrides` < `--set KEY=VALUE` (every dataset) < `--set DATASET.KEY=VALUE` <
variant, so every variant of a dataset shares the data, schedule and seeds and differs only where it says so. A cell
is done when train_bert wrote done.json; a stopped cell continues from its per-epoch last/ checkpoint; a cell whose
train_config.json differs from what the grid asks for now is stale: neither continued nor averaged. Cells run seed
by seed (every variant of seed 1, then seed 2, ...) so a sweep stopped early still holds paired comparisons.

ROOT/sweep.log logs the progress, ROOT/cells.jsonl one row per attempt start and end (with its wall seconds), and
ROOT/results.json the table: per (dataset, variant) weighted and macro F1 of best/dev_report.json as mean ± sample
std over the finished seeds, the per-seed values, the mean train wall, and the paired per-seed differences to the
reference variant. Unfinished cells are listed as missing, never averaged.

ROOT holds checkpoints and is not committed, so a fresh checkout has none; `record` is the committed JSONL of every
finished cell (its scores, wall and full train config), rewritten with each report. A cell with no run folder whose
recorded config is the one the grid asks for now counts as done from the record: it is averaged, not retrained
(delete its row to train it again); a recorded cell of another config is retrained and its row replaced.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import yaml

from bioserc import embedded
from bioserc.training import config_files
from bioserc.training.checkpoint import DEV_REPORT, STATE_JSON
from bioserc.training.train_bert import DONE_MARKER, TrainBertConfig


logger = logging.getLogger("bench.sweep")

TRAINER = "bioserc.training.train_bert"
MANAGED = ("seed", "output_dir", "resume", "threads")  # the sweep sets these for every cell
UNCOMPARED = ("output_dir", "resume", "threads")  # may differ between the runs of one cell
GRID_KEYS = {"base_config", "datasets", "seeds", "variants", "reference", "overrides", "root", "record"}

Runner = Callable[[list[str], str], int]  # (train_bert arguments, log file) -> exit status


@dataclass
class Cell:
    dataset: str
    variant: str
    seed: int
    base_config: str
    settings: dict[str, Any]  # on top of the base config: overrides, --set, the variant
    output_dir: str
    config: dict[str, Any]  # the full train_bert config the cell must have been trained with
    recorded: dict[str, Any] | None = None  # its row in the grid's record, when trained with this config

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.variant}/seed-{self.seed}"

    def argv(self, threads: int = 0) -> list[str]:
        """train_bert's arguments: the base config, one flag per setting, and the sweep-managed ones."""
        args = ["--config", self.base_config]
        for name, value in self.settings.items():
            args += [f"--{name}", *map(_flag_value, value if isinstance(value, list) else [value])]
        args += ["--seed", str(self.seed), "--output_dir", self.output_dir, "--resume"]
        return args + (["--threads", str(threads)] if threads > 0 else [])


@dataclass
class Grid:
    path: str
    root: str
    datasets: list[str]
    seeds: list[int]
    variants: dict[str, dict[str, Any]]
    reference: str | None
    record: str | None = None
    cells: list[Cell] = field(default_factory=list)


def _flag_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)  # HfArgumentParser reads true/false


def _names(path: str, key: str, value: Any) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or len(set(map(str, value))) != len(value)
        or not all(isinstance(v, str) and v and "/" not in v and "." not in v for v in value)
    ):
        raise ValueError(f"{path}: `{key}` must be a non-empty list of distinct names (no '/' or '.'), got {value!r}")
    return value


def _mapping(where: str, value: Any) -> dict[str, Any]:
    """Config overrides: known train_bert fields, none the sweep manages, each value passable as a flag."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping of config fields to values, got {value!r}")
    unknown = sorted(set(value) - {f.name for f in fields(TrainBertConfig)})
    if unknown:
        raise ValueError(f"{where}: unknown training config field(s) {unknown}; see train_bert --help")
    managed = sorted(set(value) & set(MANAGED))
    if managed:
        raise ValueError(f"{where} sets {managed}: the sweep sets seed, output_dir, resume and threads itself")
    for name, item in value.items():
        items = item if isinstance(item, list) else [item]
        if not items or not all(isinstance(v, str | int | float) for v in items):
            raise ValueError(f"{where}: field {name} must be a value or a non-empty list of values, got {item!r}")
    return value


def _for_dataset(settings: dict[str, Any], dataset: str) -> dict[str, Any]:
    """`{dataset}` in a string value becomes the dataset's name, so one variant can point at per-dataset files."""

    def fill(value: Any) -> Any:
        return value.replace("{dataset}", dataset) if isinstance(value, str) else value

    return {
        name: [fill(v) for v in value] if isinstance(value, list) else fill(value) for name, value in settings.items()
    }


def parse_sets(sets: Sequence[str], datasets: Sequence[str]) -> dict[str | None, dict[str, Any]]:
    """`KEY=VALUE` (every dataset) and `DATASET.KEY=VALUE`, values read as YAML: {None or dataset: {key: value}}."""
    parsed: dict[str | None, dict[str, Any]] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        scope, dot, name = key.rpartition(".")
        if not sep or not name or (dot and scope not in datasets):
            raise ValueError(f"--set {item!r}: expected KEY=VALUE or DATASET.KEY=VALUE with DATASET in {datasets}")
        parsed.setdefault(scope or None, {})[name] = yaml.safe_load(value)
    for values in parsed.values():
        _mapping("--set", values)
    return parsed


def load_grid(path: str, root: str | None = None, sets: Sequence[str] = ()) -> Grid:
    """Read and check the grid; every cell's config is built once here, so a bad field fails before any training."""
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a grid is a YAML mapping with keys {sorted(GRID_KEYS)}")
    unknown = sorted(set(raw) - GRID_KEYS)
    missing = sorted({"base_config", "datasets", "seeds", "variants"} - set(raw))
    if unknown or missing:
        raise ValueError(f"{path}: unknown key(s) {unknown}, missing key(s) {missing}")
    datasets = _names(path, "datasets", raw["datasets"])
    seeds = raw["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or len(set(seeds)) != len(seeds)
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ValueError(f"{path}: `seeds` must be a non-empty list of distinct integers, got {seeds!r}")
    variants = raw["variants"]
    if not isinstance(variants, dict):
        raise ValueError(f"{path}: `variants` must map a variant name to its config overrides, got {variants!r}")
    _names(path, "variants", list(variants))
    variants = {name: _mapping(f"{path}: variant {name}", value) for name, value in variants.items()}
    reference = raw.get("reference")
    if reference not in variants and (reference is not None or len(variants) > 1):
        raise ValueError(f"{path}: `reference` must name one of the variants {list(variants)}, got {reference!r}")
    bases = raw["base_config"]
    if not isinstance(bases, dict) or set(datasets) - set(bases):
        raise ValueError(f"{path}: `base_config` must map every dataset {datasets} to a training config file")
    root = root or raw.get("root")
    if not root:
        raise ValueError(f"{path}: no `root` for the cells' outputs (set it in the grid or pass --root)")
    overrides = _mapping(f"{path}: overrides", raw.get("overrides"))
    scoped = parse_sets(sets, datasets)
    grid = Grid(path, root, datasets, seeds, variants, reference, raw.get("record"))
    recorded = read_record(grid.record)
    for dataset in datasets:
        if not os.path.isfile(bases[dataset]):
            raise ValueError(f"{path}: base_config of {dataset}: no file {bases[dataset]}")
        settings = {
            name: _for_dataset({**overrides, **scoped.get(None, {}), **scoped.get(dataset, {}), **variant}, dataset)
            for name, variant in variants.items()
        }
        configs = {}
        for name, values in settings.items():
            try:
                configs[name] = asdict(config_files.load_config(TrainBertConfig, bases[dataset], **values))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: dataset {dataset}, variant {name}: {err}") from err
            for key in UNCOMPARED:
                del configs[name][key]
        for seed in seeds:
            for name in variants:
                cell = Cell(
                    dataset,
                    name,
                    seed,
                    bases[dataset],
                    settings[name],
                    os.path.join(root, dataset, name, f"seed-{seed}"),
                    {**configs[name], "seed": seed},
                )
                row = recorded.get(cell.key)
                cell.recorded = row if row and not _differs(row["config"], cell.config) else None
                grid.cells.append(cell)
    return grid


def _record_key(row: dict[str, Any]) -> str:
    return f"{row['dataset']}/{row['variant']}/seed-{row['seed']}"


def read_record(path: str | None) -> dict[str, dict[str, Any]]:
    """The record's rows by cell key (none when there is no record yet)."""
    if not path or not os.path.isfile(path):
        return {}
    rows = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    if not isinstance(row["config"], dict):
                        raise TypeError("config is not a mapping")
                    rows[_record_key(row)] = row
                except (ValueError, KeyError, TypeError) as err:
                    raise ValueError(f"{path} line {number}: not a sweep record row ({err!r})") from err
    return rows


def write_record(grid: Grid, cells: Sequence[dict[str, Any]]) -> None:
    """Keep every recorded row (cells of other grids' variants too) and replace those of the finished `cells`."""
    if not grid.record:
        return
    rows = {
        **read_record(grid.record),
        **{_record_key(c): {k: v for k, v in c.items() if k != "recorded"} for c in cells},
    }
    os.makedirs(os.path.dirname(grid.record) or ".", exist_ok=True)
    with open(grid.record, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(rows[key], sort_keys=True) + "\n" for key in sorted(rows))


def _differs(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Fields of `config` with another value in `saved` (fields added since, absent from `saved`, do not count; an
    encoder given by its embedded name or by the folder that name resolves to is the same encoder)."""
    return sorted(
        k
        for k, v in config.items()
        if k in saved and saved[k] != v and not (k == "encoder" and _folder(saved[k]) == _folder(v))
    )


def _folder(encoder: str) -> str:
    return os.path.realpath(embedded.folder(encoder) if encoder in embedded.MODELS else os.path.expanduser(encoder))


def _changed(cell: Cell) -> list[str]:
    """Fields whose value in the cell's train_config.json is not what the grid asks for now."""
    path = os.path.join(cell.output_dir, "train_config.json")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return _differs(json.load(fh), cell.config)


def cell_status(cell: Cell) -> dict[str, Any]:
    """stale (trained with another config: never mixed in, never continued), done (done.json written), partial
    (last/ holds a checkpoint: completed epochs and steps), recorded (no run here, but the record holds it) or
    todo."""
    changed = _changed(cell)
    if changed:
        return {"state": "stale", "fields": changed}
    if os.path.isfile(os.path.join(cell.output_dir, DONE_MARKER)):
        return {"state": "done"}
    state = os.path.join(cell.output_dir, "last", STATE_JSON)
    if os.path.isfile(state):
        with open(state, encoding="utf-8") as fh:
            saved = json.load(fh)
        return {"state": "partial", "epoch": saved["epoch"], "step": saved["step"]}
    return {"state": "recorded" if cell.recorded else "todo"}


def describe(status: dict[str, Any]) -> str:
    if status["state"] == "partial":
        return f"partial epoch {status['epoch']}, step {status['step']}"
    if status["state"] == "stale":
        return f"stale: trained with another {', '.join(status['fields'])}"
    if status["state"] == "recorded":
        return "done (recorded; no run folder)"
    return status["state"]


def subprocess_runner(argv: list[str], log_path: str) -> int:
    """train_bert in its own process (a crash or a leak ends with the cell), its output appended to `log_path`."""
    with open(log_path, "a", encoding="utf-8") as log:
        return subprocess.run(
            [sys.executable, "-m", TRAINER, *argv], stdout=log, stderr=subprocess.STDOUT, check=False
        ).returncode


def _append_jsonl(path: str, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def selected(cell: Cell, only: Sequence[str]) -> bool:
    """The cell's DATASET/VARIANT/seed-S key matches one of the `only` globs (every cell when there are none)."""
    return not only or any(fnmatch.fnmatchcase(cell.key, pattern) for pattern in only)


def run_sweep(grid: Grid, threads: int = 0, runner: Runner = subprocess_runner, only: Sequence[str] = ()) -> list[str]:
    """Train every cell that is not done (resuming partial ones) and whose key matches one of the `only` patterns
    (all when none); returns the keys of the cells that failed."""
    os.makedirs(grid.root, exist_ok=True)
    handler = logging.FileHandler(os.path.join(grid.root, "sweep.log"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    cells_log, failed = os.path.join(grid.root, "cells.jsonl"), []
    try:
        logger.info("sweep %s: %d cells in %s", grid.path, len(grid.cells), grid.root)
        for i, cell in enumerate(grid.cells, 1):
            if not selected(cell, only):
                continue
            status = cell_status(cell)
            before = describe(status)
            if status["state"] in ("done", "recorded"):
                logger.info("[%d/%d] %s: done, skipped", i, len(grid.cells), cell.key)
                continue
            if status["state"] == "stale":
                logger.error(
                    "[%d/%d] %s: %s; delete %s or sweep into another root",
                    i,
                    len(grid.cells),
                    cell.key,
                    before,
                    cell.output_dir,
                )
                failed.append(cell.key)
                continue
            ids = {"dataset": cell.dataset, "variant": cell.variant, "seed": cell.seed}
            argv = cell.argv(threads)
            logger.info("[%d/%d] %s: %s, training", i, len(grid.cells), cell.key, before)
            os.makedirs(cell.output_dir, exist_ok=True)
            _append_jsonl(cells_log, {"event": "start", **ids, "status": before, "time": _now(), "argv": argv})
            start, rc = time.monotonic(), None
            try:
                rc = runner(argv, os.path.join(cell.output_dir, "train.log"))
            finally:  # a stop (Ctrl-C, an exception) is logged too: the next run resumes this cell
                wall, after = round(time.monotonic() - start, 1), describe(cell_status(cell))
                _append_jsonl(
                    cells_log, {"event": "end", **ids, "status": after, "rc": rc, "wall_s": wall, "time": _now()}
                )
                logger.info("[%d/%d] %s: %s after %.1f s (exit %s)", i, len(grid.cells), cell.key, after, wall, rc)
                write_record(grid, collect(grid)["cells"])  # a sweep killed later keeps this cell's result
            if rc != 0 or after != "done":
                logger.error("%s failed (exit %s, %s): see %s/train.log", cell.key, rc, after, cell.output_dir)
                failed.append(cell.key)
        logger.info("sweep finished: %d failed %s", len(failed), failed)
    finally:
        logger.removeHandler(handler)
        handler.close()
    return failed


def _summary(per_seed: dict[int, float]) -> dict[str, Any]:
    values = list(per_seed.values())
    return {
        "n": len(values),
        "mean": statistics.mean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,  # sample std (n - 1)
        "per_seed": {str(seed): v for seed, v in per_seed.items()},
    }


def _walls(root: str) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Wall seconds summed over each cell's attempts; `open` > 0 when an attempt was killed before logging its end."""
    walls: dict[tuple[str, str, int], dict[str, Any]] = {}
    path = os.path.join(root, "cells.jsonl")
    if not os.path.isfile(path):
        return walls
    with open(path, encoding="utf-8") as fh:
        for row in map(json.loads, fh):
            wall = walls.setdefault((row["dataset"], row["variant"], row["seed"]), {"wall_s": 0.0, "open": 0})
            wall["open"] += 1 if row["event"] == "start" else -1
            wall["wall_s"] += row.get("wall_s", 0.0)
    return walls


def collect(grid: Grid) -> dict[str, Any]:
    """results.json's content from the finished cells' best/dev_report.json and cells.jsonl, or their record."""
    walls = _walls(grid.root)
    cells, missing = [], []
    for cell in grid.cells:
        report_path = os.path.join(cell.output_dir, "best", DEV_REPORT)
        status = cell_status(cell)
        ids = {"dataset": cell.dataset, "variant": cell.variant, "seed": cell.seed}
        if status["state"] == "recorded":
            cells.append({**cell.recorded, "recorded": True})
            continue
        if status["state"] != "done" or not os.path.isfile(report_path):
            missing.append({**ids, "status": describe(status) if status["state"] != "done" else f"no {report_path}"})
            continue
        with open(report_path, encoding="utf-8") as fh:
            report = json.load(fh)
        wall = walls.get((cell.dataset, cell.variant, cell.seed))
        cells.append(
            {
                **ids,
                "weighted_f1": report["weighted_f1"],
                "macro_f1": report["macro_f1"],
                "accuracy": report["accuracy"],
                "best_step": report.get("step"),
                "per_class_f1": {label: row["f1"] for label, row in report["per_class"].items()},
                "train_wall_s": round(wall["wall_s"], 1) if wall else None,
                "wall_complete": bool(wall) and wall["open"] == 0,
                "config": cell.config,
            }
        )
    table = []
    for dataset in grid.datasets:
        done = {(c["variant"], c["seed"]): c for c in cells if c["dataset"] == dataset}
        for variant, settings in grid.variants.items():
            mine = {seed: done[variant, seed] for seed in grid.seeds if (variant, seed) in done}
            known_walls = [c["train_wall_s"] for c in mine.values() if c["train_wall_s"] is not None]
            row = {
                "dataset": dataset,
                "variant": variant,
                "settings": settings,
                "seeds": list(mine),
                "missing_seeds": [s for s in grid.seeds if s not in mine],
                "weighted_f1": _summary({s: c["weighted_f1"] for s, c in mine.items()}),
                "macro_f1": _summary({s: c["macro_f1"] for s, c in mine.items()}),
                "per_class_f1": {
                    label: statistics.mean(c["per_class_f1"][label] for c in mine.values())
                    for label in next(iter(mine.values()))["per_class_f1"]
                }
                if mine
                else {},
                "train_wall_s": statistics.mean(known_walls) if known_walls else None,
                "train_wall_complete": len(known_walls) == len(mine)
                and all(c["wall_complete"] for c in mine.values()),
                "vs_reference": None,
            }
            if grid.reference and variant != grid.reference:
                paired = [s for s in mine if (grid.reference, s) in done]
                ref = {s: done[grid.reference, s] for s in paired}
                row["vs_reference"] = {
                    "reference": grid.reference,
                    "seeds": paired,
                    **{
                        metric: _summary({s: mine[s][metric] - ref[s][metric] for s in paired})
                        for metric in ("weighted_f1", "macro_f1")
                    },
                }
            table.append(row)
    return {
        "grid": grid.path,
        "root": grid.root,
        "record": grid.record,
        "datasets": grid.datasets,
        "seeds": grid.seeds,
        "reference": grid.reference,
        "table": table,
        "cells": cells,
        "missing": missing,
    }


def _fmt(summary: dict[str, Any], signed: bool = False) -> str:
    if not summary["n"]:
        return "—"
    mean = format(summary["mean"], "+.2f" if signed else ".2f")
    return f"{mean} ± {summary['std']:.2f}" if summary["std"] is not None else f"{mean} (n=1)"


def _per_seed(summary: dict[str, Any], seeds: Sequence[int], signed: bool = False) -> str:
    values, spec = summary["per_seed"], "+.2f" if signed else ".2f"
    return " / ".join(format(values[str(s)], spec) if str(s) in values else "—" for s in seeds)


def markdown(results: dict[str, Any]) -> str:
    """The table a person reads: mean ± sample std over the finished seeds, paired differences to the reference."""
    ref, seeds = results["reference"] or "(no reference)", results["seeds"]
    lines = [
        f"| dataset | variant | seeds | W-F1 | macro-F1 | Δ W-F1 vs {ref} | Δ macro-F1 | W-F1 per seed "
        f"({', '.join(map(str, seeds))}) | Δ W-F1 per seed | train wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["table"]:
        diff = row["vs_reference"]
        wall = (
            "—"
            if row["train_wall_s"] is None
            else f"{'' if row['train_wall_complete'] else '≥'}{row['train_wall_s']:.0f}"
        )
        lines.append(
            " | ".join(
                [
                    f"| {row['dataset']}",
                    row["variant"],
                    f"{len(row['seeds'])}/{len(seeds)}",
                    _fmt(row["weighted_f1"]),
                    _fmt(row["macro_f1"]),
                    _fmt(diff["weighted_f1"], True) if diff else "—",
                    _fmt(diff["macro_f1"], True) if diff else "—",
                    _per_seed(row["weighted_f1"], seeds),
                    _per_seed(diff["weighted_f1"], seeds, True) if diff else "—",
                    f"{wall} |",
                ]
            )
        )
    lines += [
        "",
        "Mean ± sample std (n − 1) over the finished seeds; Δ: paired per seed against "
        f"{ref}; train wall: mean per seed over the sweep's attempts (≥: an attempt was killed unlogged).",
    ]
    recorded = [_record_key(c) for c in results["cells"] if c.get("recorded")]
    if recorded:
        lines.append(f"From the record {results['record']} (no run folder here): {', '.join(recorded)}")
    if results["missing"]:
        lines.append(
            "Missing (not averaged): "
            + ", ".join(f"{m['dataset']}/{m['variant']}/seed-{m['seed']} ({m['status']})" for m in results["missing"])
        )
    return "\n".join(lines)


def write_results(grid: Grid) -> dict[str, Any]:
    results = collect(grid)
    write_record(grid, results["cells"])
    os.makedirs(grid.root, exist_ok=True)
    with open(os.path.join(grid.root, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    print(markdown(results))
    return results


def main(argv: Sequence[str] | None = None, runner: Runner = subprocess_runner) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", help="the grid YAML (e.g. bench/sweeps/meld_profiles.yaml)")
    parser.add_argument("--root", help="the cells' parent folder (default: the grid's `root`)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="[DATASET.]KEY=VALUE",
        help="a config override for every cell (or one dataset's), e.g. train_data=PATH; repeatable",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads per cell (0: train_bert's default)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="train only the cells whose DATASET/VARIANT/seed-S key matches this glob, e.g. "
        "'meld/*' or '*/scores/*'; repeatable (--dry-run lists only these; the table still covers every cell)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list the cells, their status and command; train nothing")
    mode.add_argument("--report-only", action="store_true", help="rebuild results.json and the table; train nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        grid = load_grid(args.grid, args.root, args.sets)
    except (OSError, ValueError) as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for cell in grid.cells:
            if not selected(cell, args.only):
                continue
            print(
                f"{cell.key:<32} {describe(cell_status(cell)):<28} "
                f"{shlex.join(['python', '-m', TRAINER, *cell.argv(args.threads)])}"
            )
        return 0
    failed = [] if args.report_only else run_sweep(grid, args.threads, runner, args.only)
    write_results(grid)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
