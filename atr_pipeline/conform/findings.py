"""Collects rule hits and references while the checker makes its one pass over a resource set.

In: ``add(rule, key, path)`` calls from the rule functions, ``reference(...)`` for every Reference
the profiles constrain, ``present(key)`` for every resource seen. Out: sorted ``RuleResult``s,
with unresolved references turned into ``ref.unresolved`` at the end.

Memory stays small on large sets: a reference whose target was already seen is dropped at once,
so when resources arrive in load order (targets before referrers) almost nothing is kept.
"""

from __future__ import annotations

from atr_pipeline.conform.report import MAX_EXAMPLES, RuleResult
from atr_pipeline.conform.rules import RULES


class Findings:
    def __init__(self, *, resolve_references: bool = True) -> None:
        self._hits: dict[str, list] = {}  # rule -> [count, examples, paths]
        self._present: set[str] = set()
        self._pending: dict[str, list] = {}  # unresolved-so-far target -> [count, keys, paths]
        self.resolve_references = resolve_references

    def add(self, rule: str, key: str, path: str = "", n: int = 1) -> None:
        hit = self._hits.get(rule)
        if hit is None:
            hit = self._hits[rule] = [0, [], []]
        hit[0] += n
        if len(hit[1]) < MAX_EXAMPLES and key not in hit[1]:
            hit[1].append(key)
        if path and len(hit[2]) < MAX_EXAMPLES and path not in hit[2]:
            hit[2].append(path)

    def present(self, key: str) -> bool:
        """Record a resource key; False when it was already present (a duplicate)."""
        if key in self._present:
            return False
        self._present.add(key)
        return True

    def reference(
        self,
        ref: object,
        allowed: frozenset[str] | None,
        key: str,
        path: str,
        *,
        resolve: bool = True,
    ) -> None:
        """Check one Reference: literal ``Type/id`` form, allowed target type, and (later) resolution."""
        target = ref.get("reference") if isinstance(ref, dict) else None
        if not isinstance(target, str):
            self.add("ref.literal", key, path)
            return
        rtype, sep, rid = target.partition("/")
        if "/_history/" in rid:  # a versioned reference still resolves to the resource
            rid = rid.partition("/_history/")[0]
            target = f"{rtype}/{rid}"
        if not sep or not rid or "/" in rid or not rtype.isalpha() or not rtype[0].isupper():
            self.add("ref.literal", key, path + ".reference")
            return
        if allowed is not None and rtype not in allowed:
            self.add("ref.target-type", key, path + ".reference")
        if not (resolve and self.resolve_references) or target in self._present:
            return
        pending = self._pending.get(target)
        if pending is None:
            self._pending[target] = [1, [key], [path + ".reference"]]
            return
        pending[0] += 1
        keys, paths = pending[1], pending[2]
        if len(keys) < MAX_EXAMPLES and key not in keys:
            keys.append(key)
        if len(paths) < MAX_EXAMPLES and path + ".reference" not in paths:
            paths.append(path + ".reference")

    def results(self) -> list[RuleResult]:
        for target, (count, keys, paths) in self._pending.items():
            if target not in self._present:
                self.add("ref.unresolved", keys[0], paths[0], n=count)
                for key in keys[1:]:
                    self.add("ref.unresolved", key, n=0)
                for path in paths[1:]:
                    self.add("ref.unresolved", keys[0], path, n=0)
        self._pending.clear()
        out = []
        for rule_id in sorted(self._hits):
            count, examples, paths = self._hits[rule_id]
            rule = RULES[rule_id]
            out.append(RuleResult(rule_id, rule.severity, rule.description, count, list(examples), list(paths)))
        return out
