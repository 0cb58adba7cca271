"""The helpers with one home in the core: device choice (`bioserc.devices`), folder replacement (`bioserc.fsutil`)
and length-sorted batching of prompts (`bioserc.batching`).

    .venv/bin/python -m pytest -q tests/test_core_helpers.py
"""

from __future__ import annotations

import os

import pytest
import torch

from bioserc.batching import length_sorted_chunks
from bioserc.devices import resolve_device
from bioserc.fsutil import replace_dir, staging_dir


def test_auto_device_follows_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == resolve_device("auto") == "cpu" == resolve_device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"


@pytest.mark.parametrize("device", ["gpu", "cuda1", "CPU", "cuda:", "cuda:-1", " cpu", "mps", ""])
def test_unknown_device_strings_are_refused(device):
    with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device(device)


def test_cuda_that_torch_cannot_see_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda': torch sees 0 CUDA GPU\(s\)"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="torch sees 1 CUDA GPU"):
        resolve_device("cuda:1")


def test_an_index_is_refused_where_the_trainer_picks_the_gpu():
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        resolve_device("cuda:0", allow_index=False)
    with pytest.raises(ValueError, match="use auto, cpu or cuda$"):
        resolve_device("gpu", allow_index=False)


def test_replace_dir_swaps_folders_and_clears_a_stale_old_one(tmp_path):
    target = tmp_path / "best"
    for version in ("one", "two"):
        tmp = tmp_path / "best.tmp"
        tmp.mkdir()
        (tmp / "weights").write_text(version)
        if version == "two":  # left by a run killed between the two renames
            (tmp_path / "best.tmp.old").mkdir()
            (tmp_path / "best.tmp.old" / "junk").write_text("x")
        replace_dir(str(tmp), str(target))
        assert (target / "weights").read_text() == version
    assert sorted(os.listdir(tmp_path)) == ["best"]


def test_staging_dir_is_a_hidden_sibling(tmp_path):
    staged = staging_dir(str(tmp_path / "sub" / "out"))
    assert os.path.dirname(staged) == str(tmp_path / "sub") and os.path.basename(staged).startswith(".out-")
    replace_dir(staged, str(tmp_path / "sub" / "out"))
    assert os.listdir(tmp_path / "sub") == ["out"]


def test_length_sorted_chunks_orders_by_length_and_keeps_ties_in_input_order():
    assert length_sorted_chunks([5, 1, 3, 1, 9], 2) == [[1, 3], [2, 0], [4]]
    assert length_sorted_chunks([], 4) == []
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        length_sorted_chunks([1], 0)


def test_length_sorted_chunks_cut_on_padded_tokens_as_well_as_on_count():
    # sorted: 1(i1) 1(i3) 3(i2) 5(i0) 9(i4); budget 6 padded tokens: [1,1,3] would be 3x3=9 > 6
    assert length_sorted_chunks([5, 1, 3, 1, 9], 8, max_tokens=6) == [[1, 3], [2], [0], [4]]
    assert length_sorted_chunks([5, 1, 3, 1, 9], 2, max_tokens=1000) == length_sorted_chunks([5, 1, 3, 1, 9], 2)
    lengths = [17, 3, 64, 12, 12, 40, 5] * 30
    chunks = length_sorted_chunks(lengths, 16, max_tokens=128)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))  # every sequence once
    assert all(len(c) * max(lengths[i] for i in c) <= 128 for c in chunks)
    assert length_sorted_chunks([500], 4, max_tokens=128) == [[0]]  # one over-long sequence still gets its call
    with pytest.raises(ValueError):
        length_sorted_chunks([1], 4, max_tokens=0)
