"""Command-line pieces every `bioserc` command shares: number and JSON argparse types, and the input flags.

`add_input_args` is the one definition of INPUT..., --format, --dataset, the role flags and --max-file-mb, used by
`bioserc convert`, `stats`, `bios` and `label`; `reader_options(args)` (`bioserc.readers.sources`) turns them into
reader options.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from bioserc.labels import LABEL_SETS
from bioserc.readers import reader_names
from bioserc.readers.roles import add_role_args


DATASET_HELP = "label set for BiosERC JSON files whose name does not start with the dataset name"


def at_least(
    minimum: int | float, kind: type = int, maximum: int | float | None = None
) -> Callable[[str], int | float]:
    """An argparse type: a number no smaller than `minimum` (and, given, no larger than `maximum`): a zero batch or a
    negative limit is a usage error."""

    def number(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            span = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {text}")
        return value

    return number


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object, e.g. --extra-body '{"repetition_penalty": 1.1}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_input_args(
    parser: argparse.ArgumentParser, remote: bool = False, dataset_help: str = DATASET_HELP, size_limit: bool = True
) -> None:
    """INPUT..., --format, --dataset, --speaker-roles/--channel-roles and (with `size_limit`) --max-file-mb.

    Args:
        parser: the command's parser.
        remote: the command reads gs:// too (the Beam pipelines).
        dataset_help: what --dataset means for this command.
        size_limit: add --max-file-mb (what a file over it becomes is the command's business).
    """
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="files, directories (searched recursively) or globs; .gz is read transparently"
        + ("; local or gs://" if remote else ""),
    )
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", *reader_names()],
        help="input format; auto (the default) detects it per file from its name and first bytes",
    )
    parser.add_argument("--dataset", choices=sorted(LABEL_SETS), help=dataset_help)
    add_role_args(parser)  # the same speaker names in every command, so a `bioserc bios` --bios file matches
    if size_limit:
        parser.add_argument(
            "--max-file-mb",
            type=at_least(0, float),
            default=256,
            metavar="MB",
            help="size limit per input file after decompression (default 256); larger files are "
            "skipped (dead-lettered by the pipelines)",
        )


def max_file_bytes(args: argparse.Namespace) -> int:
    """--max-file-mb in bytes."""
    return int(args.max_file_mb * (1 << 20))
