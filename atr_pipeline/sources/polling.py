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
consecutive polls spanning at least ``quiet_seconds`` (default 15 min: an upload that pauses
for minutes is not taken for finished), or, when the payer writes done markers, once
``<name><suffix>`` exists. Files judged but not requested (no valid month, no partition for
their month, an unsafe name) are reported once through ``SensorCursor.reported`` and never
stop the files beside them.

The run key hashes (name, size, mtime): a lost or reset cursor plans the same keys again, and
Dagster never launches a run key twice. The ledger's sha256 check is the second guard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import orjson

from atr_pipeline.errors import FileRefused
from atr_pipeline.layouts.spec import MappingSpec
from atr_pipeline.sources.landing import check_name

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
# The stability defaults (one place: the sensor, the pull and the docs use these).
DEFAULT_STABLE_POLLS = 3
DEFAULT_QUIET_SECONDS = 900


def printable(name: str) -> str:
    """A file name safe to print or log: control and other unprintable characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


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
    reported: dict[str, str] = field(default_factory=dict)  # run key -> why it is not requested (said once)
    # After a refused login (or another error retrying cannot fix): no new login before this ISO
    # time, so sensor ticks do not walk a payer's account into its lockout. [until, reason]
    paused: list[str] | None = None

    def to_json(self) -> str:
        # Sorted keys: the same state always serialises to the same cursor string.
        return orjson.dumps(
            {
                "v": CURSOR_VERSION,
                "observations": {n: [o.size, o.mtime, o.polls, o.first_seen] for n, o in self.observations.items()},
                "requested": self.requested,
                "reported": self.reported,
                **({"paused": self.paused} if self.paused else {}),
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
            paused = data.get("paused")
            return cls(obs, {str(k): str(v) for k, v in data["requested"].items()},
                       {str(k): str(v) for k, v in data.get("reported", {}).items()},
                       [str(paused[0]), str(paused[1])] if paused else None)
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


def observe(listing: list[RemoteFile], previous: dict[str, Observation], *, now: datetime) -> dict[str, Observation]:
    """This poll's observation of each listed file (files no longer listed are dropped)."""
    stamp = now.isoformat()
    out: dict[str, Observation] = {}
    for f in sorted(listing):
        prev = previous.get(f.name)
        if prev and (prev.size, prev.mtime) == (f.size, f.mtime):
            out[f.name] = Observation(f.size, f.mtime, prev.polls + 1, prev.first_seen)
        else:
            out[f.name] = Observation(f.size, f.mtime, 1, stamp)
    return out


def is_quiet(obs: Observation, *, now: datetime, stable_polls: int, quiet_seconds: float) -> bool:
    """Unchanged over ``stable_polls`` polls (this one included) spanning ``quiet_seconds``."""
    quiet_for = (now - datetime.fromisoformat(obs.first_seen)).total_seconds()
    return obs.polls >= stable_polls and quiet_for >= quiet_seconds


def waiting_reason(obs: Observation, *, now: datetime, stable_polls: int, quiet_seconds: float) -> str:
    quiet_for = (now - datetime.fromisoformat(obs.first_seen)).total_seconds()
    return (f"unchanged for {quiet_for:.0f} s over {obs.polls} poll(s); needs {quiet_seconds:g} s over "
            f"{stable_polls} poll(s)")


def _target(name: str, mappings: dict[str, MappingSpec]) -> tuple[MappingSpec, date] | str | None:
    """(mapping, month) for a file the sensor can request; a reason when it never can; None
    when no mapping (or several) matches: such files are not the sensor's business."""
    hits = [s for _, s in sorted(mappings.items()) if s.file.match(name)]
    if len(hits) != 1:
        return None
    spec = hits[0]
    try:
        check_name(name)
    except FileRefused as exc:
        return exc.reason
    if spec.file.month_from != "filename":
        return None  # the month is in the header: land it with atr sftp-pull or the local inbox
    month = spec.month_from_name(name)
    if month is None:
        return f"the month in the name is not a valid month (mapping {spec.source_id})"
    return spec, month


def plan_runs(
    listing: list[RemoteFile],
    cursor: SensorCursor,
    mappings: dict[str, MappingSpec],
    *,
    now: datetime,
    stable_polls: int = DEFAULT_STABLE_POLLS,
    quiet_seconds: float = DEFAULT_QUIET_SECONDS,
    done_marker_suffix: str | None = None,
    partition_exists: Callable[[PlannedRun], bool] | None = None,
) -> tuple[list[PlannedRun], SensorCursor]:
    """One poll: which files to request now, and the cursor for the next poll.

    The input cursor is not modified. Runs come out sorted by file name. A file that is ready
    but cannot be requested (bad month, a month before the mapping's ``first_month``, unsafe name,
    ``partition_exists`` says no) goes into the cursor's ``reported`` with the reason, and is judged
    again on later polls (a month's partition may appear later); the files beside it are requested
    as usual.
    """
    if stable_polls < 1:
        raise ValueError("stable_polls must be at least 1")
    stamp = now.isoformat()
    names = {f.name for f in listing}
    requested = {k: v for k, v in cursor.requested.items() if now - datetime.fromisoformat(v) <= REQUESTED_RETENTION}
    reported: dict[str, str] = {}
    runs: list[PlannedRun] = []
    files = [f for f in listing if not (done_marker_suffix and f.name.endswith(done_marker_suffix))]
    observations = observe(files, cursor.observations, now=now)

    for f in sorted(files):
        obs = observations[f.name]
        target = _target(f.name, mappings)
        if target is None:
            continue
        key = run_key_for(f)
        if key in requested:
            requested[key] = stamp
            continue
        ready = (f.name + done_marker_suffix in names) if done_marker_suffix else is_quiet(
            obs, now=now, stable_polls=stable_polls, quiet_seconds=quiet_seconds)
        if not ready:
            continue
        if isinstance(target, str):
            reported[key] = f"{printable(f.name)}: {target}; not requested"
            continue
        spec, month = target
        if spec.first_month is not None and month < spec.first_month:
            reported[key] = (f"{printable(f.name)}: month {month:%Y-%m} is before {spec.source_id}'s first_month "
                             f"{spec.first_month:%Y-%m} (its mapping); not requested until first_month covers it")
            continue
        run = PlannedRun(key, f, spec.source_id, month)
        if partition_exists is not None and not partition_exists(run):
            reported[key] = (f"{printable(f.name)}: month {month:%Y-%m} has no partition (before the first or after "
                             f"the last month of the job); not requested until it has one")
            continue
        runs.append(run)
        requested[key] = stamp
    return runs, SensorCursor(observations, dict(sorted(requested.items())), dict(sorted(reported.items())))


def new_reports(before: SensorCursor, after: SensorCursor) -> list[str]:
    """Reasons first reported by this poll (each problem file is reported once, not every tick)."""
    return [reason for key, reason in after.reported.items() if key not in before.reported]
