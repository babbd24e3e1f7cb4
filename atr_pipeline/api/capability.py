"""The CapabilityStatement, generated from the interactions the app registered (so it cannot claim more).

It instantiates the ATR producer statement and lists only what is registered (so an operation
removed from the routes disappears from here too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atr_pipeline.systems import ATR_BASE, PROFILE_BY_TYPE

ATR_PRODUCER = f"{ATR_BASE}/CapabilityStatement/atr-producer"
DATA_EXPORT_OPERATION = f"{ATR_BASE}/OperationDefinition/davinci-data-export"
GROUP_EXPORT_OPERATION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
TOPIC_CANONICAL_EXT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
MEMBER_ADD_OPERATION = f"{ATR_BASE}/OperationDefinition/member-add"
MEMBER_REMOVE_OPERATION = f"{ATR_BASE}/OperationDefinition/member-remove"
CONFIRM_OPERATION = f"{ATR_BASE}/OperationDefinition/confirm-attribution-list"
ATTRIBUTION_STATUS_OPERATION = f"{ATR_BASE}/OperationDefinition/attribution-status"
SOFTWARE_VERSION = "0.1.0"


@dataclass(frozen=True)
class Registered:
    """One FHIR interaction or operation the app serves."""

    resource_type: str | None
    interaction: str | None = None  # read, vread, history-instance, search-type
    operation: tuple[str, str] | None = None  # (name, definition canonical)
    search_params: tuple[tuple[str, str], ...] = ()
    profile: str | None = None  # a supported profile beyond the ATR data profiles (the list-change Subscription)
    topic: str | None = None  # a SubscriptionTopic canonical this resource type serves (backport capability extension)


def capability_statement(registered: list[Registered], base_url: str, token_url: str, date: str) -> dict[str, Any]:
    by_type: dict[str, dict[str, Any]] = {}
    for item in registered:
        if item.resource_type is None:
            continue
        entry = by_type.setdefault(item.resource_type, {"type": item.resource_type, "extension": [], "supportedProfile": [],
                                                        "interaction": [], "searchParam": [], "operation": []})
        if item.topic and {"url": TOPIC_CANONICAL_EXT, "valueCanonical": item.topic} not in entry["extension"]:
            entry["extension"].append({"url": TOPIC_CANONICAL_EXT, "valueCanonical": item.topic})
        if item.profile and item.profile not in entry["supportedProfile"]:
            entry["supportedProfile"].append(item.profile)
        if item.interaction and {"code": item.interaction} not in entry["interaction"]:
            entry["interaction"].append({"code": item.interaction})
        for name, kind in item.search_params:
            entry["searchParam"].append({"name": name, "type": kind})
        if item.operation:
            entry["operation"].append({"name": item.operation[0], "definition": item.operation[1]})
    resources = []
    for resource_type in sorted(by_type):
        entry = {k: v for k, v in by_type[resource_type].items() if v}
        if resource_type in PROFILE_BY_TYPE:
            entry["supportedProfile"] = [PROFILE_BY_TYPE[resource_type]]
        if "interaction" in entry:
            versioned = any(i["code"] == "vread" for i in entry["interaction"])
            entry["versioning"] = "versioned" if versioned else "no-version"
            entry["readHistory"] = versioned
        resources.append({"type": entry.pop("type"), **entry})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "atr_pipeline",
        "kind": "instance",
        "instantiates": [ATR_PRODUCER],
        "software": {"name": "atr_pipeline atr serve", "version": SOFTWARE_VERSION},
        "implementation": {"description": "Da Vinci ATR producer API over the published member attribution lists", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                    "extension": [{
                        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                        "extension": [{"url": "token", "valueUri": token_url}],
                    }],
                    "description": "SMART Backend Services (client_credentials, private_key_jwt RS384/ES384); "
                    "each client sees only the Groups registered for it",
                },
                "resource": resources,
            }
        ],
    }
