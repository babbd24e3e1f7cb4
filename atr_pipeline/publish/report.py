"""The load report: what a load did, per type and outcome, with every failed entry; no PHI.

In:  per-entry outcomes collected by the loader, server OperationOutcomes.
Out: ``LoadReport`` (pydantic), written as ``load_report.json`` in the export folder.

Sanitising server OperationOutcomes: servers echo submitted values in ``diagnostics`` and
``details.text`` (e.g. "Invalid birthDate 1950-13-01", "duplicate identifier M0001"), so those
are dropped. Kept: ``severity``, ``code``, ``details.coding`` system+code (no display), and
``expression``/``location`` FHIRPath with every quoted literal replaced by ``'?'`` (a path such
as ``Patient.identifier.where(value='123')`` would otherwise carry the value).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Outcome = Literal["created", "updated", "unchanged", "failed"]
# running: the load has not finished (a report left "running" by a process that is gone was killed).
LoadStatus = Literal["running", "complete", "failed_entries", "stopped"]
# Per type: loaded (every entry on the server), failed (some entries refused, or the load stopped
# inside the type), not_attempted (nothing sent: it references a type that failed, or the load
# stopped before it).
TypeState = Literal["loaded", "failed", "not_attempted"]

_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_MAX_ISSUES = 20  # per entry: enough to act on, bounded for huge outcomes


class SanitizedIssue(BaseModel):
    model_config = ConfigDict(frozen=True)

    severity: str = ""
    code: str = ""
    details: list[str] = Field(default_factory=list)  # "system|code" of details.coding
    expression: list[str] = Field(default_factory=list)


def _path_only(text: Any) -> str:
    return _QUOTED.sub("'?'", str(text))[:200]


def sanitize_outcome(outcome: Any) -> list[SanitizedIssue]:
    """The actionable, value-free part of an OperationOutcome (anything else gives [])."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return []
    issues = []
    for issue in (outcome.get("issue") or [])[:_MAX_ISSUES]:
        if not isinstance(issue, dict):
            continue
        codings = ((issue.get("details") or {}).get("coding") or []) if isinstance(issue.get("details"), dict) else []
        details = [f"{c.get('system', '')}|{c.get('code', '')}" for c in codings if isinstance(c, dict) and c.get("code")]
        paths = list(issue.get("expression") or []) + list(issue.get("location") or [])
        issues.append(
            SanitizedIssue(
                severity=str(issue.get("severity", ""))[:20],
                code=str(issue.get("code", ""))[:40],
                details=details[:5],
                expression=[_path_only(p) for p in paths[:5]],
            )
        )
    return issues


class FailedEntry(BaseModel):
    """One resource the server did not accept. ``id`` is the keyed-hash id, never a member id."""

    resource_type: str
    id: str
    status: int | None = None  # HTTP status of the entry, None when no response came back
    reason: str  # http-<status>, max-attempts, retry-budget-exhausted, stopped, invalid-line
    attempts: int = 1
    issues: list[SanitizedIssue] = Field(default_factory=list)


class TypeCounts(BaseModel):
    state: TypeState = "not_attempted"
    note: str = ""  # why a type is failed or not attempted
    total: int = 0  # lines in the export
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped: int = 0  # already loaded by an earlier run (checkpoint)
    group_patches: int = 0  # JSON Patch requests that grew large Groups

    @property
    def confirmed(self) -> int:
        """Entries the server answered success for in this run, plus those skipped as loaded before."""
        return self.created + self.updated + self.unchanged + self.skipped


class LoadReport(BaseModel):
    server_url: str
    server_key: str
    export_digest: str
    transaction_time: str
    mode: str
    bundle_size: int
    concurrency: int
    server: dict[str, str] = Field(default_factory=dict)  # identity from the CapabilityStatement
    status: LoadStatus = "running"
    stop_reason: str = ""
    resume_command: str = ""
    data_lost: bool = False  # the server no longer held resources an earlier (part of the) load put there
    resumed: bool = False
    checkpoint_note: str = ""
    verify_note: str = ""  # what the check of the checkpoint against the server found
    last_error: str = ""
    counts: dict[str, TypeCounts] = Field(default_factory=dict)
    failed: list[FailedEntry] = Field(default_factory=list)
    failed_truncated: int = 0  # failed entries beyond the listing cap (still counted in counts)
    requests: int = 0  # writes: Bundles, PUTs, PATCHes
    reads: int = 0  # GETs that decide whether to write (is it unchanged? did that PATCH arrive?)
    check_requests: int = 0  # reads that checked the checkpoint's claims against the server
    retries: int = 0
    retries_by_reason: dict[str, int] = Field(default_factory=dict)
    retry_sleep_seconds: float = 0.0
    elapsed_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "complete"

    def total(self, outcome: str) -> int:
        return sum(getattr(c, outcome) for c in self.counts.values())
