"""ATR 2.1.0 conformance of a set of FHIR resources, in one pass.

In: resources as dicts, as JSON text (one resource per item, e.g. NDJSON lines), or as polars
frames with ``id`` and ``json`` columns (the fhir/ stage's output). Out: a ``ConformReport`` with
per-rule counts and up to five ``Type/id`` examples. Refused: nothing; unparseable items are
``json.parse`` findings.

Per resource, in this order: parse (orjson) -> byte-level scan of the compact text for ``null``,
``""``, ``[]``, ``{}`` (the exact walk runs only when the scan hits) -> NPI/TIN values -> profile
rules by type (profiles.py) -> R4B structure (all, a seeded reservoir sample, or none). References
are resolved against every resource seen once the pass ends.

``assume_profiles=True`` treats a resource without ``meta.profile`` as claiming the ATR profile of
its type (the IG's own examples declare none); a resource that declares a wrong profile is still
reported. Rules run by type either way; only ``meta.profile.missing`` depends on the flag.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping

import orjson
import polars as pl
from stdnum import luhn

from atr_pipeline import systems as S
from atr_pipeline.conform.columns import NOTHING, Proof
from atr_pipeline.conform.findings import Findings
from atr_pipeline.conform.profiles import TYPE_CHECKS
from atr_pipeline.conform.report import ConformReport
from atr_pipeline.conform.rules import MOJIBAKE_BYTES, MOJIBAKE_PATTERN
from atr_pipeline.conform.structure import check_structure

STRUCTURAL_MODES = ("all", "sample", "none")

# Candidates only: a hit inside a string value is a false alarm the exact walk then discards.
# Plain substring tests on the compact text are several times cheaper than one regex pass; the
# regex is the fallback for text with whitespace after a bracket (not compact JSON).
_SPACED_EMPTY = re.compile(rb"\[\s+\]|\{\s+\}")
_NPI_TOKEN = orjson.dumps(S.SYS_NPI)
_TIN_TOKEN = orjson.dumps(S.SYS_TIN)
_DIGITS = frozenset("0123456789")


class Checker:
    """Accumulates findings over resources fed one at a time; ``report()`` closes the pass."""

    def __init__(
        self,
        *,
        structural: str = "all",
        sample_size: int = 1000,
        seed: int = 0,
        assume_profiles: bool = False,
        resolve_references: bool = True,
    ) -> None:
        if structural not in STRUCTURAL_MODES:
            raise ValueError(f"structural must be one of {', '.join(STRUCTURAL_MODES)}")
        if sample_size < 0:
            raise ValueError("sample_size must be >= 0")
        self.structural = structural
        self.sample_size = sample_size
        self.assume_profiles = assume_profiles
        self.findings = Findings(resolve_references=resolve_references)
        self.by_type: dict[str, int] = {}
        self.count = 0
        self.structurally_checked = 0
        self._rng = random.Random(seed)
        self._seen_for_sample = 0
        self._sample: list[tuple[str, str, dict]] = []

    # -- feeding -------------------------------------------------------------------------
    def add_text(self, text: bytes | str, *, expected_type: str | None = None, expected_id: str | None = None) -> None:
        if isinstance(text, str):
            text = text.encode()
        try:
            res = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.count += 1
            self.findings.add("json.parse", f"{expected_type or 'Resource'}/#{self.count}")
            return
        self._check(res, text, expected_type, expected_id)

    def add_dict(self, res: object, *, expected_type: str | None = None) -> None:
        try:
            text = orjson.dumps(res)
        except TypeError:
            self.count += 1
            self.findings.add("json.parse", f"{expected_type or 'Resource'}/#{self.count}")
            return
        self._check(res, text, expected_type, None)

    # -- one resource ----------------------------------------------------------------------
    def _check(self, res: object, text: bytes, expected_type: str | None, expected_id: str | None) -> None:
        self.count += 1
        f = self.findings
        rtype = res.get("resourceType") if isinstance(res, dict) else None
        if not isinstance(res, dict) or not isinstance(rtype, str) or not rtype:
            f.add("json.parse", f"{expected_type or 'Resource'}/#{self.count}")
            return
        rid = res.get("id")
        if isinstance(rid, str) and rid:
            key = f"{rtype}/{rid}"
            if not f.present(key):
                f.add("resource.id.duplicate", key)
        else:
            key = f"{rtype}/#{self.count}"  # ordinal position, never content
            f.add("resource.id.missing", key)
        self.by_type[rtype] = self.by_type.get(rtype, 0) + 1
        if expected_type is not None and rtype != expected_type:
            f.add("export.type-mismatch", key)
        if expected_id is not None and rid != expected_id:
            f.add("export.id-mismatch", key)

        if _maybe_null_or_empty(text):
            _walk_null_empty(res, rtype, key, f)
        if _NPI_TOKEN in text or _TIN_TOKEN in text:
            _check_identifier_values(res, text, key, f)
        if any(b in text for b in MOJIBAKE_BYTES):
            _walk_mojibake(res, rtype, key, f)

        rule_fn = TYPE_CHECKS.get(rtype)
        if rule_fn is None:
            f.add("resource.type.unknown", key)
        else:
            profile = self._profile(res, rtype, key)
            try:
                rule_fn(res, key, profile, f)
            except (AttributeError, TypeError):
                # A wrong JSON shape (list where an object belongs...) the R4 check names precisely.
                f.add("r4.structure", key, f"{rtype} (malformed)")

        if self.structural == "all":
            self.structurally_checked += 1
            check_structure(res, rtype, key, f)
        elif self.structural == "sample" and self.sample_size:
            # Reservoir sampling: a uniform, seeded sample of a stream of unknown length.
            self._seen_for_sample += 1
            if len(self._sample) < self.sample_size:
                self._sample.append((rtype, key, res))
            else:
                j = self._rng.randrange(self._seen_for_sample)
                if j < self.sample_size:
                    self._sample[j] = (rtype, key, res)

    def _profile(self, res: dict, rtype: str, key: str) -> str:
        """The profile the resource is checked against; records meta.profile findings."""
        expected = S.PROFILE_BY_TYPE[rtype]
        meta = res.get("meta")
        declared = meta.get("profile") if isinstance(meta, dict) else None
        if not declared or not isinstance(declared, list):
            if not self.assume_profiles:
                self.findings.add("meta.profile.missing", key, f"{rtype}.meta.profile")
            return expected
        if expected in declared:
            return expected
        if rtype == "Group" and S.PROFILE_PATIENT_LIST in declared:
            return S.PROFILE_PATIENT_LIST  # the ATR Group's parent profile: checked by its own rules
        self.findings.add("meta.profile.wrong", key, f"{rtype}.meta.profile")
        return expected

    # -- closing -----------------------------------------------------------------------------
    def report(self) -> ConformReport:
        for rtype, key, res in self._sample:
            check_structure(res, rtype, key, self.findings)
        self.structurally_checked += len(self._sample)
        self._sample = []
        return ConformReport(
            resources_checked=self.count,
            structurally_checked=self.structurally_checked,
            by_type=dict(sorted(self.by_type.items())),
            results=self.findings.results(),
        )


def _maybe_null_or_empty(text: bytes) -> bool:
    return (
        b"null" in text
        or b'""' in text
        or b"[]" in text
        or b"{}" in text
        # Non-compact producers put a space after ':'; only their text pays for the regex.
        or (b": " in text and _SPACED_EMPTY.search(text) is not None)
    )


_MOJIBAKE = re.compile(MOJIBAKE_PATTERN)


def _walk_mojibake(node: object, path: str, key: str, f: Findings) -> None:
    """text.mojibake on every string (the finding names the path, never the text: PHI)."""
    if isinstance(node, dict):
        for name, value in node.items():
            _walk_mojibake(value, f"{path}.{name}", key, f)
    elif isinstance(node, list):
        for item in node:
            _walk_mojibake(item, path, key, f)
    elif isinstance(node, str) and _MOJIBAKE.search(node):
        f.add("text.mojibake", key, path)


def _walk_null_empty(node: object, path: str, key: str, f: Findings) -> None:
    if isinstance(node, dict):
        if not node:
            f.add("json.empty", key, path)
        for name, value in node.items():
            child = f"{path}.{name}"
            if name == "":
                f.add("json.empty", key, child)
            if value is None:
                f.add("json.null", key, child)
            elif value == "" or value == [] or value == {}:
                f.add("json.empty", key, child)
            elif isinstance(value, list):
                # FHIR JSON keeps primitive arrays aligned with their "_name" twin by padding with
                # null: nulls are legal there and nowhere else.
                paired = name.startswith("_") or f"_{name}" in node
                for item in value:
                    if item is None:
                        if not paired:
                            f.add("json.null", key, child)
                    elif item == "" or item == [] or item == {}:
                        f.add("json.empty", key, child)
                    elif isinstance(item, (dict, list)):
                        _walk_null_empty(item, child, key, f)
            elif isinstance(value, dict):
                _walk_null_empty(value, child, key, f)
    elif isinstance(node, list):
        for item in node:
            _walk_null_empty(item, path, key, f)


def _check_identifier_value(ident: dict, key: str, path: str, f: Findings) -> None:
    system = ident.get("system")
    value = ident.get("value")
    if not isinstance(value, str) or not value:
        return  # a missing value is a cardinality rule of the profile that owns the slice
    if system == S.SYS_NPI:
        if len(value) != 10 or not _DIGITS.issuperset(value):
            f.add("npi.format", key, path)
        elif not luhn.is_valid("80840" + value):
            f.add("npi.check-digit", key, path)
    elif system == S.SYS_TIN:
        if len(value) != 9 or not _DIGITS.issuperset(value):
            f.add("tin.format", key, path)


def _check_identifier_values(res: dict, text: bytes, key: str, f: Findings) -> None:
    """NPI and TIN values wherever their system appears.

    The usual places (resource.identifier, root extension valueIdentifier) are read directly; only
    when the text holds more system tokens than those places account for does a full walk run.
    """
    rtype = res["resourceType"]
    tokens = text.count(_NPI_TOKEN) + text.count(_TIN_TOKEN)
    found = 0
    idents = res.get("identifier")
    if isinstance(idents, list):
        for ident in idents:
            if isinstance(ident, dict) and ident.get("system") in (S.SYS_NPI, S.SYS_TIN):
                found += 1
                _check_identifier_value(ident, key, f"{rtype}.identifier", f)
    exts = res.get("extension")
    if isinstance(exts, list):
        for ext in exts:
            ident = ext.get("valueIdentifier") if isinstance(ext, dict) else None
            if isinstance(ident, dict) and ident.get("system") in (S.SYS_NPI, S.SYS_TIN):
                found += 1
                _check_identifier_value(ident, key, f"{rtype}.extension.valueIdentifier", f)
    if tokens > found:
        _walk_identifiers(res, rtype, key, f, top=True)


def _walk_identifiers(node: object, path: str, key: str, f: Findings, top: bool = False) -> None:
    if isinstance(node, dict):
        if not top and node.get("system") in (S.SYS_NPI, S.SYS_TIN):
            _check_identifier_value(node, key, path, f)
        for name, value in node.items():
            if top and name == "identifier":
                continue  # already checked
            if top and name == "extension":
                for ext in value if isinstance(value, list) else ():
                    if isinstance(ext, dict):
                        for k, v in ext.items():
                            if k != "valueIdentifier":
                                _walk_identifiers(v, f"{path}.extension.{k}", key, f)
                continue
            if isinstance(value, (dict, list)):
                _walk_identifiers(value, f"{path}.{name}", key, f)
    elif isinstance(node, list):
        for item in node:
            _walk_identifiers(item, path, key, f)


# -- public entry points ---------------------------------------------------------------------


def check_resources(
    resources: Iterable[dict | bytes | str],
    *,
    structural: str = "all",
    sample_size: int = 1000,
    seed: int = 0,
    assume_profiles: bool = False,
    resolve_references: bool = True,
) -> ConformReport:
    """Check a whole resource set (dicts, or JSON text per resource) in one pass."""
    checker = Checker(
        structural=structural,
        sample_size=sample_size,
        seed=seed,
        assume_profiles=assume_profiles,
        resolve_references=resolve_references,
    )
    for res in resources:
        if isinstance(res, (bytes, str)):
            checker.add_text(res)
        else:
            checker.add_dict(res)
    return checker.report()


def frame_order(types: Iterable[str]) -> list[str]:
    """Load order first (reference targets before referrers keeps the pending set small), then the rest."""
    types = list(types)
    ordered = [t for t in S.LOAD_ORDER if t in types]
    return ordered + sorted(t for t in types if t not in S.LOAD_ORDER)


def check_ndjson_frames(
    frames: Mapping[str, pl.DataFrame],
    *,
    structural: str = "all",
    sample_size: int = 1000,
    seed: int = 0,
    assume_profiles: bool = False,
    resolve_references: bool = True,
    fast: bool = True,
    proof: Proof = NOTHING,
) -> ConformReport:
    """Fast path over the fhir/ stage's frames: ``{resourceType: DataFrame[id, json]}``.

    The compact JSON text is scanned as is (no re-serialisation); the frame key must equal each
    resource's resourceType and the ``id`` column its id. With ``fast`` (the default), a
    column-wise proof that no cheap rule fires is tried first (conform/fast.py) and gives the same
    report; when it cannot prove that, every resource goes through the per-resource checker.
    ``proof`` (conform/columns.py, from the build's typed columns) lets the fast path skip its
    regexes on the types it covers; without one every type's text is proven by the regexes.
    """
    if fast:
        from atr_pipeline.conform.fast import fast_report

        report = fast_report(
            frames,
            frame_order(frames),
            structural=structural,
            sample_size=sample_size,
            seed=seed,
            assume_profiles=assume_profiles,
            resolve_references=resolve_references,
            proof=proof,
        )
        if report is not None:
            return report
    checker = Checker(
        structural=structural,
        sample_size=sample_size,
        seed=seed,
        assume_profiles=assume_profiles,
        resolve_references=resolve_references,
    )
    for rtype in frame_order(frames):
        df = frames[rtype]
        for rid, text in zip(df.get_column("id").to_list(), df.get_column("json").to_list(), strict=True):
            if text is None:
                checker.count += 1
                checker.findings.add("json.parse", f"{rtype}/#{checker.count}")
                continue
            checker.add_text(text, expected_type=rtype, expected_id=rid)
    return checker.report()
