"""The conformance report: per-rule counts with a few example resource keys, never PHI.

In: findings collected by ``checker.Findings``. Out: ``ConformReport`` (``ok``, ``to_dict``,
``to_markdown``). Examples are ``Type/id`` keys (ids are keyed hashes in pipeline output) or,
for export rules, file names; paths are element paths with indices (``Group.member[3].inactive``).
Values of elements never appear.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from atr_pipeline.conform.rules import ERROR

MAX_EXAMPLES = 5


@dataclass
class RuleResult:
    rule: str
    severity: str  # "error" | "warning"
    description: str
    count: int  # occurrences (a Group with 3 bad members counts 3)
    examples: list[str]  # up to 5 distinct "Type/id" (or file names for export.* rules)
    paths: list[str] = field(default_factory=list)  # up to 5 distinct element paths seen


@dataclass
class ConformReport:
    resources_checked: int
    structurally_checked: int
    by_type: dict[str, int]
    results: list[RuleResult]  # sorted by rule id

    @property
    def ok(self) -> bool:
        return not any(r.severity == ERROR for r in self.results)

    @property
    def error_count(self) -> int:
        return sum(r.count for r in self.results if r.severity == ERROR)

    @property
    def warning_count(self) -> int:
        return sum(r.count for r in self.results if r.severity != ERROR)

    def result(self, rule: str) -> RuleResult | None:
        """The result for one rule id, or None when the rule found nothing."""
        for r in self.results:
            if r.rule == rule:
                return r
        return None

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "resources_checked": self.resources_checked,
            "structurally_checked": self.structurally_checked,
            "by_type": dict(sorted(self.by_type.items())),
            "errors": self.error_count,
            "warnings": self.warning_count,
            "results": [asdict(r) for r in self.results],
        }

    def to_markdown(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        types = ", ".join(f"{t} {n}" for t, n in sorted(self.by_type.items())) or "none"
        lines = [
            f"## ATR conformance: {verdict}",
            "",
            f"- resources checked: {self.resources_checked} ({types})",
            f"- structurally checked (R4B models): {self.structurally_checked}",
            f"- errors: {self.error_count}, warnings: {self.warning_count}",
            "",
        ]
        if not self.results:
            lines.append("No findings.")
            return "\n".join(lines) + "\n"
        lines += ["| rule | severity | count | examples | paths | description |", "|---|---|---|---|---|---|"]
        for r in self.results:
            lines.append(
                f"| `{r.rule}` | {r.severity} | {r.count} | {', '.join(r.examples)} | "
                f"{', '.join(r.paths)} | {r.description} |"
            )
        return "\n".join(lines) + "\n"
