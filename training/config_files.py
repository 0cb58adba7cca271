"""Training configs: a dataclass per trainer, defaults from a YAML or TOML file, flags of the same names on top.

Shared by train_bert.py and train_llm.py (the trl script pattern: config dataclasses, a short main).
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any, TypeVar

import yaml


Config = TypeVar("Config")


def load_config(cls: type[Config], path: str | None = None, **overrides: Any) -> Config:
    """A YAML (.yaml/.yml) or TOML (.toml) file as defaults, then keyword overrides; unknown keys are an error."""
    values: dict[str, Any] = {}
    if path:
        with open(path, "rb") as fh:
            values = tomllib.load(fh) if path.endswith(".toml") else (yaml.safe_load(fh) or {})
    values.update(overrides)
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown training config key(s) {unknown} in {path or 'overrides'}; see --help")
    return cls(**values)


def normalize_fields(config: Any, list_fields: Sequence[str]) -> None:
    """Fix what YAML and single flags hand a dataclass: one path where a list is meant, 3e-5 (no dot) as a string."""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in list_fields and isinstance(value, str):
            setattr(config, f.name, [value])
        elif f.type == "float":
            setattr(config, f.name, float(value))


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The command's docstring as written, and every optional flag's default in its --help line."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.required else super()._get_help_string(action)


def make_parser(cls: type, doc: str | None, prog: str | None = None):
    """One flag per config field (HfArgumentParser), plus --config FILE and --dry-run."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(cls, prog=prog, description=doc, formatter_class=HelpFormatter)
    parser.add_argument("--config", help="YAML or TOML file whose keys set the defaults; flags override them")
    parser.add_argument("--dry-run", action="store_true", help="build data, model and one forward pass; no training")
    return parser


def parse_config(
    cls: type[Config], doc: str | None, argv: Sequence[str] | None = None, prog: str | None = None
) -> tuple[Config, bool]:
    """(config, dry_run) from the command line: --config's values become the defaults the flags override."""
    parser = make_parser(cls, doc, prog)
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**asdict(load_config(cls, known.config)))
    config, extra = parser.parse_args_into_dataclasses(args=argv)
    return config, extra.dry_run
