"""bench/label_speedup.py's held-out-size input (whole dialogues, in order, until the asked utterance count) and
the package view that makes a "before" side run all of another checkout's code.

.venv/bin/python -m pytest -q tests/test_label_speedup.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from call_memory import package_view  # noqa: E402
from label_speedup import held_out_size  # noqa: E402


def _dialogues(tmp_path: Path) -> str:
    data = {
        f"d{i}": {"sentences": [f"line {j}" for j in range(n)], "labels": [0] * n} for i, n in enumerate([3, 4, 5])
    }
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def test_takes_whole_dialogues_until_the_count(tmp_path: Path) -> None:
    taken = json.loads(Path(held_out_size(_dialogues(tmp_path), 5, tmp_path)).read_text(encoding="utf-8"))
    assert list(taken) == ["d0", "d1"]  # 3 + 4 = 7 >= 5: the second dialogue is kept whole
    assert sum(len(d["sentences"]) for d in taken.values()) == 7


def test_too_few_utterances_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="12 utterances, fewer than --utterances 13"):
        held_out_size(_dialogues(tmp_path), 13, tmp_path)


def test_the_package_view_takes_every_subpackage_from_the_other_checkout(tmp_path: Path) -> None:
    tree = tmp_path / "old"
    for folder in ("bioserc", "pipelines", "serving_artifacts"):
        (tree / folder).mkdir(parents=True)
        (tree / folder / "__init__.py").write_text(f"WHERE = 'old {folder}'\n")
    code = "import bioserc, bioserc.pipelines, bioserc.serving_artifacts as s; print(bioserc.WHERE, s.WHERE)"
    env = {**os.environ, "PYTHONPATH": package_view(str(tree))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["old", "bioserc", "old", "serving_artifacts"], out.stderr
