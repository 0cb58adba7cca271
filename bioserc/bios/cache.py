"""A bio cache that several processes (Beam workers, parallel jobs) can write at once.

The cache is a directory of JSONL shards. Every writer appends to its own shard (host, pid and a random suffix in
the name), so no two writers share a file and no locking is needed; readers merge all shards. A line cut short by a
crash is ignored on the next read. Entries are keyed by a hash of everything that determines the bio: the transcript,
the speaker, the model's *content* (`model_fingerprint`, never its folder name), the prompt version and the
generation settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import uuid
from typing import Any

from bioserc.artifacts import MANIFEST, sha256_file


def bio_key(transcript: str, speaker: str, model: Any, prompt_version: str, params: dict[str, Any]) -> str:
    """`model` is the backend's `identity()` (any JSON value); keys are stable across processes and machines."""
    payload = json.dumps([transcript, speaker, model, prompt_version, params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def model_fingerprint(folder: str) -> str:
    """sha256 naming what is in a model folder, so a model retrained in the same folder gets new cache keys.

    With a manifest.json it is the manifest's own hash (the manifest lists every file's sha256); otherwise a hash of
    the name and sha256 of every top-level file (config, weights, tokenizer, chat template; checkpoint subfolders are
    not read by a loader and are skipped). Hashing is memoised per process on the files' names, sizes, mtimes and
    inodes: an unchanged folder is read once, a rewritten file is noticed at once.
    """
    manifest = os.path.join(folder, MANIFEST)
    if os.path.isfile(manifest):
        return sha256_file(manifest)
    names = sorted(name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name)))
    if not names:
        raise FileNotFoundError(f"model folder {folder!r} holds no files")
    stats = tuple(
        (name, st.st_size, st.st_mtime_ns, st.st_ino) for name in names for st in [os.stat(os.path.join(folder, name))]
    )
    return _fingerprint(os.path.realpath(folder), stats)


@functools.lru_cache(maxsize=64)
def _fingerprint(folder: str, stats: tuple[tuple[str, int, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, *_ in stats:
        digest.update(f"{name}\0{sha256_file(os.path.join(folder, name))}\n".encode())
    return digest.hexdigest()


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
