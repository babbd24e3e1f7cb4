"""Reads for one client: the Groups it is party to and the resources they reach, with their versions.

A Group is visible when one of its identifiers was registered for the client. Any other resource
is visible in a published month when one of the client's Groups of that month refers to it, or
refers to a Coverage or PractitionerRole that does (the subscriber RelatedPerson, the
Practitioner and Organization behind a role). Everything else answers 404, like an unknown id.

Versions follow publication: a Group's versions are the ``meta.versionId`` values it was
published with across months (the latest month wins for a version published twice); any other
resource gets a new version in the first month its JSON differs from the month before, with that
month's ``transactionTime`` as ``meta.lastUpdated``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from atr_pipeline.api.catalog import (
    MEMBER_TYPES,
    RESOURCE_TYPES,
    CatalogView,
    GroupEntry,
    MonthExport,
)
from atr_pipeline.api.clients import Client
from atr_pipeline.api.fhir_errors import not_found

_HOP_TYPES = ("Coverage", "PractitionerRole")


def check_type(resource_type: str) -> None:
    if resource_type not in RESOURCE_TYPES:
        raise not_found(f"resource type {resource_type!r} is not served here; served: {', '.join(RESOURCE_TYPES)}")


def client_groups(view: CatalogView, client: Client) -> list[GroupEntry]:
    """The current (latest published) version of every Group the client may see."""
    return [g for g in view.current_groups() if client.may_see(g.identifiers)]


def group_entries(view: CatalogView, client: Client, group_id: str) -> list[GroupEntry]:
    entries = [e for e in view.groups.get(group_id, []) if client.may_see(e.identifiers)]
    if not entries:
        raise not_found(f"Group/{group_id} is not known, or not a Group this client is party to")
    return entries


def group_versions(view: CatalogView, client: Client, group_id: str) -> list[GroupEntry]:
    """One entry per published version, oldest version first."""
    by_version: dict[str, GroupEntry] = {}
    for entry in group_entries(view, client, group_id):
        by_version[entry.version_id] = entry  # months ascend: the latest month wins
    return sorted(by_version.values(), key=lambda e: (int(e.version_id) if e.version_id.isdigit() else 0, e.month))


def visible_in(export: MonthExport, client: Client, resource_type: str, resource_id: str) -> bool:
    mine = [g for g in export.groups if client.may_see(g.identifiers)]
    if not mine:
        return False
    if any(g.refers_to(resource_type, resource_id) for g in mine):
        return True
    for hop in _HOP_TYPES:
        if hop == resource_type:
            continue
        for ht, hid in export.lines_referring(hop, f"{resource_type}/{resource_id}"):
            if any(g.refers_to(ht, hid) for g in mine):
                return True
    return False


@dataclass(frozen=True)
class Version:
    version_id: str
    last_updated: str
    month: str
    line: bytes

    def resource(self) -> dict[str, Any]:
        body = orjson.loads(self.line)
        meta = body.setdefault("meta", {})
        meta["versionId"] = self.version_id
        meta["lastUpdated"] = self.last_updated
        body["meta"] = {"versionId": meta.pop("versionId"), "lastUpdated": meta.pop("lastUpdated"), **meta}
        return {"resourceType": body.pop("resourceType"), "id": body.pop("id"), **body}


def resource_versions(view: CatalogView, client: Client, resource_type: str, resource_id: str) -> list[Version]:
    """Versions of a non-Group resource visible to the client, oldest first; 404 when none."""
    if resource_type not in MEMBER_TYPES:
        raise not_found(f"{resource_type} is not served here")
    versions: list[Version] = []
    previous: bytes | None = None
    for export in view.months:
        line = export.find_line(resource_type, resource_id)
        if line is None or not visible_in(export, client, resource_type, resource_id):
            continue
        if line != previous:
            versions.append(Version(str(len(versions) + 1), export.transaction_time, export.month, line))
            previous = line
        else:
            last = versions[-1]
            versions[-1] = Version(last.version_id, last.last_updated, export.month, line)
    if not versions:
        raise not_found(f"{resource_type}/{resource_id} is not known, or not reached by a Group this client is party to")
    return versions
