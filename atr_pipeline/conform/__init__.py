"""conform/: Da Vinci ATR 2.1.0 conformance of what fhir/ produced and publish/ exported.

In: resources (dicts or JSON text), the fhir/ stage's ``{type: DataFrame[id, json]}`` frames, or a
bulk export directory. Out: a ``ConformReport`` (per-rule counts, ``Type/id`` examples, never PHI).
Refused: an export directory without a manifest (``AtrError``). See docs/CONFORMANCE.md.
"""

from atr_pipeline.conform.checker import Checker, check_ndjson_frames, check_resources
from atr_pipeline.conform.export import check_export
from atr_pipeline.conform.report import ConformReport, RuleResult
from atr_pipeline.conform.rules import RULES, Rule

__all__ = [
    "Checker",
    "ConformReport",
    "RULES",
    "Rule",
    "RuleResult",
    "check_export",
    "check_ndjson_frames",
    "check_resources",
]
