"""Load a bulk export into a FHIR server by PUT, in dependency order, resumably.

In:  an export folder written by ``export.write_bulk_export`` (manifest + NDJSON, plain or gzipped,
     split or not) and a ``ServerConfig``.
Out: every resource PUT to ``<base>/<Type>/<id>`` (batch or transaction Bundles of ``bundle_size``
     entries, cut earlier at ``max_request_bytes``), types in ``systems.LOAD_ORDER`` with each type
     finished before the next starts; a ``LoadReport`` also written as ``<export>/load_report.json``;
     a checkpoint under ``<export>/.load_state/`` so a re-run skips what the server already accepted.
Refused: lines that are not a resource of the file's type with a valid FHIR id (reported as failed
     with reason ``invalid-line``, never sent); a folder without a manifest (AtrError).

Retries: 408, 409, 425, 429, 5xx, timeouts and dropped connections, with exponential backoff and
jitter, honouring Retry-After; in batch mode only the entries that failed are sent again. Each
request gets ``max_attempts``; all sleeps together get ``max_total_retry_seconds``, after which the
load stops and the report says so. 401/403 stop the load at once (credentials will not heal).

Large Groups (more than ``max_group_members_per_request`` members, or a line above the request size
limit): PUT the Group with its first chunk of members, then grow it with JSON Patch
(``add`` to ``/member/-``) one chunk at a time, each PATCH guarded by ``If-Match`` on the version the
previous step produced. A PATCH is not idempotent, so after any failed or unanswered PATCH the
loader reads the Group back and compares the member count (and the last member) before deciding
whether the chunk still has to be sent. Only one Group line is held in memory at a time; its members
are kept as encoded bytes, not Python objects.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import httpx
import orjson

from atr_pipeline.publish.auth import auth_from_env
from atr_pipeline.publish.checkpoint import Checkpoint
from atr_pipeline.publish.export import (
    Manifest,
    iter_ndjson,
    manifest_digest,
    read_manifest,
)
from atr_pipeline.publish.group_split import GroupSplit, split_group
from atr_pipeline.publish.integrity import check_files
from atr_pipeline.publish.preflight import describe_transport_error, preflight
from atr_pipeline.publish.report import (
    FailedEntry,
    LoadReport,
    SanitizedIssue,
    TypeCounts,
    sanitize_outcome,
)
from atr_pipeline.publish.server import ServerConfig
from atr_pipeline.publish.verify import ServerReader, export_group_members, lost_types
from atr_pipeline.systems import LOAD_ORDER

REPORT_NAME = "load_report.json"
FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403})
MAX_FAILED_LISTED = 10_000
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_VERSION_IN_BODY = re.compile(rb'"versionId"\s*:\s*"([^"]+)"')
_BUNDLE_ENTRY_OVERHEAD = 96  # bytes of request wrapper per entry, for the size cut
_KEEP_OF_PATCH_ANSWER = 256 * 1024  # enough for meta.versionId (or an OperationOutcome) of a Group answer
_GROUP_ALONE_BYTES = 256 * 1024


def _entity(member: bytes) -> bytes:
    return orjson.dumps(orjson.loads(member).get("entity"))


@dataclass(frozen=True)
class LoadProgress:
    """Sent to the ``progress`` callback after each chunk the server answered (``tick`` False) and
    every ``progress_interval`` seconds whatever happens (``tick`` True), so a stalled load shows."""

    resource_type: str
    chunk_index: int
    entries: int
    done: int  # entries of this type handled so far (confirmed, failed, skipped)
    total: int
    confirmed: int = 0  # entries of this type the server answered success for, or loaded before
    failed: int = 0
    retrying: int = 0  # requests waiting to be sent again right now (all types)
    last_error: str = ""
    tick: bool = False
    loaded_total: int = 0  # confirmed entries over all types
    grand_total: int = 0


@dataclass
class _Entry:
    resource_type: str
    id: str
    body: bytes


@dataclass
class _LargeGroup:
    id: str
    split: GroupSplit  # the line itself plus member byte ranges; members are sliced per request

    @property
    def head(self) -> bytes:
        """The Group JSON without "member", closing brace removed, ready for ',"member":[...]}'."""
        return self.split.head.rstrip()[:-1]


@dataclass(frozen=True)
class _Answer:
    """A server answer with a body that may have been cut to a bounded prefix."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    def json(self) -> object:
        return orjson.loads(self.content)


@dataclass
class _Chunk:
    resource_type: str
    index: int
    entries: list[_Entry] = field(default_factory=list)
    group: _LargeGroup | None = None
    invalid: list[FailedEntry] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.entries) + (1 if self.group else 0)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries] + ([self.group.id] if self.group else [])


@dataclass
class _ChunkResult:
    outcomes: dict[str, int] = field(default_factory=dict)  # created/updated/unchanged -> n
    failed: list[FailedEntry] = field(default_factory=list)
    group_patches: int = 0


class _Stopped(Exception):
    """Raised inside a worker when the load has been stopped (budget spent, fatal status)."""


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _status_code(text: str | None) -> int | None:
    match = re.match(r"\s*(\d{3})", text or "")
    return int(match.group(1)) if match else None


def _is_unchanged(outcome: object) -> bool:
    """Servers that tell: HAPI's SUCCESSFUL_UPDATE_NO_CHANGE, Medplum-style not-modified."""
    text = orjson.dumps(outcome).lower() if outcome else b""
    return b"no_change" in text or b"not-modified" in text or b"notmodified" in text


# Elements a server sets on its own: never a reason to write again.
_SERVER_META = frozenset({"versionId", "lastUpdated", "source", "author", "project", "compartment", "account", "accounts", "onBehalfOf"})


def _comparable(resource: dict) -> dict:
    """The resource without server-managed meta, for "is the stored one what we would send?"."""
    out = {k: v for k, v in resource.items() if k != "meta"}
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in _SERVER_META}
    if meta:
        out["meta"] = meta
    return out


def _same_group(ours: GroupSplit, theirs: GroupSplit) -> bool:
    """Member by member, so neither Group is ever parsed whole (each can be tens of MB)."""
    if len(ours) != len(theirs) or _comparable(orjson.loads(ours.head)) != _comparable(orjson.loads(theirs.head)):
        return False
    return all(orjson.loads(ours.member(i)) == orjson.loads(theirs.member(i)) for i in range(len(ours)))


def _outcome_of_entry(answer: dict) -> object:
    """A batch-response entry's OperationOutcome: in ``response.outcome`` or, on some servers, ``resource``."""
    outcome = (answer.get("response") or {}).get("outcome")
    if outcome:
        return outcome
    resource = answer.get("resource") or {}
    return resource if resource.get("resourceType") == "OperationOutcome" else None


# -- planning: NDJSON lines -> chunks ---------------------------------------------------------------


def _plan(lines: Iterator[bytes], resource_type: str, config: ServerConfig) -> Iterator[_Chunk]:
    index = 0
    current = _Chunk(resource_type, index)
    current_bytes = 0
    for line_number, line in enumerate(lines, start=1):
        split = None
        try:
            if resource_type == "Group":
                # Groups can be tens of MB: read the head and member ranges, never the member objects.
                split = split_group(line)
                resource = orjson.loads(split.head)
            else:
                resource = orjson.loads(line)
            rid = resource.get("id") if isinstance(resource, dict) else None
            rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        except (orjson.JSONDecodeError, ValueError):
            rid = rtype = None
            resource = None
        if rtype != resource_type or not isinstance(rid, str) or not _FHIR_ID.match(rid):
            current.invalid.append(
                FailedEntry(resource_type=resource_type, id=f"line-{line_number}", reason="invalid-line", attempts=0)
            )
            continue
        if split is not None and _goes_alone(len(split), len(line), config):
            if current.entries or current.invalid:
                yield current
                index += 1
            yield _Chunk(resource_type, index, group=_LargeGroup(rid, split))
            index += 1
            current, current_bytes = _Chunk(resource_type, index), 0
            continue
        del resource, split
        entry_bytes = len(line) + _BUNDLE_ENTRY_OVERHEAD
        if current.entries and (len(current.entries) >= config.bundle_size or current_bytes + entry_bytes > config.max_request_bytes):
            yield current
            index += 1
            current, current_bytes = _Chunk(resource_type, index), 0
        current.entries.append(_Entry(resource_type, rid, line))
        current_bytes += entry_bytes
    if current.entries or current.invalid:
        yield current


def _goes_alone(members: int, line_bytes: int, config: ServerConfig) -> bool:
    """Groups above ``_GROUP_ALONE_BYTES`` are PUT on their own (then PATCHed if still too big):
    a batch answer echoes each resource, and parsing a multi-MB Group answer costs ~10x its size."""
    if members < 1:
        return False
    return line_bytes > _GROUP_ALONE_BYTES or members > config.max_group_members_per_request or line_bytes > config.max_request_bytes


def _bundle_bytes(kind: str, entries: list[_Entry]) -> bytes:
    parts = [b'{"resourceType":"Bundle","type":"', kind.encode(), b'","entry":[']
    for i, entry in enumerate(entries):
        if i:
            parts.append(b",")
        url = f"{entry.resource_type}/{entry.id}".encode()
        parts.append(b'{"request":{"method":"PUT","url":"' + url + b'"},"resource":' + entry.body + b"}")
    parts.append(b"]}")
    return b"".join(parts)


def _member_slices(group: _LargeGroup, config: ServerConfig) -> list[tuple[int, int]]:
    """[start, end) ranges of members per request, cut by count and by bytes."""
    limit_bytes = max(1024, config.max_request_bytes - len(group.head) - 64)
    slices = []
    start = 0
    size = 0
    for i, (member_start, member_end) in enumerate(group.split.spans):
        cost = member_end - member_start + 40  # the JSON Patch op wrapper
        if i > start and (i - start >= config.max_group_members_per_request or size + cost > limit_bytes):
            slices.append((start, i))
            start, size = i, 0
        size += cost
    slices.append((start, len(group.split)))
    return slices


# -- the run ---------------------------------------------------------------------------------------


class _Run:
    def __init__(self, config: ServerConfig, auth: httpx.Auth | None, report: LoadReport):
        self.config = config
        self.auth = auth
        self.report = report
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._slept = 0.0
        self._unreachable_since: float | None = None  # first transport failure with no answer since
        self.retrying = 0
        self.current_type = ""
        self.resume_hint = "re-run the same command to resume"

    # http plumbing
    def client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            t = self.config.timeouts
            client = httpx.Client(
                auth=self.auth,
                timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool),
                verify=self.config.verify_tls,
                limits=httpx.Limits(max_connections=2, max_keepalive_connections=2),
                headers={"Accept": FHIR_JSON},
            )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def request(
        self,
        method: str,
        path: str,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        max_body: int | None = None,
        read: bool = False,
    ) -> _Answer | str:
        """One attempt: the answer, or a retry reason string for transport failures.

        ``max_body`` keeps only that many bytes of the body (the rest is read and dropped), so a
        server that echoes a 60 MB Group after each PATCH does not cost 60 MB per request.
        """
        if self.stop.is_set():
            raise _Stopped
        url = f"{self.config.base_url}/{path}" if path else self.config.base_url
        with self._lock:
            if read or method == "GET":
                self.report.reads += 1
            else:
                self.report.requests += 1
        try:
            with self.client().stream(method, url, content=content, headers=headers) as response:
                self._unreachable_since = None  # any answer, even an error status, means it is there
                if max_body is None:
                    body = response.read()
                else:
                    kept = bytearray()
                    for part in response.iter_bytes():
                        if len(kept) < max_body:
                            kept += part[: max_body - len(kept)]
                    body = bytes(kept)
                return _Answer(response.status_code, response.headers, body)
        except httpx.TimeoutException as exc:
            self._no_answer(exc)
            return "timeout"
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            self._no_answer(exc)
            return "connection"

    def _no_answer(self, exc: BaseException) -> None:
        with self._lock:
            self.report.last_error = describe_transport_error(exc)
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()

    def fatal(self, status: int) -> None:
        with self._lock:
            if not self.stop.is_set():
                self.report.stop_reason = f"http-{status}: the server refused the credentials; fix auth and re-run"
            self.report.last_error = f"http-{status}"
            self.stop.set()

    def backoff(self, attempt: int, reason: str, retry_after: float | None) -> None:
        """Sleep before attempt ``attempt + 1``; raises _Stopped when the budget is spent or the
        server has not answered anything for ``max_unreachable_seconds``."""
        policy = self.config.retry
        delay = min(policy.max_backoff, policy.initial_backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            # Wait at least what the server asked (capped), never less than our own backoff.
            delay = max(delay, min(retry_after, policy.max_retry_after) * random.uniform(1.0, 1.1))
        with self._lock:
            if not reason.endswith(("connection", "timeout")):
                self.report.last_error = reason
            down = self._unreachable_since
            if down is not None and time.monotonic() - down >= policy.max_unreachable_seconds:
                self._stop_with(
                    f"the FHIR server at {self.config.host_port} has not answered for {policy.max_unreachable_seconds:g} s "
                    f"({self.report.last_error}); stopped with the checkpoint"
                )
            if down is not None:
                # Never sleep past the fail-fast deadline: wake up for one last try just before it.
                delay = max(0.0, min(delay, down + policy.max_unreachable_seconds - time.monotonic()))
            if self._slept + delay > policy.max_total_retry_seconds:
                self._stop_with(
                    f"retry budget exhausted: {policy.max_total_retry_seconds:g} s of backoff spent (last failure: {reason})"
                )
            self._slept += delay
            self.report.retries += 1
            self.report.retries_by_reason[reason] = self.report.retries_by_reason.get(reason, 0) + 1
            self.report.retry_sleep_seconds = round(self._slept, 3)
            self.retrying += 1
        try:
            if self.stop.wait(delay):
                raise _Stopped
        finally:
            with self._lock:
                self.retrying -= 1

    def _stop_with(self, why: str) -> NoReturn:
        """Stop every worker; the first reason is the one reported, with how to resume."""
        if not self.stop.is_set():
            self.report.stop_reason = f"{why}; {self.resume_hint}"
        self.stop.set()
        raise _Stopped

    def _unchanged_ids(self, resource_type: str, entries: list[_Entry]) -> set[str]:
        """Ids whose stored resource equals what we would PUT, read with one batch of GETs by id
        (a read by id is the cheapest thing a server does; an ``_id`` search is a scan on some).
        Any trouble (an error status, no answer) gives an empty set: the entries are then PUT."""
        parts = [b'{"resourceType":"Bundle","type":"batch","entry":[']
        parts.append(b",".join(b'{"request":{"method":"GET","url":"' + f"{resource_type}/{e.id}".encode() + b'"}}' for e in entries))
        parts.append(b"]}")
        response = self.request("POST", "", b"".join(parts), {"Content-Type": FHIR_JSON}, read=True)
        if not isinstance(response, _Answer) or response.status_code != 200:
            return set()
        try:
            body = response.json()
        except ValueError:
            return set()
        if not isinstance(body, dict):  # valid JSON but not a Bundle
            return set()
        answers = body.get("entry") or []
        if len(answers) != len(entries):
            return set()
        same = set()
        for entry, answer in zip(entries, answers, strict=True):
            theirs = (answer or {}).get("resource")
            if (
                _status_code(((answer or {}).get("response") or {}).get("status")) == 200
                and isinstance(theirs, dict)
                and theirs.get("id") == entry.id
                and _comparable(theirs) == _comparable(orjson.loads(entry.body))
            ):
                same.add(entry.id)
        return same

    # one bundle
    def send_bundle(self, chunk: _Chunk) -> _ChunkResult:
        result = _ChunkResult()
        pending = list(chunk.entries)
        if self.config.skip_unchanged:
            try:
                same = self._unchanged_ids(chunk.resource_type, pending)
            except _Stopped:
                self._fail(result, pending, None, "stopped", 0)
                return result
            if same:
                result.outcomes["unchanged"] = len(same)
                pending = [e for e in pending if e.id not in same]
        attempt = 0
        kind = self.config.mode
        last_status: int | None = None
        while pending:
            attempt += 1
            retry_reason, retry_after, retry_entries = "", None, []
            try:
                response = self.request("POST", "", _bundle_bytes(kind, pending), {"Content-Type": FHIR_JSON})
            except _Stopped:
                self._fail(result, pending, None, "stopped", attempt - 1)
                return result
            if isinstance(response, str):
                retry_reason, retry_entries = response, pending
            elif response.status_code in FATAL_STATUS:
                self.fatal(response.status_code)
                self._fail(result, pending, response.status_code, f"http-{response.status_code}", attempt, self._outcome(response))
                return result
            elif response.status_code in RETRYABLE_STATUS or response.status_code >= 500:
                retry_reason, retry_entries = f"http-{response.status_code}", pending
                last_status = response.status_code
                retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            elif response.status_code >= 400:
                self._fail(result, pending, response.status_code, f"http-{response.status_code}", attempt, self._outcome(response))
                return result
            else:
                retry_entries, retry_reason = self._read_bundle_response(response, pending, result, attempt, kind)
            if not retry_entries:
                return result
            if attempt >= self.config.retry.max_attempts:
                self._fail(result, retry_entries, last_status, "max-attempts", attempt, reason_detail=retry_reason)
                return result
            try:
                self.backoff(attempt, retry_reason, retry_after)
            except _Stopped:
                self._fail(result, retry_entries, None, "stopped", attempt, reason_detail=retry_reason)
                return result
            pending = retry_entries
        return result

    def _read_bundle_response(self, response: _Answer, pending: list[_Entry], result: _ChunkResult, attempt: int, kind: str) -> tuple[list[_Entry], str]:
        try:
            body = response.json()
        except ValueError:
            return pending, "invalid-response"
        if not isinstance(body, dict):  # valid JSON but not a Bundle
            return pending, "invalid-response"
        entries = body.get("entry") or []
        if len(entries) != len(pending):
            return pending, "invalid-response"
        retry: list[_Entry] = []
        reason = ""
        for entry, answer in zip(pending, entries, strict=True):
            answer_response = (answer or {}).get("response") or {}
            status = _status_code(answer_response.get("status"))
            outcome = _outcome_of_entry(answer or {})
            if status is None:
                retry.append(entry)
                reason = "invalid-response"
            elif status == 304 or (status == 200 and _is_unchanged(outcome)):
                result.outcomes["unchanged"] = result.outcomes.get("unchanged", 0) + 1
            elif status == 201:
                result.outcomes["created"] = result.outcomes.get("created", 0) + 1
            elif 200 <= status < 300:
                result.outcomes["updated"] = result.outcomes.get("updated", 0) + 1
            elif status in RETRYABLE_STATUS or status >= 500:
                retry.append(entry)
                reason = f"http-{status}"
            else:
                self._fail(result, [entry], status, f"http-{status}", attempt, outcome)
        return retry, reason

    def _outcome(self, response: _Answer) -> object:
        try:
            return response.json()
        except ValueError:
            return None

    def _fail(self, result: _ChunkResult, entries: list[_Entry], status: int | None, reason: str, attempts: int,
              outcome: object = None, reason_detail: str = "") -> None:
        issues = sanitize_outcome(outcome)
        if reason_detail and not issues:
            issues = [SanitizedIssue(severity="error", code="transient", details=[f"last-failure|{reason_detail}"])]
        for entry in entries:
            result.failed.append(
                FailedEntry(resource_type=entry.resource_type, id=entry.id, status=status, reason=reason, attempts=attempts, issues=issues)
            )

    # one large Group
    def send_large_group(self, chunk: _Chunk) -> _ChunkResult:
        assert chunk.group is not None
        group = chunk.group
        result = _ChunkResult()
        entry = _Entry("Group", group.id, b"")
        slices = _member_slices(group, self.config)
        try:
            if self.config.skip_unchanged and self._group_unchanged(group):
                result.outcomes["unchanged"] = 1
                return result
            for _restart in range(2):
                status, version = self._put_group_head(group, slices[0], result)
                if status is None:
                    return result
                patched = self._patch_members(group, slices, version, result)
                if patched:
                    key = "created" if status == 201 else "updated"
                    result.outcomes[key] = 1
                    return result
                if result.failed:
                    return result
            self._fail(result, [entry], None, "group-restarts-exhausted", 2)
        except _Stopped:
            result.failed = []
            self._fail(result, [entry], None, "stopped", 0)
        return result

    def _group_unchanged(self, group: _LargeGroup) -> bool:
        """The stored Group equals ours: a PUT of its head and the PATCHes would each add a version."""
        response = self.request("GET", f"Group/{group.id}")
        if not isinstance(response, _Answer) or response.status_code != 200:
            return False
        try:
            return _same_group(group.split, split_group(response.content))
        except (ValueError, orjson.JSONDecodeError):
            return False

    def _retrying(
        self, method: str, path: str, content: bytes | None, headers: dict[str, str], reason_prefix: str = "", max_body: int | None = None
    ) -> tuple[_Answer | None, int]:
        """Send with retries; the final response (any status) or None when attempts ran out."""
        attempt = 0
        while True:
            attempt += 1
            response = self.request(method, path, content, headers, max_body=max_body)
            if isinstance(response, _Answer) and response.status_code in FATAL_STATUS:
                self.fatal(response.status_code)
                return response, attempt
            if isinstance(response, _Answer) and not (response.status_code in RETRYABLE_STATUS or response.status_code >= 500):
                return response, attempt
            reason = response if isinstance(response, str) else f"http-{response.status_code}"
            retry_after = None if isinstance(response, str) else _parse_retry_after(response.headers.get("Retry-After"))
            if attempt >= self.config.retry.max_attempts:
                return (response if isinstance(response, _Answer) else None), attempt
            self.backoff(attempt, reason_prefix + reason, retry_after)

    def _put_group_head(self, group: _LargeGroup, first: tuple[int, int], result: _ChunkResult) -> tuple[int | None, str | None]:
        start, end = first
        body = group.head + b',"member":[' + b",".join(group.split.member(i) for i in range(start, end)) + b"]}"
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=minimal"}
        response, attempts = self._retrying("PUT", f"Group/{group.id}", body, headers, max_body=_KEEP_OF_PATCH_ANSWER)
        entry = _Entry("Group", group.id, b"")
        if response is None or response.status_code >= 300:
            status = response.status_code if response is not None else None
            reason = f"http-{status}" if status and status < 500 and status not in RETRYABLE_STATUS else "max-attempts"
            self._fail(result, [entry], status, reason, attempts, self._outcome(response) if response is not None else None)
            return None, None
        return response.status_code, self._version(response)

    def _version(self, response: _Answer) -> str | None:
        etag = response.headers.get("ETag", "")
        match = re.search(r'"([^"]+)"', etag)
        if match:
            return match.group(1)
        found = _VERSION_IN_BODY.search(response.content)
        return found.group(1).decode() if found else None

    def _server_member_state(self, group: _LargeGroup) -> tuple[int, bytes | None, str | None]:
        """(member count, last member's entity reference, versionId) as the server has it now."""
        response, _ = self._retrying("GET", f"Group/{group.id}", None, {}, reason_prefix="verify-")
        if response is None or response.status_code != 200:
            return -1, None, None
        try:
            split = split_group(response.content)
            head = orjson.loads(split.head)
        except (ValueError, orjson.JSONDecodeError):
            return -1, None, None
        last = _entity(split.member(len(split) - 1)) if len(split) else None
        return len(split), last, (head.get("meta") or {}).get("versionId")

    def _patch_members(self, group: _LargeGroup, slices: list[tuple[int, int]], version: str | None, result: _ChunkResult) -> bool:
        """True when every slice is on the server; False to ask for a restart from the PUT."""
        entry = _Entry("Group", group.id, b"")
        for start, end in slices[1:]:
            ops = b",".join(b'{"op":"add","path":"/member/-","value":' + group.split.member(i) + b"}" for i in range(start, end))
            body = b"[" + ops + b"]"
            attempt = 0
            while True:
                attempt += 1
                headers = {"Content-Type": JSON_PATCH, "Prefer": "return=minimal"}
                if version:
                    headers["If-Match"] = f'W/"{version}"'
                response = self.request("PATCH", f"Group/{group.id}", body, headers, max_body=_KEEP_OF_PATCH_ANSWER)
                if isinstance(response, _Answer) and response.status_code < 300:
                    result.group_patches += 1
                    version = self._version(response)
                    break
                if isinstance(response, _Answer) and response.status_code in FATAL_STATUS:
                    self.fatal(response.status_code)
                    self._fail(result, [entry], response.status_code, f"http-{response.status_code}", attempt)
                    return False
                status = response.status_code if isinstance(response, _Answer) else None
                # isinstance again rather than `status is not None`: the same test, in a form mypy narrows.
                if isinstance(response, _Answer) and status is not None and status not in RETRYABLE_STATUS and status < 500 and status != 412:
                    self._fail(result, [entry], status, f"http-{status}", attempt, self._outcome(response))
                    return False
                # Unknown whether the PATCH applied (lost answer, 5xx, or 412 because it did): look.
                count, last, server_version = self._server_member_state(group)
                expected_last = _entity(group.split.member(end - 1))
                if count == end and last == expected_last:
                    result.group_patches += 1
                    version = server_version
                    break
                if count != start:
                    return False  # someone else changed it, or an earlier step is missing: redo from PUT
                version = server_version
                if attempt >= self.config.retry.max_attempts:
                    self._fail(result, [entry], status, "max-attempts", attempt)
                    return False
                reason = f"http-{status}" if status else (response if isinstance(response, str) else "unknown")
                retry_after = _parse_retry_after(response.headers.get("Retry-After")) if isinstance(response, _Answer) else None
                self.backoff(attempt, f"patch-{reason}", retry_after)
        return True


# -- the public entry point ------------------------------------------------------------------------

# The types each type's resources reference (ATR 2.1.0 as fhir/ builds them). A type is sent only
# when every type it references loaded, so a Coverage never points at a Patient the server refused;
# ``keep_going`` sends it anyway.
REFERENCES: dict[str, frozenset[str]] = {
    "PractitionerRole": frozenset({"Practitioner", "Organization"}),
    "RelatedPerson": frozenset({"Patient"}),
    "Coverage": frozenset({"Patient", "Organization", "RelatedPerson"}),
    "Group": frozenset({"Patient", "Coverage", "PractitionerRole", "Organization"}),
}
EXIT_COMPLETE = 0
EXIT_INCOMPLETE = 1  # entries refused, or the load stopped: re-run to resume
EXIT_DATA_LOST = 5  # the server no longer holds what this load put there


def exit_code(report: LoadReport) -> int:
    if report.data_lost:
        return EXIT_DATA_LOST
    return EXIT_COMPLETE if report.ok else EXIT_INCOMPLETE


def _fingerprint(digests: dict[str, str], server: ServerConfig) -> str:
    """The checkpoint's key: every NDJSON file's sha256 (checked against the manifest just before)
    and the settings that decide which entries form chunk N."""
    settings = [server.mode, server.bundle_size, server.max_request_bytes, server.max_group_members_per_request]
    return hashlib.sha256(orjson.dumps({"files": digests, "chunking": settings}, option=orjson.OPT_SORT_KEYS)).hexdigest()


def save_report(export_dir: Path, report: LoadReport, lock: threading.Lock | None = None) -> None:
    """Atomically replace ``load_report.json`` (a reader, or a kill, never sees half a report)."""
    with lock or threading.Lock():
        data = orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"
    path = Path(export_dir) / REPORT_NAME
    # One temporary name per thread: the progress ticker and the load's own thread both save, and
    # with one name per process one thread's rename took the other's file away (FileNotFoundError).
    tmp = path.with_name(f".{REPORT_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_export(
    export_dir: Path,
    server: ServerConfig,
    *,
    progress: Callable[[LoadProgress], None] | None = None,
    auth: httpx.Auth | None = None,
    resume: bool = True,
    write_report: bool = True,
    keep_going: bool = False,
    progress_interval: float = 10.0,
    resume_command: str = "",
) -> LoadReport:
    """Load ``export_dir`` into ``server``; see the module docstring for the rules.

    Before any write: every file is checked against the manifest (``ExportChanged``) and the server
    is asked for its CapabilityStatement (``ServerUnreachable``, ``NotAFhirServer``). ``auth``
    defaults to what ``server.auth`` and the environment configure (``auth_from_env``). With
    ``resume`` (the default) chunks logged in the checkpoint are skipped once the server is seen to
    still hold them; ``resume=False`` starts over (``atr load --restart``). ``resume_command`` is
    quoted in stop messages. The report is rewritten every ``progress_interval`` seconds and at
    each type's end, so a killed load leaves one.
    """
    export_dir = Path(export_dir)
    manifest: Manifest = read_manifest(export_dir)
    digests = check_files(export_dir, manifest)
    if auth is None and server.auth != "none":
        auth = auth_from_env(server.auth)
    identity = preflight(server, auth)
    checkpoint = Checkpoint(export_dir, server.key, _fingerprint(digests, server), server=identity.model_dump(), restart=not resume)
    types = [t for t in LOAD_ORDER if manifest.files_of(t)]
    report = LoadReport(
        server_url=server.base_url,
        server_key=server.key,
        export_digest=manifest_digest(export_dir),
        transaction_time=manifest.transaction_time,
        mode=server.mode,
        bundle_size=server.bundle_size,
        concurrency=server.concurrency,
        server=identity.model_dump(exclude={"base_url"}),
        resume_command=resume_command,
        resumed=checkpoint.resumed,
        checkpoint_note=checkpoint.note,
        counts={t: TypeCounts(total=manifest.count_of(t)) for t in types},
    )
    run = _Run(server, auth, report)
    if resume_command:
        run.resume_hint = f"resume with: {resume_command}"
    reader = ServerReader(server, auth)
    started = time.monotonic()
    ticker = _Ticker(export_dir, run, types, progress, progress_interval, write_report)
    try:
        checked_at = -1
        if checkpoint.resumed:
            _verify_resume(export_dir, manifest, checkpoint, reader, report)
            checked_at = report.requests + report.reads
        ticker.start()
        with ThreadPoolExecutor(max_workers=server.concurrency, thread_name_prefix="atr-load") as pool:
            try:
                _load_types(types, export_dir, manifest, server, checkpoint, run, pool, progress, keep_going, ticker)
            except BaseException:
                # Crash or Ctrl-C: workers give up at their next request; nothing more is logged
                # in the checkpoint, so a re-run repeats (idempotently) what was in flight.
                run.stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        if not run.stop.is_set() and not report.total("failed") and report.requests + report.reads != checked_at:
            _verify_after_load(export_dir, manifest, checkpoint, reader, report, run.resume_hint)
    except BaseException as exc:
        report.status = "stopped"
        report.stop_reason = report.stop_reason or f"interrupted by {type(exc).__name__}; {run.resume_hint}"
        raise
    finally:
        ticker.stop()
        run.close()
        reader.close()
        checkpoint.close()
        report.check_requests = reader.requests
        report.elapsed_seconds = round(time.monotonic() - started, 3)
        _finish(report, types)
        if write_report:
            save_report(export_dir, report, run._lock)
    return report


def _verify_resume(export_dir: Path, manifest: Manifest, checkpoint: Checkpoint, reader: ServerReader, report: LoadReport) -> None:
    """Before anything is skipped: does the server still hold what the checkpoint says it accepted?"""
    groups = export_group_members(export_dir, manifest, set(checkpoint.sample_ids("Group", limit=None)))
    lost = lost_types(reader, checkpoint, groups)
    for resource_type in lost:
        checkpoint.forget(resource_type)
    if lost:
        report.verify_note = "the server lost data since the checkpoint (" + "; ".join(lost.values()) + "); those types are sent again"
    else:
        report.verify_note = "checkpoint checked against the server: " + ", ".join(
            f"{t} {checkpoint.claimed_count(t)}" for t in LOAD_ORDER if checkpoint.claimed_count(t)
        ) + " present"


def _verify_after_load(export_dir: Path, manifest: Manifest, checkpoint: Checkpoint, reader: ServerReader, report: LoadReport, hint: str) -> None:
    """Before saying ``complete``: is everything this load (and the runs before it) put there still there?
    A server restarted empty halfway through a load accepts the rest as if nothing happened.
    Counts and ids only, no member counts: the server accepted every Group of this run whole (a
    grown Group only counts once its last PATCH is in), the check before a resume counted the
    members of the ones skipped, and a Group lost since shows as a missing id. Reading every Group
    back here would cost a GET of tens of MB per large contract."""
    lost = lost_types(reader, checkpoint, {})
    if not lost:
        return
    for resource_type in lost:
        checkpoint.forget(resource_type)
        counts = report.counts[resource_type]
        counts.state = "failed"
        counts.note = "lost on the server after it was loaded"
    report.data_lost = True
    report.stop_reason = "the server lost data since the checkpoint: " + "; ".join(lost.values()) + f"; {hint} (it sends those types again)"


def _load_types(
    types: list[str],
    export_dir: Path,
    manifest: Manifest,
    server: ServerConfig,
    checkpoint: Checkpoint,
    run: _Run,
    pool: ThreadPoolExecutor,
    progress: Callable[[LoadProgress], None] | None,
    keep_going: bool,
    ticker: _Ticker,
) -> None:
    not_loaded: set[str] = set()
    for resource_type in types:
        counts = run.report.counts[resource_type]
        if run.stop.is_set():
            counts.note = "the load stopped before this type"
            continue
        missing = sorted(REFERENCES.get(resource_type, frozenset()) & not_loaded)
        if missing and not keep_going:
            counts.note = f"not sent: it references {', '.join(missing)}, which did not load (--keep-going sends it anyway)"
            not_loaded.add(resource_type)
            continue
        run.current_type = resource_type
        _load_type(resource_type, export_dir, manifest, server, checkpoint, run, pool, progress)
        if counts.failed or counts.confirmed < counts.total:
            counts.state = "failed"
            if run.stop.is_set() and not counts.note:
                counts.note = f"the load stopped during this type ({counts.confirmed} of {counts.total} on the server)"
            elif not counts.note:
                counts.note = f"{counts.failed} of {counts.total} refused"
            not_loaded.add(resource_type)
        else:
            counts.state = "loaded"
        ticker.flush()


def _all_done(report: LoadReport) -> bool:
    return all(c.state == "loaded" for c in report.counts.values())


def _finish(report: LoadReport, types: list[str]) -> None:
    order = {t: i for i, t in enumerate(types)}
    report.failed.sort(key=lambda f: (order.get(f.resource_type, 99), f.id))
    if len(report.failed) > MAX_FAILED_LISTED:
        report.failed_truncated = len(report.failed) - MAX_FAILED_LISTED
        del report.failed[MAX_FAILED_LISTED:]
    if report.status == "stopped" or report.stop_reason:
        report.status = "stopped"
    elif report.total("failed"):
        report.status = "failed_entries"
    elif not _all_done(report):
        report.status = "stopped"
        report.stop_reason = report.stop_reason or "not every type was loaded; re-run to resume"
    else:
        report.status = "complete"


class _Ticker:
    """Every ``interval`` seconds: a progress event (even when nothing moves) and the report on disk."""

    def __init__(self, export_dir: Path, run: _Run, types: list[str], progress: Callable[[LoadProgress], None] | None, interval: float, write: bool):
        self.export_dir = export_dir
        self.run = run
        self.types = types
        self.progress = progress
        self.interval = interval
        self.write = write
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="atr-load-ticker", daemon=True)

    def start(self) -> None:
        self.flush()
        if self.progress:
            self.progress(self.snapshot())
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def flush(self) -> None:
        if self.write:
            save_report(self.export_dir, self.run.report, self.run._lock)

    def snapshot(self) -> LoadProgress:
        report = self.run.report
        rtype = self.run.current_type or (self.types[0] if self.types else "")
        counts = report.counts.get(rtype) or TypeCounts()
        return LoadProgress(
            resource_type=rtype,
            chunk_index=-1,
            entries=0,
            done=counts.confirmed + counts.failed,
            total=counts.total,
            confirmed=counts.confirmed,
            failed=counts.failed,
            retrying=self.run.retrying,
            last_error=report.last_error,
            tick=True,
            loaded_total=sum(c.confirmed for c in report.counts.values()),
            grand_total=sum(c.total for c in report.counts.values()),
        )

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.flush()
                if self.progress:
                    self.progress(self.snapshot())
            except (OSError, RuntimeError):
                continue  # a missed tick is harmless; the next one or the end writes the report


def _load_type(
    resource_type: str,
    export_dir: Path,
    manifest: Manifest,
    server: ServerConfig,
    checkpoint: Checkpoint,
    run: _Run,
    pool: ThreadPoolExecutor,
    progress: Callable[[LoadProgress], None] | None,
) -> None:
    counts = run.report.counts[resource_type]
    if checkpoint.type_done(resource_type):
        counts.skipped = counts.total
        return
    done = 0
    clean = True
    inflight: dict[Future, _Chunk] = {}

    def settle(future: Future, chunk: _Chunk) -> None:
        nonlocal done, clean
        result: _ChunkResult = future.result()
        for outcome, n in result.outcomes.items():
            setattr(counts, outcome, getattr(counts, outcome) + n)
        counts.failed += len(result.failed)
        counts.group_patches += result.group_patches
        run.report.failed.extend(result.failed)
        done += chunk.size
        if result.failed:
            clean = False
        else:
            checkpoint.mark_chunk(resource_type, chunk.index, chunk.ids)
        if progress:
            report = run.report
            progress(
                LoadProgress(
                    resource_type,
                    chunk.index,
                    chunk.size,
                    done,
                    counts.total,
                    confirmed=counts.confirmed,
                    failed=counts.failed,
                    retrying=run.retrying,
                    last_error=report.last_error,
                    loaded_total=sum(c.confirmed for c in report.counts.values()),
                    grand_total=sum(c.total for c in report.counts.values()),
                )
            )

    def drain(until: int) -> None:
        while len(inflight) > until:
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: inflight[f].index):
                settle(future, inflight.pop(future))

    for chunk in _plan(iter_ndjson(export_dir, resource_type, manifest), resource_type, server):
        if chunk.invalid:
            counts.failed += len(chunk.invalid)
            run.report.failed.extend(chunk.invalid)
            done += len(chunk.invalid)
            clean = False
        if not chunk.size:
            continue
        if checkpoint.chunk_done(resource_type, chunk.index):
            counts.skipped += chunk.size
            done += chunk.size
            continue
        if run.stop.is_set():
            break
        if chunk.group is not None:
            # One huge Group at a time, in this thread: bounded memory, ordered PATCHes.
            drain(0)
            future: Future = Future()
            future.set_result(run.send_large_group(chunk))
            settle(future, chunk)
            continue
        inflight[pool.submit(run.send_bundle, chunk)] = chunk
        drain(server.concurrency * 2 - 1)
    drain(0)
    if clean and not run.stop.is_set():
        checkpoint.mark_type(resource_type)
