"""Test helper: every literal `reference` in a FHIR JSON value (resource, list or dict of them)."""

from __future__ import annotations

from typing import Any


def references(value: Any, out: list[str] | None = None) -> list[str]:
    out = [] if out is None else out
    if isinstance(value, dict):
        if "reference" in value:
            out.append(value["reference"])
        for v in value.values():
            references(v, out)
    elif isinstance(value, list):
        for v in value:
            references(v, out)
    return out
