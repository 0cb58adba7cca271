"""Make tests/ importable so test modules can share small builders (pytest runs with --import-mode=importlib)."""

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
