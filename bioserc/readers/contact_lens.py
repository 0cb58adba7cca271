"""Amazon Connect Contact Lens analysis output for voice contacts: one contact per JSON file.

Fields follow https://docs.aws.amazon.com/connect/latest/adminguide/contact-lens-example-output-files.html. It is
the Call Analytics layout, except that a turn names its `ParticipantId` and `Participants[]` maps ids to roles
(AGENT, CUSTOMER, SYSTEM, CUSTOM_BOT, SUPERVISOR). Older files use the role itself as the id. A transferred call has
two agent ids: they become AGENT and AGENT_2, so bios never merge two people.
"""

from __future__ import annotations

import re
from typing import Any

from bioserc.errors import RecordError
from bioserc.readers.aws_tca import ROLE_NAMES, TRANSCRIPT_KEY, AwsTcaReader, SpeakerResolver, dig
from bioserc.readers.base import conversation_id_from_path, register_reader
from bioserc.readers.roles import numbered_speaker


PARTICIPANT_ID_KEY = re.compile(r'"ParticipantId"\s*:')


@register_reader
class ContactLensReader(AwsTcaReader):
    name = "contact-lens"
    priority = 30
    description = "Amazon Connect Contact Lens output JSON (Participants[] and Transcript[] with ParticipantId)"

    @classmethod
    def detect(cls, path: str, head: str) -> bool:
        return (
            head.lstrip().startswith("{")
            and TRANSCRIPT_KEY.search(head) is not None
            and PARTICIPANT_ID_KEY.search(head) is not None
        )

    def conversation_id(self, path: str, doc: dict[str, Any]) -> str:
        return str(dig(doc, "CustomerMetadata", "ContactId") or conversation_id_from_path(path))

    def speaker_resolver(self, path: str, doc: dict[str, Any]) -> SpeakerResolver:
        participants = doc.get("Participants")
        roles = {
            p.get("ParticipantId"): p.get("ParticipantRole")
            for p in (participants if isinstance(participants, list) else [])
            if isinstance(p, dict)
        }
        names: dict[tuple[str, str], str] = {}

        def resolve(record: str, turn: dict[str, Any]) -> tuple[str, str]:
            pid = turn.get("ParticipantId")
            if not isinstance(pid, str) or not pid.strip():
                raise RecordError(path, record, "ParticipantId", f"missing or not a string: {pid!r}")
            vendor = roles.get(pid, pid)
            role = ROLE_NAMES.get(vendor) if isinstance(vendor, str) else None
            if role is None:
                raise RecordError(
                    path,
                    record,
                    "ParticipantId",
                    f"participant {pid!r} has no role in Participants (expected one of {list(ROLE_NAMES)})",
                )
            return numbered_speaker(names, role, pid), role

        return resolve
