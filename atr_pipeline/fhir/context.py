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
    # Per contract, from history: a Group whose content did not change keeps the lastUpdated of
    # the version that created it, and `atr finalize` sets one contract's status. Contracts not
    # listed use transaction_time / list_status.
    group_last_updated: Mapping[str, datetime] = field(default_factory=lambda: MappingProxyType({}))
    group_statuses: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def status_of(self, contract_id: str | None) -> str:
        return self.group_statuses.get(contract_id, self.list_status) if contract_id is not None else self.list_status

    def last_updated(self, contract_id: str | None = None) -> str:
        """FHIR instant in UTC with ``Z``; seconds unless the time has sub-second precision."""
        t = self.group_last_updated.get(contract_id, self.transaction_time) if contract_id is not None else self.transaction_time
        t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
        spec = "seconds" if t.microsecond == 0 else "milliseconds"
        return t.replace(tzinfo=None).isoformat(timespec=spec) + "Z"
