"""Deciding which remote files are ready to fetch: the sensor's logic, free of Dagster.

In:  one listing of the remote inbox (``RemoteFile``: name, size, mtime), the previous
     ``SensorCursor``, the mappings, and the time of the poll.
Out: ``PlannedRun`` requests (one per new, stable delivery, with its partition keys and a
     deterministic run key) and the next cursor.
Never requested: files no mapping matches (or several do), mappings whose month is only in the
     header (the month, hence the partition, is unknown until the file is read), done-marker
     files themselves, and files still changing.

A file being uploaded looks complete to SFTP (a download silently returns what is there so
far), so a file is ready only when its size and mtime are unchanged over ``stable_polls``
consecutive polls, or, when the payer writes done markers, once ``<name><suffix>`` exists.

The run key hashes (name, size, mtime): a lost or reset cursor plans the same keys again, and
Dagster never launches a run key twice. The ledger's sha256 check is the second guard.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import orjson

from atr_pipeline.layouts.spec import MappingSpec

# Partition dimensions of the ingest job (a Dagster MultiPartitionsDefinition).
MONTH_DIMENSION = "month"
SOURCE_DIMENSION = "source"
# Run tags that tell the landing step which remote file to download.
TAG_REMOTE_FILE = "atr/remote_file"
TAG_SOURCE_ID = "atr/source_id"
TAG_REMOTE_SIZE = "atr/remote_size"
TAG_REMOTE_MTIME = "atr/remote_mtime"
# Requested run keys are kept this long after their file leaves the inbox (archived/deleted),
# so a file put back unchanged within that window is not requested again.
REQUESTED_RETENTION = timedelta(days=45)
CURSOR_VERSION = 1


@dataclass(frozen=True, order=True)
class RemoteFile:
    name: str
    size: int
    mtime: int  # seconds since the epoch, as SFTP v3 reports it


@dataclass(frozen=True)
class Observation:
    size: int
    mtime: int
    polls: int  # consecutive polls that saw exactly this size and mtime
    first_seen: str  # ISO time of the first poll that saw this size and mtime


@dataclass
class SensorCursor:
    """The sensor's whole state, stored as JSON in the Dagster cursor."""

    observations: dict[str, Observation] = field(default_factory=dict)  # by file name
    requested: dict[str, str] = field(default_factory=dict)  # run key -> ISO time last listed

    def to_json(self) -> str:
        # Sorted keys: the same state always serialises to the same cursor string.
        return orjson.dumps(
            {
                "v": CURSOR_VERSION,
                "observations": {n: [o.size, o.mtime, o.polls, o.first_seen] for n, o in self.observations.items()},
                "requested": self.requested,
            },
            option=orjson.OPT_SORT_KEYS,
        ).decode()

    @classmethod
    def from_json(cls, text: str | None) -> SensorCursor:
        """Parse a cursor; an empty or unreadable one starts fresh (run keys still dedup)."""
        if not text:
            return cls()
        try:
            data = orjson.loads(text)
            if data.get("v") != CURSOR_VERSION:
                return cls()
            obs = {n: Observation(int(s), int(m), int(p), str(f)) for n, (s, m, p, f) in data["observations"].items()}
            return cls(obs, {str(k): str(v) for k, v in data["requested"].items()})
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return cls()


@dataclass(frozen=True)
class PlannedRun:
    run_key: str
    file: RemoteFile
    source_id: str
    month: date

    @property
    def partition_keys(self) -> dict[str, str]:
        return {MONTH_DIMENSION: self.month.isoformat(), SOURCE_DIMENSION: self.source_id}

    @property
    def tags(self) -> dict[str, str]:
        return {
            TAG_REMOTE_FILE: self.file.name,
            TAG_SOURCE_ID: self.source_id,
            TAG_REMOTE_SIZE: str(self.file.size),
            TAG_REMOTE_MTIME: str(self.file.mtime),
        }


def run_key_for(file: RemoteFile) -> str:
    """Stable across cursors and processes: a hash of (name, size, mtime)."""
    digest = hashlib.sha256(f"{file.name}\x00{file.size}\x00{file.mtime}".encode()).hexdigest()
    return f"sftp-{digest[:24]}"


def _ready_mapping(name: str, mappings: dict[str, MappingSpec]) -> tuple[MappingSpec, date] | None:
    hits = [s for _, s in sorted(mappings.items()) if s.file.match(name)]
    if len(hits) != 1 or hits[0].file.month_from != "filename":
        return None
    month = hits[0].month_from_name(name)
    return (hits[0], month) if month else None


def plan_runs(
    listing: list[RemoteFile],
    cursor: SensorCursor,
    mappings: dict[str, MappingSpec],
    *,
    now: datetime,
    stable_polls: int = 2,
    done_marker_suffix: str | None = None,
) -> tuple[list[PlannedRun], SensorCursor]:
    """One poll: which files to request now, and the cursor for the next poll.

    The input cursor is not modified. Runs come out sorted by file name.
    """
    if stable_polls < 1:
        raise ValueError("stable_polls must be at least 1")
    stamp = now.isoformat()
    names = {f.name for f in listing}
    observations: dict[str, Observation] = {}
    requested = {k: v for k, v in cursor.requested.items() if now - datetime.fromisoformat(v) <= REQUESTED_RETENTION}
    runs: list[PlannedRun] = []

    for f in sorted(listing):
        if done_marker_suffix and f.name.endswith(done_marker_suffix):
            continue
        prev = cursor.observations.get(f.name)
        if prev and (prev.size, prev.mtime) == (f.size, f.mtime):
            obs = Observation(f.size, f.mtime, prev.polls + 1, prev.first_seen)
        else:
            obs = Observation(f.size, f.mtime, 1, stamp)
        observations[f.name] = obs
        target = _ready_mapping(f.name, mappings)
        if target is None:
            continue
        ready = (f.name + done_marker_suffix in names) if done_marker_suffix else obs.polls >= stable_polls
        key = run_key_for(f)
        if key in requested:
            requested[key] = stamp
            continue
        if ready:
            spec, month = target
            runs.append(PlannedRun(key, f, spec.source_id, month))
            requested[key] = stamp
    # Observations of files no longer listed are dropped: a file that comes back starts over.
    return runs, SensorCursor(observations, dict(sorted(requested.items())))
