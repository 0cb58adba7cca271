"""The one way every bench script ends: print the JSON report, and keep it under docs/bench/ when asked."""

from __future__ import annotations

import json
import os
from typing import Any


def emit(report: dict[str, Any], out: str | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
