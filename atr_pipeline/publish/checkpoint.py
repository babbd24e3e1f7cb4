"""Resumable loads: an append-only log of the chunks a server has fully accepted.

In:  the export folder, the server's key, a fingerprint of (the NDJSON files' sha256, chunking
     settings) and the server's identity from its CapabilityStatement.
Out: ``<export>/.load_state/<server-key>.jsonl``: a header line (fingerprint, server identity), then
     one line per completed chunk (``{"t": type, "c": index, "n": entries, "ids": [first, last]}``;
     Group chunks list every id), per completed type (``{"t": type, "done": true}``) and per type
     found missing on the server (``{"t": type, "forget": true}``: what was logged for that type
     before no longer counts).
Refused (ignored and started afresh, with a note in the report): a log whose fingerprint differs
     (a file's contents or the bundle/Group chunking changed, so chunk numbers mean something else
     now) or whose server identity differs (another server behind the same URL).

The log says what the server accepted, not what it holds now: a server restored from a backup or
restarted empty holds less. So the loader checks the claims (``claimed_count``, ``sample_ids``)
against the server before it skips anything (publish/verify.py).

Appending one short line per chunk (flushed and fsynced) makes the log crash-safe: a torn last
line from a killed process is simply ignored, and a chunk is only logged after the server
answered success for every entry in it. Chunks are PUTs by id, so repeating one is harmless.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import orjson

STATE_DIR = ".load_state"
SAMPLE_PER_TYPE = 20  # ids per type checked on the server before a resume skips that type


class Checkpoint:
    def __init__(self, export_dir: Path, server_key: str, fingerprint: str, *, server: dict | None = None, restart: bool = False):
        self.path = Path(export_dir) / STATE_DIR / f"{server_key}.jsonl"
        self.fingerprint = fingerprint
        self.server = server or {}
        self._chunks: dict[str, dict[int, tuple[int, list[str]]]] = {}
        self._types: set[str] = set()
        self._lock = threading.Lock()
        self.resumed = False
        self.note = ""
        if restart and self.path.exists():
            self.note = "checkpoint ignored (--restart)"
        elif self.path.exists():
            reason = self._read()
            if not reason:
                self.resumed = bool(self._chunks or self._types)
            else:
                self._chunks, self._types = {}, set()
                self.note = f"checkpoint discarded: {reason}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.resumed:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps({"fingerprint": fingerprint, "server": self.server}) + b"\n")
            os.replace(tmp, self.path)
        else:
            self._drop_torn_tail()
        self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in close()

    def _drop_torn_tail(self) -> None:
        """Cut a half-written last line so the next append starts on a line of its own."""
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)

    def _read(self) -> str:
        """Load the log; the reason it cannot be used, or "" when it can."""
        lines = self.path.read_bytes().split(b"\n")
        try:
            header = orjson.loads(lines[0])
        except orjson.JSONDecodeError:
            return "its header is unreadable"
        if header.get("fingerprint") != self.fingerprint:
            return "the export's files or the chunking settings changed"
        recorded = header.get("server") or {}
        if self.server and recorded != self.server:
            return (
                f"it was written for another server at this URL ({recorded.get('software') or 'unknown software'}, "
                f"FHIR {recorded.get('fhir_version') or '?'}); everything is sent again"
            )
        for line in lines[1:]:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # empty or torn last line
            rtype = entry.get("t")
            if entry.get("forget"):
                self._chunks.pop(rtype, None)
                self._types.discard(rtype)
            elif entry.get("done"):
                self._types.add(rtype)
            elif "c" in entry:
                self._chunks.setdefault(rtype, {})[int(entry["c"])] = (int(entry.get("n", 0)), list(entry.get("ids") or []))
        return ""

    def chunk_done(self, resource_type: str, index: int) -> bool:
        return index in self._chunks.get(resource_type, {})

    def type_done(self, resource_type: str) -> bool:
        return resource_type in self._types

    def claimed_types(self) -> list[str]:
        return sorted(set(self._chunks) | self._types)

    def claimed_count(self, resource_type: str) -> int:
        """How many resources of this type the log says the server accepted."""
        return sum(n for n, _ in self._chunks.get(resource_type, {}).values())

    def sample_ids(self, resource_type: str, limit: int | None = SAMPLE_PER_TYPE) -> list[str]:
        """Ids spread over the logged chunks: the first and last id of evenly spaced chunks
        (every logged Group id, since every Group is checked; ``limit=None`` gives all)."""
        chunks = self._chunks.get(resource_type, {})
        ids = [i for index in sorted(chunks) for i in chunks[index][1]]
        if limit is None or len(ids) <= limit:
            return ids
        step = len(ids) / limit
        return [ids[int(k * step)] for k in range(limit)]

    def _append(self, entry: dict) -> None:
        with self._lock:
            self._fh.write(orjson.dumps(entry) + b"\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def mark_chunk(self, resource_type: str, index: int, ids: list[str]) -> None:
        # Every Group id (a resume checks each Group's members); the ends of other chunks.
        sample = list(ids) if resource_type == "Group" or len(ids) <= 2 else [ids[0], ids[-1]]
        self._chunks.setdefault(resource_type, {})[index] = (len(ids), sample)
        self._append({"t": resource_type, "c": index, "n": len(ids), "ids": sample})

    def mark_type(self, resource_type: str) -> None:
        self._types.add(resource_type)
        self._append({"t": resource_type, "done": True})

    def forget(self, resource_type: str) -> None:
        """The server no longer holds what was logged for this type: send all of it again."""
        self._chunks.pop(resource_type, None)
        self._types.discard(resource_type)
        self._append({"t": resource_type, "forget": True})

    def close(self) -> None:
        self._fh.close()
