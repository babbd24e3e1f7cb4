"""validate/: canonical rows in, accepted rows + rejects with reasons out.

- ``identifiers``: NPI, TIN, MBI and member-id rules, scalar and vectorised.
- ``rules``: ``validate_rows`` (every row rule in one vectorised pass; pandera holds the
  canonical contract) -> ``ValidationResult``.
- ``rejects``: the sender's rejects CSV, OperationOutcome NDJSON, the file-level reject
  threshold (``FileRefused``) and the failure table for Dagster metadata.

docs/BAD_INPUT.md lists every rule and policy.
"""

from atr_pipeline.validate.rejects import (
    check_reject_threshold,
    failure_table,
    rejects_to_operation_outcomes,
    write_rejects_csv,
)
from atr_pipeline.validate.rules import CanonicalContractError, ValidationResult, validate_rows

__all__ = [
    "CanonicalContractError",
    "ValidationResult",
    "check_reject_threshold",
    "failure_table",
    "rejects_to_operation_outcomes",
    "validate_rows",
    "write_rejects_csv",
]
