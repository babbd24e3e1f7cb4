"""Every FHIR error the API answers: one exception type, one place that makes the OperationOutcome.

Messages name what was wrong with the request (a parameter, a type, an id) and never PHI.
"""

from __future__ import annotations

from typing import Any

import orjson

FHIR_JSON = "application/fhir+json"


class FhirError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, ``code`` the IssueType code."""

    def __init__(self, status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None):
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.headers = headers or {}


def operation_outcome(code: str, diagnostics: str, severity: str = "error", expression: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome_bytes(code: str, diagnostics: str, severity: str = "error", expression: str | None = None) -> bytes:
    return orjson.dumps(operation_outcome(code, diagnostics, severity, expression))


def bad_request(diagnostics: str) -> FhirError:
    return FhirError(400, "invalid", diagnostics)


def not_supported(diagnostics: str) -> FhirError:
    return FhirError(400, "not-supported", diagnostics)


def not_found(diagnostics: str) -> FhirError:
    return FhirError(404, "not-found", diagnostics)


def forbidden(diagnostics: str) -> FhirError:
    return FhirError(403, "forbidden", diagnostics)


def unauthorized(diagnostics: str) -> FhirError:
    return FhirError(401, "login", diagnostics, headers={"WWW-Authenticate": 'Bearer realm="atr"'})
