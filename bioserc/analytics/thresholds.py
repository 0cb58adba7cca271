"""The analytics' thresholds: one dataclass, and the flags `bioserc label` and `bioserc summarize` share.

A turn is negative at a valence score <= -negative (see `valence`); an escalation is a run of at least
`min_negative_run` negative turns of one role, or a drop of at least `shift_delta` from one of a role's turns that was
not negative to its next, negative one; a role's call score weighs its last turn `end_weight` times its first.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bioserc.flags import at_least


@dataclass(frozen=True, slots=True)
class Thresholds:
    negative: float = 0.5  # a turn is negative at a valence score <= -negative
    min_negative_run: int = 2  # consecutive negative turns of one role that make an escalation
    shift_delta: float = 0.8  # drop between a role's consecutive turns, ending negative, that makes an escalation
    end_weight: float = 2.0  # weight of a role's last turn relative to its first in its end-weighted score
    review_calls: int = 20  # calls archive.json and report.html list for review


def add_analytics_args(parser: argparse.ArgumentParser) -> None:
    """The threshold flags and the report's size, in their own group, with their defaults in --help."""
    d = Thresholds()
    g = parser.add_argument_group("analytics (conversations.jsonl, calls.csv/.parquet, archive.json, report.html)")
    g.add_argument(
        "--negative-threshold",
        type=at_least(0.0, float, 1.0),
        default=d.negative,
        metavar="T",
        help="a turn is negative at a valence score <= -T (default: %(default)s)",
    )
    g.add_argument(
        "--min-negative-run",
        type=at_least(1),
        default=d.min_negative_run,
        metavar="N",
        help="consecutive negative turns of one role that make an escalation (default: %(default)s)",
    )
    g.add_argument(
        "--shift-delta",
        type=at_least(0.0, float, 2.0),
        default=d.shift_delta,
        metavar="D",
        help="a drop of at least D from a role's turn that was not negative to its next, negative one is "
        "an escalation (default: %(default)s)",
    )
    g.add_argument(
        "--end-weight",
        type=at_least(1.0, float),
        default=d.end_weight,
        metavar="W",
        help="weight of a role's last turn relative to its first in its call score, growing linearly "
        "(1: a plain mean) (default: %(default)s)",
    )
    g.add_argument(
        "--review-calls",
        type=at_least(0),
        default=d.review_calls,
        metavar="N",
        help="calls listed for review in archive.json and report.html (default: %(default)s)",
    )
    g.add_argument(
        "--report-calls",
        type=at_least(0),
        default=20,
        metavar="N",
        help="calls plotted in report.html besides those listed for review (0: no report) (default: %(default)s)",
    )


def thresholds_from(args: argparse.Namespace) -> Thresholds:
    return Thresholds(
        args.negative_threshold, args.min_negative_run, args.shift_delta, args.end_weight, args.review_calls
    )
