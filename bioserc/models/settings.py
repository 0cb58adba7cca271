"""What a saved classifier's config.json says about its inputs and outputs, read without transformers.

`BiosercBertConfig` is a transformers `PretrainedConfig`, and importing transformers imports torch (~350 MB and
seconds of start-up): the ONNX runtime, which needs only these fields, reads them from the same file instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ClassifierSettings:
    """The fields of `BiosercBertConfig.FIELDS` that batching and serving read (every saved config.json has them)."""

    labels: list[str]
    window: int
    bio_mode: str
    profile: str
    profile_dim: int
    max_length: int
    bio_max_length: int

    @classmethod
    def from_file(cls, path: str) -> ClassifierSettings:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
        missing = [f.name for f in fields(cls) if f.name not in config]
        if missing:
            raise ValueError(f"{path}: a classifier config.json needs {missing} (written by `bioserc train bert`)")
        return cls(**{f.name: config[f.name] for f in fields(cls)})
