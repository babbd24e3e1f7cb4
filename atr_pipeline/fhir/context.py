"""What a build needs besides the rows: the id key, identifier systems, run time and list status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

from atr_pipeline.layouts.spec import IdentifierSystems, RecipientIdentifier


@dataclass(frozen=True)
class BuildContext:
    id_key: bytes = field(repr=False)  # secret key of the keyed hash behind every id
    systems: IdentifierSystems  # payer-owned identifier system URIs (from the mapping)
    transaction_time: datetime  # UTC; the run's transaction time -> Group meta.lastUpdated
    list_status: str = "draft"  # draft | open | final -> ext-attributionListStatus
    group_versions: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # contract_id -> meta.versionId
    intended_recipient: RecipientIdentifier | None = None
    payer_name: str | None = None  # payer Organization name when rows carry none

    def last_updated(self) -> str:
        """FHIR instant in UTC with ``Z``; seconds unless the time has sub-second precision."""
        t = self.transaction_time
        t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
        spec = "seconds" if t.microsecond == 0 else "milliseconds"
        return t.replace(tzinfo=None).isoformat(timespec=spec) + "Z"
