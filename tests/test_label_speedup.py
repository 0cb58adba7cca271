"""bench/label_speedup.py's held-out-size input: whole dialogues, in order, until the asked utterance count.

.venv/bin/python -m pytest -q tests/test_label_speedup.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
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
