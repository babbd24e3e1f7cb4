"""Group search: ``identifier``, ``characteristic``, ``characteristic-value``, ``name``, ``_summary``, paging.

Token parameters take ``system|value``, ``value``, ``system|`` or ``|value``; commas mean OR and
repeated parameters mean AND (FHIR search rules). ``name`` matches the start of Group.name
ignoring case (``name:exact`` / ``name:contains`` as in FHIR). ``characteristic-value`` is the
composite ``code$value`` where both halves are tokens (a CodeableConcept or boolean value).
Only the client's Groups are searched, each at its latest published version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from atr_pipeline.api.catalog import GroupEntry
from atr_pipeline.api.fhir_errors import bad_request, not_supported

DEFAULT_COUNT = 50
MAX_COUNT = 500
SEARCH_PARAMS: dict[str, str] = {  # name -> FHIR search parameter type (for the CapabilityStatement)
    "identifier": "token",
    "characteristic": "token",
    "characteristic-value": "composite",
    "name": "string",
}
_CONTROL = {"_summary", "_count", "_offset", "_format"}


@dataclass(frozen=True)
class GroupQuery:
    tests: tuple[Callable[[GroupEntry], bool], ...]
    summary: bool
    count: int
    offset: int

    def matches(self, entry: GroupEntry) -> bool:
        return all(test(entry) for test in self.tests)


def _token_matches(token: str, codings: list[tuple[str, str]]) -> bool:
    if "|" in token:
        system, _, value = token.partition("|")
        if not value:
            return any(s == system for s, _ in codings)
        return any(s == system and v == value for s, v in codings)
    return any(v == token for _, v in codings)


def _codings(concept: dict[str, Any] | None) -> list[tuple[str, str]]:
    return [(c.get("system", ""), c.get("code", "")) for c in (concept or {}).get("coding", [])]


def _value_codings(characteristic: dict[str, Any]) -> list[tuple[str, str]]:
    if "valueCodeableConcept" in characteristic:
        return _codings(characteristic["valueCodeableConcept"])
    if "valueBoolean" in characteristic:
        return [("", str(characteristic["valueBoolean"]).lower())]
    if "valueReference" in characteristic:
        return [("", characteristic["valueReference"].get("reference", ""))]
    return []


def _any_of(values: str, one: Callable[[str, GroupEntry], bool]) -> Callable[[GroupEntry], bool]:
    alternatives = [v for v in values.split(",") if v]
    if not alternatives:
        raise bad_request("empty search value")
    return lambda entry: any(one(v, entry) for v in alternatives)


def _by_identifier(token: str, entry: GroupEntry) -> bool:
    return _token_matches(token, list(entry.identifiers))


def _by_characteristic(token: str, entry: GroupEntry) -> bool:
    return any(_token_matches(token, _codings(c.get("code"))) for c in entry.head.get("characteristic", []))


def _by_characteristic_value(composite: str, entry: GroupEntry) -> bool:
    code, sep, value = composite.partition("$")
    if not sep or not code or not value:
        raise bad_request(f"characteristic-value {composite!r}: expected code$value")
    return any(
        _token_matches(code, _codings(c.get("code"))) and _token_matches(value, _value_codings(c))
        for c in entry.head.get("characteristic", [])
    )


def _name_test(modifier: str) -> Callable[[str, GroupEntry], bool]:
    def test(text: str, entry: GroupEntry) -> bool:
        name = entry.name or ""
        if modifier == "exact":
            return name == text
        if modifier == "contains":
            return text.casefold() in name.casefold()
        return name.casefold().startswith(text.casefold())

    return test


def _int(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}")
    return value


def parse_group_query(params: list[tuple[str, str]]) -> GroupQuery:
    tests: list[Callable[[GroupEntry], bool]] = []
    summary, count, offset = False, DEFAULT_COUNT, 0
    for key, value in params:
        name, _, modifier = key.partition(":")
        if name == "_summary":
            if value not in ("true", "false"):
                raise not_supported(f"_summary={value!r}: only true and false are supported")
            summary = value == "true"
        elif name == "_count":
            count = _int("_count", value, 0, MAX_COUNT)
        elif name == "_offset":
            offset = _int("_offset", value, 0, 10**9)
        elif name == "_format":
            continue
        elif name == "identifier" and not modifier:
            tests.append(_any_of(value, _by_identifier))
        elif name == "characteristic" and not modifier:
            tests.append(_any_of(value, _by_characteristic))
        elif name == "characteristic-value" and not modifier:
            if any("$" not in part for part in value.split(",")):
                raise bad_request(f"characteristic-value {value!r}: expected code$value")
            tests.append(_any_of(value, _by_characteristic_value))
        elif name == "name" and modifier in ("", "exact", "contains"):
            tests.append(_any_of(value, _name_test(modifier)))
        else:
            raise not_supported(
                f"search parameter {key!r} is not supported on Group; supported: {', '.join(SEARCH_PARAMS)}, {', '.join(sorted(_CONTROL))}"
            )
    return GroupQuery(tuple(tests), summary, count, offset)
