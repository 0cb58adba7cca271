"""bench/sweep.py: a (dataset × variant × seed) grid of train_bert runs that resumes, skips finished cells and builds
the mean ± std table; train_bert's done marker, --threads and --resume without a checkpoint.

    .venv/bin/python -m pytest -q tests/test_sweep.py

Cells train the tiny random BERT of test_bert_classifier on its generated corpus, in-process through train_bert's
own command line (one cell also as a real subprocess).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_bert_classifier import MELD, bio_rows, make_corpus, make_encoder, write_jsonl

from bioserc.training import train_bert


pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).parents[1]
BASE = str(REPO / "training" / "configs" / "meld_minilm.yaml")  # points at ../shared data: --set replaces it
EMORY = str(REPO / "training" / "configs" / "emorynlp_minilm.yaml")
_spec = importlib.util.spec_from_file_location("sweep", REPO / "bench" / "sweep.py")
sweep = sys.modules["sweep"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(sweep)


class Killed(Exception):
    """Stands for the process being stopped mid-cell."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny")
    convs = make_corpus()
    rows = bio_rows(convs)
    return {
        "train_data": write_jsonl(root / "train.jsonl", (c.to_dict() for c in convs[:14])),
        "dev_data": write_jsonl(root / "dev.jsonl", (c.to_dict() for c in convs[14:])),
        "train_bios": write_jsonl(root / "train_bios.jsonl", rows),
        "dev_bios": write_jsonl(root / "dev_bios.jsonl", rows),
        "encoder": make_encoder(root / "encoder", layers=1),
    }


def write_grid(directory: Path, tiny: dict[str, str], seeds=(1, 2), variants=None, epochs: int = 2, **extra) -> str:
    """A grid on the shipped MELD config with the tiny encoder; the data comes with --set (see `data_sets`)."""
    overrides = {
        "encoder": tiny["encoder"],
        "train_bios": tiny["train_bios"],
        "dev_bios": tiny["dev_bios"],
        "max_length": 64,
        "bio_max_length": 32,
        "batch_size": 2,
        "epochs": epochs,
        "lr_encoder": 1e-3,
        "lr_head": 3e-3,
        "warmup_ratio": 0.0,
        "device": "cpu",
    }
    grid = {
        "base_config": {"meld": BASE},
        "datasets": ["meld"],
        "seeds": list(seeds),
        "variants": variants or {"nobio": {"bio_mode": "none"}, "text": {"bio_mode": "mlp"}},
        "reference": "nobio",
        "overrides": overrides,
        "root": str(directory / "sweep"),
        **extra,
    }
    path = directory / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return str(path)


def data_sets(tiny: dict[str, str]) -> list[str]:
    return ["--set", f"train_data={tiny['train_data']}", "--set", f"meld.dev_data={tiny['dev_data']}"]


def in_process(calls: list[str]):
    """train_bert's own command line in this process; records each cell's output_dir."""

    def runner(argv: list[str], log_path: str) -> int:
        calls.append(argv[argv.index("--output_dir") + 1])
        return train_bert.main(argv)

    return runner


def statuses(capsys, argv: list[str]) -> dict[str, str]:
    capsys.readouterr()
    assert sweep.main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all("-m bioserc.training.train_bert --config" in line and "--resume" in line for line in lines)
    return dict(line.split(" python -m ")[0].strip().split(None, 1) for line in lines)


def test_sweep_trains_all_cells_resumes_a_stopped_one_and_skips_done_ones(tiny, tmp_path, capsys, monkeypatch):
    argv = [write_grid(tmp_path, tiny), *data_sets(tiny)]
    root = tmp_path / "sweep"
    keys = ["meld/nobio/seed-1", "meld/text/seed-1", "meld/nobio/seed-2", "meld/text/seed-2"]  # seed by seed
    assert statuses(capsys, argv) == dict.fromkeys(keys, "todo") and not root.exists()
    assert statuses(capsys, [*argv, "--only", "*/text/*"]) == dict.fromkeys(keys[1::2], "todo")

    original_eval = train_bert.evaluate_and_checkpoint

    def killed_after_epoch_1(run):
        line = original_eval(run)
        if run.config.output_dir.endswith("text/seed-1") and run.state.epoch == 1:
            raise Killed
        return line

    monkeypatch.setattr(train_bert, "evaluate_and_checkpoint", killed_after_epoch_1)
    calls: list[str] = []
    with pytest.raises(Killed):
        sweep.main(argv, runner=in_process(calls))
    assert [Path(c).relative_to(root).as_posix() for c in calls] == keys[:2]
    assert statuses(capsys, argv) == {
        keys[0]: "done",
        keys[1]: "partial epoch 1, step 7",
        keys[2]: "todo",
        keys[3]: "todo",
    }

    monkeypatch.setattr(train_bert, "evaluate_and_checkpoint", original_eval)
    original_epoch, entered = train_bert.train_epoch, {}

    def recording_epoch(run, bar):
        entered.setdefault(Path(run.config.output_dir).relative_to(root).as_posix(), run.state.step)
        original_epoch(run, bar)

    monkeypatch.setattr(train_bert, "train_epoch", recording_epoch)
    calls.clear()
    assert sweep.main(argv, runner=in_process(calls)) == 0
    assert entered == {keys[1]: 7, keys[2]: 0, keys[3]: 0}  # the stopped cell went on from its epoch-1 checkpoint
    resumed = [json.loads(line) for line in (root / keys[1] / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in resumed] == [7, 14]
    assert statuses(capsys, argv) == dict.fromkeys(keys, "done")

    results = json.loads((root / "results.json").read_text())
    assert results["missing"] == []
    reports = {key: json.loads((root / key / "best" / "dev_report.json").read_text()) for key in keys}
    rows = {row["variant"]: row for row in results["table"]}
    for variant in ("nobio", "text"):
        for metric in ("weighted_f1", "macro_f1"):
            values = [reports[f"meld/{variant}/seed-{s}"][metric] for s in (1, 2)]
            assert rows[variant][metric]["mean"] == pytest.approx(statistics.mean(values))
            assert rows[variant][metric]["std"] == pytest.approx(statistics.stdev(values))
            assert rows[variant][metric]["per_seed"] == {"1": values[0], "2": values[1]}
        assert rows[variant]["train_wall_s"] > 0 and rows[variant]["train_wall_complete"]
    diffs = [
        reports[f"meld/text/seed-{s}"]["weighted_f1"] - reports[f"meld/nobio/seed-{s}"]["weighted_f1"] for s in (1, 2)
    ]
    assert rows["text"]["vs_reference"]["weighted_f1"]["mean"] == pytest.approx(statistics.mean(diffs))
    assert rows["text"]["vs_reference"]["weighted_f1"]["per_seed"] == pytest.approx({"1": diffs[0], "2": diffs[1]})
    assert rows["nobio"]["vs_reference"] is None
    attempts = [json.loads(line) for line in (root / "cells.jsonl").read_text().splitlines()]
    assert [(a["event"], a["variant"], a["seed"], a["rc"], a["status"]) for a in attempts if a["event"] == "end"] == [
        ("end", "nobio", 1, 0, "done"),
        ("end", "text", 1, None, "partial epoch 1, step 7"),
        ("end", "text", 1, 0, "done"),
        ("end", "nobio", 2, 0, "done"),
        ("end", "text", 2, 0, "done"),
    ]

    capsys.readouterr()
    assert sweep.main(argv, runner=lambda argv, log: pytest.fail(f"trained a done cell: {argv}")) == 0
    assert (root / "cells.jsonl").read_text().count("\n") == len(attempts)
    assert (root / "sweep.log").read_text().count("done, skipped") == 1 + 4  # the resuming run skipped seed 1 nobio
    table = capsys.readouterr().out
    assert sweep.main([*argv, "--report-only"]) == 0
    assert json.loads((root / "results.json").read_text()) == results
    assert capsys.readouterr().out == table and "| meld | text | 2/2 |" in table

    longer = [*argv, "--set", "epochs=3"]  # a changed schedule never continues or mixes with the old cells
    assert statuses(capsys, longer) == dict.fromkeys(keys, "stale: trained with another epochs")
    assert sweep.main(longer, runner=lambda argv, log: pytest.fail(f"trained a stale cell: {argv}")) == 1
    assert "Missing (not averaged): meld/nobio/seed-1 (stale: trained with another epochs)" in capsys.readouterr().out


def fake_cell(root: Path, key: str, weighted: float, macro: float) -> None:
    """A finished cell as train_bert leaves it: done.json and best/dev_report.json."""
    (root / key / "best").mkdir(parents=True)
    (root / key / "done.json").write_text("{}")
    per_class = {
        label: {"f1": weighted + i, "precision": 0.0, "recall": 0.0, "support": 1} for i, label in enumerate(MELD)
    }
    (root / key / "best" / "dev_report.json").write_text(
        json.dumps({"weighted_f1": weighted, "macro_f1": macro, "accuracy": 50.0, "per_class": per_class, "step": 3})
    )


def test_results_average_finished_seeds_only_and_pair_differences_by_seed(tiny, tmp_path, capsys):
    grid = write_grid(tmp_path, tiny, seeds=(1, 2, 3))
    root = tmp_path / "sweep"
    scores = {"nobio": [(50.0, 30.0), (52.0, 31.0), (54.5, 35.0)], "text": [(51.0, 29.0), (55.0, 36.0)]}
    for variant, values in scores.items():
        for seed, (weighted, macro) in enumerate(values, 1):
            fake_cell(root, f"meld/{variant}/seed-{seed}", weighted, macro)
    (root / "meld/text/seed-3/last").mkdir(parents=True)  # stopped after epoch 1: not averaged
    (root / "meld/text/seed-3/last/trainer_state.json").write_text(json.dumps({"epoch": 1, "step": 5}))
    (root / "meld/text/seed-3/best").mkdir()
    (root / "meld/text/seed-3/best/dev_report.json").write_text(json.dumps({"weighted_f1": 99.0}))
    (root / "cells.jsonl").write_text(
        "".join(
            json.dumps(row) + "\n"
            for row in [
                {"event": "start", "dataset": "meld", "variant": "nobio", "seed": 1},
                {"event": "end", "dataset": "meld", "variant": "nobio", "seed": 1, "wall_s": 10.0},
                {"event": "start", "dataset": "meld", "variant": "nobio", "seed": 2},  # killed with the sweep: no end
                {"event": "start", "dataset": "meld", "variant": "nobio", "seed": 2},
                {"event": "end", "dataset": "meld", "variant": "nobio", "seed": 2, "wall_s": 20.0},
            ]
        )
    )

    assert sweep.main([grid, "--report-only"]) == 0
    rows = {row["variant"]: row for row in json.loads((root / "results.json").read_text())["table"]}
    nobio, text = rows["nobio"], rows["text"]
    assert nobio["weighted_f1"]["mean"] == pytest.approx(52.1666667)
    assert nobio["weighted_f1"]["std"] == pytest.approx(statistics.stdev([50.0, 52.0, 54.5]))
    assert (text["seeds"], text["missing_seeds"], text["weighted_f1"]["n"]) == ([1, 2], [3], 2)
    assert text["macro_f1"]["mean"] == pytest.approx(32.5) and text["per_class_f1"]["neutral"] == pytest.approx(53.0)
    paired = text["vs_reference"]
    assert paired["seeds"] == [1, 2] and paired["weighted_f1"]["per_seed"] == {"1": 1.0, "2": 3.0}
    assert (paired["weighted_f1"]["mean"], paired["weighted_f1"]["std"]) == pytest.approx((2.0, 2**0.5))
    assert paired["macro_f1"]["per_seed"] == {"1": -1.0, "2": 5.0}
    assert (nobio["train_wall_s"], nobio["train_wall_complete"]) == (15.0, False)  # seed 3 has no logged wall
    assert text["train_wall_s"] is None
    table = capsys.readouterr().out
    assert "| meld | nobio | 3/3 | 52.17 ± 2.25 | 32.00 ± 2.65 | — | — | 50.00 / 52.00 / 54.50 | — | ≥15 |" in table
    assert "| meld | text | 2/2" not in table and "| meld | text | 2/3 | 53.00 ± 2.83 |" in table
    assert "| +2.00 ± 1.41 |" in table and "| +1.00 / +3.00 / — |" in table
    assert "Missing (not averaged): meld/text/seed-3 (partial epoch 1, step 5)" in table


def test_a_fresh_checkout_keeps_finished_cells_from_the_record(tiny, tmp_path, capsys):
    record = tmp_path / "docs" / "cells.jsonl"
    grid = [write_grid(tmp_path, tiny, seeds=(1, 2), record=str(record)), *data_sets(tiny)]
    root = tmp_path / "sweep"
    for key, weighted in [("meld/nobio/seed-1", 50.0), ("meld/nobio/seed-2", 52.0), ("meld/text/seed-1", 53.0)]:
        fake_cell(root, key, weighted, 30.0)
    assert sweep.main([*grid, "--report-only"]) == 0
    before = json.loads((root / "results.json").read_text())
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(r["variant"], r["seed"], r["weighted_f1"]) for r in rows] == [
        ("nobio", 1, 50.0),
        ("nobio", 2, 52.0),
        ("text", 1, 53.0),
    ]
    assert [(r["config"]["seed"], r["config"]["bio_mode"], r["config"]["epochs"]) for r in rows] == [
        (1, "none", 2),
        (2, "none", 2),
        (1, "mlp", 2),
    ]

    shutil.rmtree(root)  # a fresh checkout: no run folders, only the committed record
    recorded = "done (recorded; no run folder)"
    assert statuses(capsys, grid) == {
        "meld/nobio/seed-1": recorded,
        "meld/text/seed-1": recorded,
        "meld/nobio/seed-2": recorded,
        "meld/text/seed-2": "todo",
    }
    calls: list[str] = []
    assert sweep.main(grid, runner=lambda argv, log: calls.append(argv[argv.index("--output_dir") + 1]) or 1) == 1
    assert calls == [str(root / "meld" / "text" / "seed-2")]  # only the cell never finished is trained
    after = json.loads((root / "results.json").read_text())
    assert after["table"] == before["table"] and after["missing"] == before["missing"]
    assert "From the record" in capsys.readouterr().out

    longer = [*grid, "--set", "epochs=3"]  # another schedule: recorded cells are not its results
    assert set(statuses(capsys, longer).values()) == {"todo"}
    assert sweep.main([*longer, "--report-only"]) == 0
    assert [json.loads(line) for line in record.read_text().splitlines()] == rows  # kept until retrained

    record.write_text(record.read_text() + '{"dataset": "meld"}\n')
    assert sweep.main([*grid, "--dry-run"]) == 2
    assert f"{record} line 4: not a sweep record row" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "sets", "message"),
    [
        (
            {"variants": {"nobio": {"bio_mod": "none"}}, "reference": "nobio"},
            [],
            r"variant nobio: unknown .*'bio_mod'",
        ),
        ({"overrides": {"seed": 3}}, [], r"overrides sets \['seed'\]"),
        ({"reference": "text-v2"}, [], "`reference` must name one of the variants"),
        ({"seeds": [1, 1]}, [], "`seeds` must be a non-empty list of distinct integers"),
        ({"base_config": {"emorynlp": BASE}}, [], "`base_config` must map every dataset"),
        ({}, ["emorynlp.train_data=x"], "DATASET in"),
        ({}, ["threads=2"], r"--set sets \['threads'\]"),
        ({"variants": {"nobio": {"train_bios": []}}, "reference": "nobio"}, [], "field train_bios must be"),
    ],
)
def test_bad_grids_fail_before_training_naming_the_file_and_field(tiny, tmp_path, capsys, change, sets, message):
    grid = write_grid(tmp_path, tiny)
    raw = yaml.safe_load(Path(grid).read_text())
    Path(grid).write_text(yaml.safe_dump({**raw, **change}))
    with pytest.raises(ValueError, match=message) as err:
        sweep.load_grid(grid, sets=sets)
    assert grid in str(err.value) or sets
    assert sweep.main([grid, *(f"--set={s}" for s in sets)], runner=lambda *a: pytest.fail("trained")) == 2
    assert not (tmp_path / "sweep").exists()


def test_a_real_subprocess_cell_passes_threads_and_logs_its_wall(tiny, tmp_path):
    grid = write_grid(tmp_path, tiny, seeds=(7,), variants={"nobio": {"bio_mode": "none"}}, epochs=1)
    assert sweep.main([grid, *data_sets(tiny), "--threads", "1"]) == 0
    cell = tmp_path / "sweep" / "meld" / "nobio" / "seed-7"
    assert json.loads((cell / "done.json").read_text())["steps"] == 7
    config = json.loads((cell / "train_config.json").read_text())
    assert (config["threads"], config["seed"], config["bio_mode"], config["window"]) == (1, 7, "none", 0)
    assert "training config" in (cell / "train.log").read_text()
    end = json.loads((tmp_path / "sweep" / "cells.jsonl").read_text().splitlines()[-1])
    assert (end["rc"], end["status"]) == (0, "done") and end["wall_s"] > 0
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert [(c["seed"], c["train_wall_s"]) for c in results["cells"]] == [(7, end["wall_s"])]


def test_resume_without_a_checkpoint_starts_fresh_applies_threads_and_marks_done(tiny, tmp_path, monkeypatch):
    threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    config = train_bert.load_config(
        None,
        **tiny,
        bio_mode="none",
        max_length=64,
        batch_size=2,
        max_steps=3,
        eval_every=3,
        output_dir=str(tmp_path),
        device="cpu",
        resume=True,
        threads=3,
    )
    result = train_bert.train(config)
    assert threads == [3] and result["steps"] == 3
    done = json.loads((tmp_path / "done.json").read_text())
    assert done["steps"] == 3 and done["best_dev_weighted_f1"] == pytest.approx(result["best_dev_weighted_f1"])
    assert "history" not in done and not (tmp_path / "done.json.tmp").exists()


def test_a_variant_names_per_dataset_files_with_the_dataset_placeholder(tiny, tmp_path):
    grid = write_grid(
        tmp_path,
        tiny,
        variants={
            "scores": {
                "profile": "scores",
                "train_bios": "profiles/{dataset}.train.jsonl",
                "dev_bios": ["profiles/{dataset}.valid.jsonl", "x.jsonl"],
            }
        },
        base_config={"meld": BASE, "emorynlp": EMORY},
        datasets=["meld", "emorynlp"],
        reference=None,
    )
    cells = {c.dataset: c for c in sweep.load_grid(grid).cells}
    for dataset in ("meld", "emorynlp"):
        assert cells[dataset].settings["train_bios"] == f"profiles/{dataset}.train.jsonl"
        assert cells[dataset].config["dev_bios"] == [f"profiles/{dataset}.valid.jsonl", "x.jsonl"]
        assert cells[dataset].config["profile"] == "scores"


def test_only_trains_the_matching_cells(tiny, tmp_path):
    grid = write_grid(tmp_path, tiny, seeds=(1, 2))
    calls: list[str] = []

    def runner(argv: list[str], log_path: str) -> int:
        calls.append(argv[argv.index("--output_dir") + 1])
        return 1  # nothing trained: the cell stays todo and counts as failed

    assert sweep.main([grid, *data_sets(tiny), "--only", "*/text/*", "--only", "meld/nobio/seed-2"], runner) == 1
    root = tmp_path / "sweep" / "meld"
    assert calls == [str(root / "text" / "seed-1"), str(root / "nobio" / "seed-2"), str(root / "text" / "seed-2")]


def test_an_embedded_encoder_and_its_folder_are_the_same_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOSERC_CACHE", str(tmp_path))  # mpnet's folder: where `models pull mpnet` would put it
    folder = str(tmp_path / "all-mpnet-base-v2")
    assert sweep._differs({"encoder": folder, "epochs": 4}, {"encoder": "mpnet", "epochs": 4}) == []
    assert sweep._differs({"encoder": "mpnet"}, {"encoder": folder + "/"}) == []
    assert sweep._differs({"encoder": str(tmp_path / "other")}, {"encoder": "mpnet"}) == ["encoder"]
    changed = sweep._differs({"encoder": "minilm", "epochs": 4}, {"encoder": "mpnet", "epochs": 3})
    assert changed == ["encoder", "epochs"]
