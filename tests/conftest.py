"""Shared test set-up: tests/ importable (pytest runs with --import-mode=importlib) and a one-thread fixture."""

import sys
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors only pay for thread synchronisation (70x slower with 2 threads on a busy 2-core box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
