"""A bio cache that several processes (Beam workers, parallel jobs) can write at once.

The cache is a directory of JSONL shards. Every writer appends to its own shard (host, pid and a random suffix in
the name), so no two writers share a file and no locking is needed; readers merge all shards. A line cut short by a
crash is ignored on the next read. Entries are keyed by a hash of everything that determines the bio.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from typing import Any


def bio_key(transcript: str, speaker: str, model_id: str, prompt_version: str, params: dict[str, Any]) -> str:
    payload = json.dumps([transcript, speaker, model_id, prompt_version, params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class BioCache:
    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._entries: dict[str, dict[str, Any]] = {}
        self._shard = None
        self.reload()

    def reload(self) -> None:
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".jsonl"):
                continue
            with open(os.path.join(self.directory, name), encoding="utf-8") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # torn last line of a crashed writer
                        continue
                    self._entries[entry["key"]] = entry

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        entry = {**entry, "key": key}
        if self._shard is None:
            name = f"shard-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            self._shard = open(os.path.join(self.directory, name), "a", encoding="utf-8")  # noqa: SIM115
        self._shard.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._shard.flush()  # one line per bio: a crash loses at most the bio being written
        self._entries[key] = entry

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None

    def __getstate__(self) -> dict[str, Any]:  # Beam pickles DoFns: ship the path, reopen on the worker
        return {"directory": self.directory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"])
