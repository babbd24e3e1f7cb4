"""Is what we loaded still on the server? Checks of a checkpoint's claims and of a whole export.

In:  a FHIR server (``ServerReader``: GETs with the load's auth), a ``Checkpoint`` or an export folder.
Out: ``lost_types``: per type whose claims do not hold, a sentence without PHI (counts and
     keyed-hash ids only); ``compare_export``: a ``TypeDifference`` per type in the manifest.
Refused: a server that stops answering (``ServerUnreachable``).

What a claim check looks at, per type the checkpoint says was accepted: the server's count of that
type is at least the claimed count; a sample of the claimed ids (first and last of evenly spaced
chunks) is there; every claimed Group is there with the export's number of members. Cheap enough
to run before every resume and after every load: a few requests per type plus one GET per Group.
``compare_export`` (``atr load --verify``) asks for every id of the export, 50 per count request.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from atr_pipeline.publish.checkpoint import Checkpoint
from atr_pipeline.publish.export import Manifest, iter_ndjson
from atr_pipeline.publish.group_split import split_group
from atr_pipeline.publish.preflight import (
    PREFLIGHT_TIMEOUT,
    ServerUnreachable,
    describe_transport_error,
)
from atr_pipeline.publish.server import ServerConfig
from atr_pipeline.systems import LOAD_ORDER

IDS_PER_SEARCH = 50  # ~1.9 kB of query string: well inside any server's URL limit
_ATTEMPTS = 3


class ServerReader:
    """Read-only requests with a few retries; ``ServerUnreachable`` when the server stays away."""

    def __init__(self, config: ServerConfig, auth: httpx.Auth | None):
        self.config = config
        timeout = httpx.Timeout(min(config.timeouts.connect, PREFLIGHT_TIMEOUT), read=config.timeouts.read, write=PREFLIGHT_TIMEOUT, pool=PREFLIGHT_TIMEOUT)
        self.client = httpx.Client(auth=auth, timeout=timeout, verify=config.verify_tls, headers={"Accept": "application/fhir+json"})
        self.requests = 0

    def close(self) -> None:
        self.client.close()

    def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        for attempt in range(1, _ATTEMPTS + 1):
            self.requests += 1
            try:
                response = self.client.get(f"{self.config.base_url}/{path}", params=params)
            except httpx.HTTPError as exc:
                if attempt == _ATTEMPTS:
                    raise ServerUnreachable(f"cannot reach the FHIR server at {self.config.host_port}: {describe_transport_error(exc)}") from None
            else:
                if response.status_code < 500 and response.status_code != 429 or attempt == _ATTEMPTS:
                    return response
            time.sleep(0.5 * attempt)
        raise AssertionError("unreachable")  # the loop returns or raises

    def count(self, resource_type: str) -> int:
        response = self.get(resource_type, {"_summary": "count"})
        if response.status_code != 200:
            raise ServerUnreachable(f"{resource_type}?_summary=count answered HTTP {response.status_code} at {self.config.host_port}")
        return int(orjson.loads(response.content).get("total", 0))

    def _count_ids(self, resource_type: str, ids: list[str]) -> int:
        response = self.get(resource_type, {"_id": ",".join(ids), "_summary": "count"})
        if response.status_code != 200:
            raise ServerUnreachable(f"{resource_type}?_id=... answered HTTP {response.status_code} at {self.config.host_port}")
        return int(orjson.loads(response.content).get("total", 0))

    def present(self, resource_type: str, ids: list[str]) -> set[str]:
        """The subset of ``ids`` the server holds: a ``_summary=count`` search per 50 ids, then one per
        id of a batch that comes up short. Counts, never the resources: a search answer would carry
        every matching Group whole (tens of MB each; ``_elements`` is not honoured everywhere)."""
        found: set[str] = set()
        for start in range(0, len(ids), IDS_PER_SEARCH):
            batch = ids[start : start + IDS_PER_SEARCH]
            if self._count_ids(resource_type, batch) >= len(set(batch)):
                found.update(batch)
                continue
            found.update(rid for rid in batch if self._count_ids(resource_type, [rid]) > 0)
        return found

    def group_members(self, group_id: str) -> int | None:
        """Members of a stored Group (None when it is not there); the answer is byte-scanned, not parsed."""
        response = self.get(f"Group/{group_id}")
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise ServerUnreachable(f"Group/{group_id} answered HTTP {response.status_code} at {self.config.host_port}")
        return len(split_group(response.content))


def export_group_members(export_dir: Path, manifest: Manifest, wanted: set[str] | None = None) -> dict[str, int]:
    """Group id -> member count in the export (only ``wanted`` ids when given); one line in memory at a time."""
    out: dict[str, int] = {}
    for line in iter_ndjson(export_dir, "Group", manifest):
        split = split_group(line)
        gid = orjson.loads(split.head).get("id")
        if wanted is None or gid in wanted:
            out[gid] = len(split)
    return out


def lost_types(reader: ServerReader, checkpoint: Checkpoint, group_members: dict[str, int]) -> dict[str, str]:
    """Types whose checkpointed claims the server does not hold now -> what is missing, in words."""
    lost: dict[str, str] = {}
    for resource_type in [t for t in LOAD_ORDER if t in checkpoint.claimed_types()]:
        claimed = checkpoint.claimed_count(resource_type)
        if not claimed:
            continue
        on_server = reader.count(resource_type)
        if on_server < claimed:
            lost[resource_type] = f"{resource_type}: {on_server} on the server, {claimed} loaded before"
            continue
        sample = checkpoint.sample_ids(resource_type, limit=None if resource_type == "Group" else 20)
        missing = sorted(set(sample) - reader.present(resource_type, sample))
        if missing:
            lost[resource_type] = f"{resource_type}: {len(missing)} of {len(sample)} sampled ids missing (e.g. {missing[0]})"
            continue
        if resource_type == "Group":
            for gid in sample:
                expected = group_members.get(gid)
                if expected is None:
                    continue  # not asked for (see _verify_after_load in the loader)
                found = reader.group_members(gid)
                if found != expected:
                    lost[resource_type] = f"Group/{gid}: {found if found is not None else 'no'} members on the server, {expected} in the export"
                    break
    return lost


@dataclass
class TypeDifference:
    """One type of an export compared with a server (``atr load --verify``)."""

    resource_type: str
    in_export: int = 0
    present: int = 0  # of the export's ids, how many the server holds
    missing_ids: list[str] = field(default_factory=list)  # the first few, for the message
    groups_differing: list[str] = field(default_factory=list)  # "Group/<id>: 3 members on the server, 5 in the export"

    @property
    def missing(self) -> int:
        return self.in_export - self.present

    @property
    def ok(self) -> bool:
        return self.missing == 0 and not self.groups_differing


def _ids_of(export_dir: Path, manifest: Manifest, resource_type: str) -> Iterator[tuple[str, int | None]]:
    for line in iter_ndjson(export_dir, resource_type, manifest):
        if resource_type == "Group":
            split = split_group(line)
            yield orjson.loads(split.head).get("id"), len(split)
        else:
            yield orjson.loads(line).get("id"), None


def _batches(items: Iterable[tuple[str, int | None]], size: int) -> Iterator[list[tuple[str, int | None]]]:
    batch: list[tuple[str, int | None]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def compare_export(reader: ServerReader, export_dir: Path, manifest: Manifest) -> list[TypeDifference]:
    """Every id of every type of the export looked up on the server; Groups also by member count."""
    out = []
    for resource_type in [t for t in LOAD_ORDER if manifest.files_of(t)]:
        diff = TypeDifference(resource_type)
        for batch in _batches(_ids_of(export_dir, manifest, resource_type), IDS_PER_SEARCH):
            ids = [i for i, _ in batch]
            present = reader.present(resource_type, ids)
            diff.in_export += len(ids)
            diff.present += len(present)
            diff.missing_ids.extend(i for i in ids if i not in present and len(diff.missing_ids) < 5)
            for gid, members in batch:
                if members is not None and gid in present:
                    found = reader.group_members(gid)
                    if found != members:
                        diff.groups_differing.append(f"Group/{gid}: {found} members on the server, {members} in the export")
        out.append(diff)
    return out
