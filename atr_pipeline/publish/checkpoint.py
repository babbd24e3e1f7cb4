"""Resumable loads: an append-only log of the chunks a server has fully accepted.

In:  the export folder, the server's key, a fingerprint of (export, chunking settings).
Out: ``<export>/.load_state/<server-key>.jsonl``: a header line with the fingerprint, then one line
     per completed chunk (``{"t": type, "c": index}``) and per completed type (``{"t": type, "done": true}``).
Refused (ignored and started afresh, with a note in the report): a log whose fingerprint differs,
     i.e. the export was rewritten or the bundle/Group chunking changed, so chunk numbers mean
     something else now.

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


class Checkpoint:
    def __init__(self, export_dir: Path, server_key: str, fingerprint: str, *, restart: bool = False):
        self.path = Path(export_dir) / STATE_DIR / f"{server_key}.jsonl"
        self.fingerprint = fingerprint
        self._chunks: dict[str, set[int]] = {}
        self._types: set[str] = set()
        self._lock = threading.Lock()
        self.resumed = False
        self.note = ""
        if restart and self.path.exists():
            self.note = "checkpoint ignored (--restart)"
        elif self.path.exists():
            if self._read():
                self.resumed = bool(self._chunks or self._types)
            else:
                self._chunks, self._types = {}, set()
                self.note = "checkpoint discarded: the export or the chunking settings changed"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.resumed:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps({"fingerprint": fingerprint}) + b"\n")
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

    def _read(self) -> bool:
        lines = self.path.read_bytes().split(b"\n")
        try:
            header = orjson.loads(lines[0])
        except orjson.JSONDecodeError:
            return False
        if header.get("fingerprint") != self.fingerprint:
            return False
        for line in lines[1:]:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # empty or torn last line
            if entry.get("done"):
                self._types.add(entry["t"])
            elif "c" in entry:
                self._chunks.setdefault(entry["t"], set()).add(int(entry["c"]))
        return True

    def chunk_done(self, resource_type: str, index: int) -> bool:
        return resource_type in self._types or index in self._chunks.get(resource_type, ())

    def type_done(self, resource_type: str) -> bool:
        return resource_type in self._types

    def _append(self, entry: dict) -> None:
        with self._lock:
            self._fh.write(orjson.dumps(entry) + b"\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def mark_chunk(self, resource_type: str, index: int) -> None:
        self._chunks.setdefault(resource_type, set()).add(index)
        self._append({"t": resource_type, "c": index})

    def mark_type(self, resource_type: str) -> None:
        self._types.add(resource_type)
        self._append({"t": resource_type, "done": True})

    def close(self) -> None:
        self._fh.close()
