"""What publish/ wrote, indexed for serving: every published month's export, its Groups, their versions.

In:  ``ATR_HOME/exports/<source>/<YYYY-MM>/`` folders with ``manifest.json`` (hidden staging and
     partial folders are ignored, so a month being published is invisible until its atomic swap).
Out: ``Catalog.snapshot()``: the Groups (every published version, across months) and a way to
     read any resource line by id, byte ranges of a Group's line, and its member references.

Each indexed month keeps its files open. publish/ replaces a month by swapping the whole folder
and deleting the old one; open descriptors still read the old files, so a request or an export
job that started on one publication sees that publication to its end, never a mix. A month
published while the server runs is picked up on the next request (the manifests are re-read at
on every snapshot by a stat of each month's manifest, so a month published by another process is
served from the first request after its swap; an unchanged manifest is not re-indexed).

A Group line may be hundreds of megabytes: only its head (everything but ``member``, which the
pipeline writes last) is kept in memory; members are read from the file in chunks.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from atr_pipeline.publish.export import MANIFEST_NAME, Manifest
from atr_pipeline.publish.group_split import split_group
from atr_pipeline.systems import EXT_ATTRIBUTION_LIST_STATUS, LOAD_ORDER

# Every type a Group reaches (ATR $davinci-data-export: Group, Patient, Coverage SHALL; the rest SHOULD).
RESOURCE_TYPES: tuple[str, ...] = ("Group", "Patient", "Coverage", "RelatedPerson", "Practitioner",
                                   "PractitionerRole", "Organization", "Location")
MEMBER_TYPES = tuple(t for t in RESOURCE_TYPES if t != "Group")
CHUNK = 1 << 20
_MEMBER_MARK = b',"member":['
_MONTH = re.compile(r"^\d{4}-\d{2}$")
_REF = re.compile(rb'"reference":"(Patient|Coverage|Practitioner|PractitionerRole|Organization|RelatedPerson|Location)/([^"\\/]+)"')
log = logging.getLogger(__name__)
assert set(LOAD_ORDER) <= set(RESOURCE_TYPES)


@dataclass(frozen=True)
class GroupEntry:
    """One Group as published in one month's export."""

    id: str
    version_id: str
    last_updated: str
    status: str | None
    identifiers: tuple[tuple[str, str], ...]
    name: str | None
    head: dict[str, Any]  # the Group without member
    export: MonthExport
    file_name: str
    offset: int
    length: int
    members_last: bool  # the line ends with the member array, so head + members can be streamed

    @property
    def month(self) -> str:
        return self.export.month

    def read_chunks(self) -> Iterator[bytes]:
        """The whole Group line (no newline), CHUNK bytes at a time."""
        return self.export.read_range(self.file_name, self.offset, self.length)

    def line(self) -> bytes:
        return b"".join(self.read_chunks())

    def references(self) -> Iterator[tuple[str, str]]:
        """(type, id) of every literal reference in the Group line, in order, without holding it."""
        carry = b""
        for chunk in self.read_chunks():
            data = carry + chunk
            cut = data.rfind(b"}") + 1  # a reference string never holds "}", so no match is cut in two
            for match in _REF.finditer(data, 0, cut):
                yield match.group(1).decode(), match.group(2).decode()
            carry = data[cut:]
        for match in _REF.finditer(carry):
            yield match.group(1).decode(), match.group(2).decode()

    def refers_to(self, resource_type: str, resource_id: str) -> bool:
        needle = f'"reference":"{resource_type}/{resource_id}"'.encode()
        return self.export.contains(self.file_name, needle, self.offset, self.offset + self.length)


class MonthExport:
    """One published month of one source, with its files held open (see the module docstring)."""

    def __init__(self, source: str, month: str, folder: Path):
        self.source = source
        self.month = month
        self.folder = folder
        self._fds: dict[str, int] = {}
        self._maps: dict[str, mmap.mmap | None] = {}
        self._map_lock = threading.Lock()
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            raw = _read_at(dir_fd, MANIFEST_NAME)
            self.digest = hashlib.sha256(raw).hexdigest()
            self.manifest = Manifest.model_validate(orjson.loads(raw))
            for item in [*self.manifest.output, *self.manifest.error]:
                if item.url.endswith(".gz") or "/" in item.url:
                    raise ValueError(f"{folder}: {item.url}: the API serves plain NDJSON exports only")
                self._fds[item.url] = os.open(item.url, os.O_RDONLY, dir_fd=dir_fd)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(dir_fd)
        self.transaction_time = self.manifest.transaction_time
        self.groups = [g for item in self.manifest.files_of("Group") for g in self._index_groups(item.url)]

    def close(self) -> None:
        for m in self._maps.values():
            if m is not None:
                m.close()
        for fd in self._fds.values():
            os.close(fd)
        self._fds, self._maps = {}, {}

    def __del__(self) -> None:
        self.close()

    def files_of(self, resource_type: str) -> list[str]:
        return [f.url for f in self.manifest.files_of(resource_type)]

    def read_range(self, name: str, offset: int, length: int) -> Iterator[bytes]:
        fd = self._fds[name]
        end = offset + length
        while offset < end:
            chunk = os.pread(fd, min(CHUNK, end - offset), offset)
            if not chunk:
                raise OSError(f"{self.folder.name}/{name}: shorter than indexed")
            offset += len(chunk)
            yield chunk

    def descriptor_path(self, name: str) -> str:
        """A path that opens the file indexed, even after publish/ swapped the folder (Linux /proc)."""
        return f"/proc/self/fd/{self._fds[name]}"

    def _map(self, name: str) -> mmap.mmap | None:
        with self._map_lock:
            if name not in self._maps:
                fd = self._fds[name]
                self._maps[name] = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if os.fstat(fd).st_size else None
            return self._maps[name]

    def contains(self, name: str, needle: bytes, start: int, end: int) -> bool:
        m = self._map(name)
        return m is not None and m.find(needle, start, end) >= 0

    def find_line(self, resource_type: str, resource_id: str) -> bytes | None:
        """The NDJSON line of one resource (lines start ``{"resourceType":"T","id":"..."``, as publish/ writes them)."""
        needle = f'{{"resourceType":"{resource_type}","id":"{resource_id}"'.encode()
        for name in self.files_of(resource_type):
            m = self._map(name)
            if m is None:
                continue
            at = m.find(needle)
            while at >= 0:
                if (at == 0 or m[at - 1] == 0x0A) and m[at + len(needle)] in b',}':
                    end = m.find(b"\n", at)
                    return m[at : end if end >= 0 else len(m)]
                at = m.find(needle, at + 1)
        return None

    def lines_referring(self, resource_type: str, target: str, limit: int = 1000) -> Iterator[tuple[str, str]]:
        """(type, id) of resources of the hop types (Coverage, PractitionerRole) whose line refers to ``target``."""
        needle = f'"reference":"{target}"'.encode()
        for name in self.files_of(resource_type):
            m = self._map(name)
            if m is None:
                continue
            at = m.find(needle)
            while at >= 0 and limit > 0:
                start = m.rfind(b"\n", 0, at) + 1
                head = m[start : start + 200]
                found = re.match(rb'\{"resourceType":"([A-Za-z]+)","id":"([^"]+)"', head)
                if found:
                    limit -= 1
                    yield found.group(1).decode(), found.group(2).decode()
                end = m.find(b"\n", at)
                if end < 0:
                    break
                at = m.find(needle, end)

    def _index_groups(self, name: str) -> list[GroupEntry]:
        out: list[GroupEntry] = []
        offset = 0
        for head_bytes, length, members_last in _scan_lines(self._fds[name], self, name):
            out.append(_entry(orjson.loads(head_bytes), self, name, offset, length, members_last))
            offset += length + 1
        return out


def _read_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _scan_lines(fd: int, export: MonthExport, name: str) -> Iterator[tuple[bytes, int, bool]]:
    """(head JSON, line length without newline, members_last) per Group line, holding at most a chunk of it."""
    with os.fdopen(os.dup(fd), "rb", buffering=CHUNK) as fh:
        fh.seek(0)
        while True:
            start = fh.tell()
            first = fh.readline(CHUNK)
            if not first:
                return
            length, tail = len(first), first[-3:]
            while not tail.endswith(b"\n"):
                more = fh.readline(CHUNK)
                if not more:
                    break
                length, tail = length + len(more), (tail + more)[-3:]
            if tail.endswith(b"\n"):
                length, tail = length - 1, tail[:-1]
            if not length:
                continue
            mark = first.find(_MEMBER_MARK)
            if mark >= 0 and tail.endswith(b"]}"):
                yield first[:mark] + b"}", length, True
                continue
            # A head longer than a chunk, or member not the last key: split the whole line (shapes
            # publish/ does not write, so the memory of one line is acceptable here).
            line = b"".join(export.read_range(name, start, length))
            yield split_group(line).head, length, False


def _entry(head: dict[str, Any], export: MonthExport, name: str, offset: int, length: int, members_last: bool) -> GroupEntry:
    status = next((e.get("valueCode") for e in head.get("extension", []) if e.get("url") == EXT_ATTRIBUTION_LIST_STATUS), None)
    meta = head.get("meta", {})
    return GroupEntry(
        id=head["id"],
        version_id=str(meta.get("versionId", "1")),
        last_updated=meta.get("lastUpdated") or export.transaction_time,
        status=status,
        identifiers=tuple((i.get("system", ""), i.get("value", "")) for i in head.get("identifier", [])),
        name=head.get("name"),
        head=head,
        export=export,
        file_name=name,
        offset=offset,
        length=length,
        members_last=members_last,
    )


@dataclass(frozen=True)
class CatalogView:
    """The published months at one moment: months in order, per Group id its entries oldest first."""

    months: tuple[MonthExport, ...]
    groups: dict[str, list[GroupEntry]] = field(default_factory=dict)

    def current_groups(self) -> list[GroupEntry]:
        return [entries[-1] for _, entries in sorted(self.groups.items())]


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


class Catalog:
    def __init__(self, exports_dir: Path):
        self.exports_dir = Path(exports_dir)
        self._lock = threading.Lock()
        self._months: dict[tuple[str, str], MonthExport] = {}
        self._view = CatalogView(())
        self._seen: tuple[tuple[str, str, int, int, int], ...] | None = None

    def snapshot(self, force: bool = False) -> CatalogView:
        """What is published now. A time-based throttle served a view up to a second old to a
        client reading right after `atr run` or an accepted request in another process (and the
        notification dispatcher's ticks kept it old); a stat per month costs microseconds."""
        with self._lock:
            signature = self._signature()
            if force or signature != self._seen:
                self._refresh()
                self._seen = signature
            return self._view

    def _signature(self) -> tuple[tuple[str, str, int, int, int], ...]:
        """(source, month, inode, mtime, size) of every month's manifest: publish/ swaps a month's
        folder whole, so any new publication changes its manifest's inode."""
        out = []
        for source_dir in _subfolders(self.exports_dir):
            if source_dir.name.startswith("."):
                continue
            for folder in _subfolders(source_dir):
                if not _MONTH.match(folder.name):
                    continue
                try:
                    st = (folder / MANIFEST_NAME).stat()
                except (FileNotFoundError, NotADirectoryError):
                    continue
                out.append((source_dir.name, folder.name, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(sorted(out))

    def _refresh(self) -> None:
        found: dict[tuple[str, str], MonthExport] = {}
        sources = sorted(p for p in self.exports_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) if self.exports_dir.is_dir() else []
        for source_dir in sources:
            for folder in sorted(p for p in source_dir.iterdir() if _MONTH.match(p.name)):
                key = (source_dir.name, folder.name)
                try:
                    raw = (folder / MANIFEST_NAME).read_bytes()
                except (FileNotFoundError, NotADirectoryError):
                    continue
                known = self._months.get(key)
                if known and known.digest == hashlib.sha256(raw).hexdigest():
                    found[key] = known
                    continue
                for _ in range(3):  # the folder may be swapped between reading the manifest and opening its files
                    try:
                        found[key] = MonthExport(key[0], key[1], folder)
                        break
                    except FileNotFoundError:
                        time.sleep(0.05)
                    except ValueError as exc:  # not servable (a gzipped export, a broken manifest): skip, keep serving the rest
                        log.warning("not serving %s/%s: %s", key[0], key[1], type(exc).__name__)
                        break
        self._months = found
        months = tuple(found[k] for k in sorted(found, key=lambda k: (k[1], k[0])))
        groups: dict[str, list[GroupEntry]] = {}
        for export in months:
            for entry in export.groups:
                groups.setdefault(entry.id, []).append(entry)
        self._view = CatalogView(months, groups)
