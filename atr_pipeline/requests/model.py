"""What a request says, once its FHIR references are resolved to identifiers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from atr_pipeline.errors import AtrError

MEMBER_ADD, MEMBER_REMOVE, CONFIRM, CREATE_GROUP = "member-add", "member-remove", "confirm", "create-group"
OPERATIONS = (MEMBER_ADD, MEMBER_REMOVE, CONFIRM, CREATE_GROUP)
ADJUDICATION_MODES = ("review", "auto")


@dataclass(frozen=True)
class Target:
    """The list a request is about: one contract of one source, in one reporting month."""

    source_id: str
    contract_id: str
    month: date
    group_id: str


@dataclass(frozen=True)
class MemberChange:
    operation: str  # member-add | member-remove
    member_id: str | None = None
    member_system: str | None = None  # checked against the mapping's member id system when sent
    provider_npi: str | None = None
    plan_id: str | None = None  # from a coverageReference: that one attribution
    period_start: date | None = None
    period_end: date | None = None
    unresolved: str | None = None  # a reference the API could not resolve: the request is refused with this


class RequestRefused(AtrError):
    """A request the producer does not carry out; recorded as rejected with this reason (no PHI)."""

    def __init__(self, reason: str, request_id: str | None = None, status: int = 422, code: str = "business-rule"):
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id
        self.status = status
        self.code = code
