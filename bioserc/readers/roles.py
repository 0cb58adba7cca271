"""Who is the agent: user-given roles for the speaker and channel ids of formats that carry no role.

Speakers (diarization) and channels (one side of a stereo recording each) are different ids, and the same number
means different people in each (Azure speaker 1 is the first voice heard, channel 1 is the second channel), so they
get two maps. One parser serves every command line; the readers only ever see validated dicts.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from bioserc.schema import ROLES


SPEAKER_ROLES_HELP = (
    "roles for diarized speaker ids, e.g. '1=agent,2=customer': Azure speaker 1, 2, ...; "
    "AWS Transcribe spk_0, spk_1, ...; the speaker cell of calls-csv rows with no role"
)
CHANNEL_ROLES_HELP = (
    "roles for the channels of a stereo recording, e.g. '0=agent,1=customer': Azure channel 0, 1; "
    "AWS Transcribe ch_0, ch_1; Google CCAI API channelTag 1, 2 (for segments without a "
    "participant role)"
)


def parse_roles(text: str, flag: str) -> dict[str, str]:
    """'1=agent, 2=customer' -> {'1': 'agent', '2': 'customer'}; a bad pair is a ValueError naming flag and pair."""
    roles: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        key, sep, role = (s.strip() for s in pair.partition("="))
        role = role.lower()
        if not sep or not key or role not in ROLES:
            raise ValueError(f"{flag}: bad pair {pair!r}: expected ID=ROLE with ROLE one of {', '.join(ROLES)}")
        if roles.get(key, role) != role:
            raise ValueError(f"{flag}: bad pair {pair!r}: id {key!r} is already mapped to {roles[key]!r}")
        roles[key] = role
    return roles


def checked_roles(roles: Mapping[Any, str] | None, option: str) -> dict[str, str]:
    """A reader option as given by library callers: string keys, every value a known role."""
    out = {str(k): v for k, v in (roles or {}).items()}
    for key, role in out.items():
        if role not in ROLES:
            raise ValueError(f"{option}: {key}={role!r} is not a role; choose one of {list(ROLES)}")
    return out


def numbered_speaker(names: dict[tuple[str, str], str], role: str, key: str) -> str:
    """AGENT for the first agent id seen, AGENT_2 for the second: distinct people in one role stay distinct."""
    if (role, key) not in names:
        n = 1 + sum(r == role for r, _ in names)
        names[(role, key)] = role.upper() if n == 1 else f"{role.upper()}_{n}"
    return names[(role, key)]


def mapped_speaker(
    names: dict[tuple[str, str], str], roles: dict[str, str], key: str, name: str
) -> tuple[str, str | None]:
    """(speaker, role) for one vendor id: named by role (AGENT, AGENT_2) where the user mapped `key`, else the
    vendor-derived `name` (SPEAKER_1, CHANNEL_0) with role None; nothing is guessed."""
    role = roles.get(key)
    return (numbered_speaker(names, role, name), role) if role else (name, None)


def add_role_args(parser: argparse.ArgumentParser) -> None:
    """--speaker-roles and --channel-roles (parsed to dicts; a bad pair is a usage error)."""
    for flag, help_text in (("--speaker-roles", SPEAKER_ROLES_HELP), ("--channel-roles", CHANNEL_ROLES_HELP)):
        parser.add_argument(flag, type=_roles_type(flag), default={}, metavar="ID=ROLE,...", help=help_text)


def _roles_type(flag: str):
    def parse(text: str) -> dict[str, str]:
        try:
            return parse_roles(text, flag)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"{flag}: ")) from None

    return parse


__all__ = [
    "CHANNEL_ROLES_HELP",
    "SPEAKER_ROLES_HELP",
    "add_role_args",
    "checked_roles",
    "mapped_speaker",
    "numbered_speaker",
    "parse_roles",
]
