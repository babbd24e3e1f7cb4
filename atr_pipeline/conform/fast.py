"""Column-wise proof that a set of (id, json) frames has no cheap-rule findings.

In: the frames ``check_ndjson_frames`` takes (``{resourceType: DataFrame[id, json]}``) and its
options. Out: the ``ConformReport`` the per-resource ``Checker`` would produce, or ``None`` when
this module cannot prove every cheap rule silent; the caller then runs the per-resource path,
which reports whatever is wrong exactly as before. Refused: ``structural="all"`` (every resource
goes through the R4B models anyway, so there is nothing to save).

How: the bulk types (Patient, Coverage, RelatedPerson, and the member array of each Group) are
matched, whole text at once, against anchored regular expressions that admit only JSON the
profile rules in profiles.py pass: fixed key order, non-empty escape-free strings, codes from the
required value sets, references of the allowed target types with UUID ids, ``inactive``
consistent with the change type. A match fixes the parse, so the rules that regexes cannot
express are checked as columns: slice counts, period order, id column = JSON id, unique ids,
and every reference resolving to a resource in the set. Small frames and Group headers (the Group
text without its member array) go through the real ``Checker`` on a scratch ``Findings``; they
must come back empty. The seeded reservoir sample is replayed over the same stream order, so
the structural findings are the same resources in the same order as the per-resource path.

Conservative by design: any text the expressions do not admit (escapes, ``null`` or empty
elements, NPI/TIN systems in the bulk types, extensions they do not know) sends the whole set
to the per-resource path. It can only be slower than needed, never report something else.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import orjson
import polars as pl

from atr_pipeline import systems as S
from atr_pipeline.conform.findings import Findings
from atr_pipeline.conform.report import ConformReport
from atr_pipeline.conform.structure import check_structure

# Frames up to this size that have no template are checked per resource on a scratch checker.
SCRATCH_LIMIT = 50_000


def _lit(value: str) -> str:
    """A regex for the JSON text of ``value`` (the characters URLs and codes use)."""
    out = orjson.dumps(value).decode()
    for ch in "\\.+*?()|[]{}^$":
        out = out.replace(ch, "\\" + ch)
    return out


def _alt(values) -> str:
    return "(?:" + "|".join(_lit(v) for v in sorted(values)) + ")"


STR = r'"[^"\\\x00-\x1f]+"'  # non-empty, no escapes, no control characters
LIST = rf"\[{STR}(?:,{STR})*\]"
KEY = r'"[A-Za-z_][A-Za-z0-9_]*"'
FLAT = rf"\{{{KEY}:(?:{STR}|{LIST})(?:,{KEY}:(?:{STR}|{LIST}))*\}}"  # object of strings/string lists
FLATS = rf"\[{FLAT}(?:,{FLAT})*\]"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
DATE = r'"[0-9][0-9T:.+\-Z]*"'  # dates and dateTimes: cannot spell a system URL
REF_TARGET = rf"[A-Z][A-Za-z]+/{UUID}"


def _ref(*types: str) -> str:
    return rf'\{{"reference":"(?:{"|".join(types)})/{UUID}"\}}'


def _head(rtype: str) -> str:
    return rf'^\{{"resourceType":"{rtype}","id":"{UUID}","meta":\{{"profile":\[{_lit(S.PROFILE_BY_TYPE[rtype])}\]\}}'


def _coding(system: str, codes) -> str:
    return rf'\{{"system":{_lit(system)},"code":{_alt(codes)}(?:,"display":{STR})?\}}'


_NAME = rf'\{{(?:"family":{STR}(?:,"given":{LIST})?|"given":{LIST})(?:,"prefix":{LIST})?(?:,"suffix":{LIST})?\}}'
_PATIENT_IDENT = (
    rf'\{{"type":\{{"coding":\[{_coding(S.CS_V2_0203, (S.ID_TYPE_MEMBER, S.ID_TYPE_MEDICARE, S.ID_TYPE_MEDICAID, S.ID_TYPE_MRN, S.ID_TYPE_SSN))}\]\}},'
    rf'"system":{STR},"value":{STR}\}}'
)

PATIENT = (
    _head("Patient")
    + rf',"identifier":\[{_PATIENT_IDENT}(?:,{_PATIENT_IDENT})*\]'
    + rf',"name":\[{_NAME}(?:,{_NAME})*\]'
    + rf'(?:,"telecom":{FLATS})?'
    + rf',"gender":{_alt(S.GENDERS)}'
    + rf'(?:,"birthDate":{DATE})?(?:,"deceasedDateTime":{DATE})?'
    + rf'(?:,"address":{FLATS})?\}}$'
)

COVERAGE = (
    _head("Coverage")
    + rf'(?:,"extension":\[\{{"url":{_lit(S.EXT_INSURANCE_PRODUCT_TYPE)},"valueCodeableConcept":\{{"coding":\[{_coding(S.CS_INSURANCE_PRODUCT_TYPE, S.PRODUCT_TYPES)}\]\}}\}}\])?'
    + rf'(?:,"identifier":\[\{{"type":\{{"coding":\[{_coding(S.CS_V2_0203, (S.ID_TYPE_MEMBER,))}\]\}},"system":{STR},"value":{STR}\}}\])?'
    + r',"status":"active"'
    + rf'(?:,"subscriber":{_ref("Patient", "RelatedPerson")})?'
    + rf',"subscriberId":{STR}'
    + rf',"beneficiary":{_ref("Patient")}'
    + rf'(?:,"relationship":\{{"coding":\[{_coding(S.CS_SUBSCRIBER_RELATIONSHIP, S.RELATIONSHIPS)}\]\}})?'
    + rf',"period":\{{"start":{DATE}(?:,"end":{DATE})?\}}'
    + rf',"payor":\[{_ref("Patient", "RelatedPerson", "Organization")}\]'
    + rf'(?:,"class":\[\{{"type":\{{"coding":\[\{{"system":{_lit(S.CS_COVERAGE_CLASS)},"code":"plan"\}}\]\}},"value":{STR}(?:,"name":{STR})?\}}\])?'
    + r"\}$"
)

_CONCEPT = rf'\{{"coding":\[\{{"system":{STR},"code":{STR}(?:,"display":{STR})?\}}\]\}}'
RELATED_PERSON = (
    _head("RelatedPerson")
    + rf'(?:,"identifier":{FLATS})?'
    + rf',"patient":{_ref("Patient")}'
    + rf'(?:,"relationship":\[{_CONCEPT}(?:,{_CONCEPT})*\])?'
    + rf'(?:,"name":\[{_NAME}(?:,{_NAME})*\])?\}}$'
)

# One Group.member entry; inactive must agree with the change type (dropped -> true; new,
# changed, nochange -> false; cancelled -> either).
_MEMBER_REST = (
    rf'"\}}(?:,\{{"url":{_lit(S.EXT_COVERAGE_REFERENCE)},"valueReference":{_ref("Coverage")}\}})?'
    rf'(?:,\{{"url":{_lit(S.EXT_ATTRIBUTED_PROVIDER)},"valueReference":{_ref("Organization", "Practitioner", "PractitionerRole")}\}})?'
    rf'\],"entity":{_ref("Patient")}'
    rf'(?:,"period":\{{(?:"start":{DATE}(?:,"end":{DATE})?|"end":{DATE})\}})?,"inactive":'
)
MEMBER = (
    rf'\{{"extension":\[\{{"url":{_lit(S.EXT_CHANGE_TYPE)},"valueCode":"'
    rf"(?:(?:new|changed|nochange){_MEMBER_REST}false|dropped{_MEMBER_REST}true|cancelled{_MEMBER_REST}(?:true|false))\}}"
)
MEMBERS = rf"^{MEMBER}(?:,{MEMBER})*$"
_MEMBER_KEY = ',"member":['

TEMPLATES: dict[str, str] = {"Patient": PATIENT, "Coverage": COVERAGE, "RelatedPerson": RELATED_PERSON}
_PERIOD_PAIR = rf'"start":({DATE}),"end":({DATE})'
_SINGLE_SLICES = (S.ID_TYPE_MEDICARE, S.ID_TYPE_MEDICAID, S.ID_TYPE_SSN)
_SYSTEM_TOKENS = (orjson.dumps(S.SYS_NPI).decode(), orjson.dumps(S.SYS_TIN).decode())


def _all(df: pl.DataFrame, expr: pl.Expr) -> bool:
    return bool(df.select(expr.all()).item()) if df.height else True


def _periods_ordered_expr() -> pl.Expr:
    """True when every ``"start":..,"end":..`` pair of ``json`` has start[:10] <= end[:10] (the
    period.order rule); an aggregate, so it runs inside the bulk queries."""
    pairs = pl.col("json").str.extract_all(_PERIOD_PAIR).explode(empty_as_null=True).drop_nulls()
    g = pairs.str.extract_groups(_PERIOD_PAIR)
    start = g.struct.field("1").str.slice(1, 10).str.strip_suffix('"')
    end = g.struct.field("2").str.slice(1, 10).str.strip_suffix('"')
    return (~(start > end).any()).alias("ok")


def _template_check(rtype: str) -> pl.Expr:
    """One boolean (all rows admitted) for a templated type's frame: the regex plus the column checks."""
    text = pl.col("json")
    prefix = len(f'{{"resourceType":"{rtype}","id":"')
    checks = [
        text.is_not_null(),
        text.str.contains(TEMPLATES[rtype]),
        text.str.slice(prefix, 36) == pl.col("id"),
        *(~text.str.contains(t, literal=True) for t in _SYSTEM_TOKENS),
    ]
    if rtype == "Patient":
        checks += [text.str.count_matches(f'"code":"{c}"', literal=True) <= 1 for c in _SINGLE_SLICES]
    return pl.all_horizontal(checks).all()


def _bulk_checks(bulk: Mapping[str, pl.DataFrame]) -> dict[str, tuple[bool, pl.Series]]:
    """Per bulk text column: (admitted by its grammar, the reference targets it names), computed
    in one ``collect_all`` so the types' regex scans run on both cores at once instead of one
    after the other. Keys are the templated types and ``"Group"`` (the member array bodies)."""
    queries: list[pl.LazyFrame] = []
    owners: list[str] = []
    for rtype, df in bulk.items():
        check = pl.col("json").str.contains(MEMBERS).all() if rtype == "Group" else _template_check(rtype)
        if rtype in ("Coverage", "Group"):  # the types whose grammar admits start + end periods
            check = check & _periods_ordered_expr()
        # One scan of a text column is single-threaded; slices of ~BULK_SLICE_BYTES give both
        # cores work of similar size (the Coverage column alone is ~40% of the bytes at 1M).
        for offset, length in _byte_slices(df.get_column("json")):
            part = df.lazy().slice(offset, length)
            queries += [part.select(check.alias("ok")), part.select(_reference_expr())]
            owners.append(rtype)
    done = pl.collect_all(queries)
    out: dict[str, tuple[bool, pl.Series]] = {}
    for rtype in bulk:
        parts = [i for i, owner in enumerate(owners) if owner == rtype]
        admitted = all(bool(done[2 * i].item()) for i in parts)
        refs = pl.concat([done[2 * i + 1].to_series() for i in parts]).unique()
        out[rtype] = (admitted, refs)
    return out


BULK_SLICE_BYTES = 64 * 2**20


def _byte_slices(texts: pl.Series) -> list[tuple[int, int]]:
    """(offset, length) row ranges of ``texts`` holding about BULK_SLICE_BYTES each, in order."""
    cum = texts.str.len_bytes().cast(pl.Int64).fill_null(0).cum_sum()
    total = int(cum[-1]) if cum.len() else 0
    cuts = [0]
    for k in range(1, total // BULK_SLICE_BYTES + 1):
        cut = int(cum.search_sorted(k * BULK_SLICE_BYTES, side="left")) + 1
        if cuts[-1] < cut < texts.len():
            cuts.append(cut)
    cuts.append(texts.len())
    return [(a, b - a) for a, b in zip(cuts, cuts[1:])]


def _null_or_empty_candidates(df: pl.DataFrame) -> pl.Series:
    text = pl.col("json")
    hit = pl.any_horizontal([text.str.contains(t, literal=True) for t in ("null", '""', "[]", "{}")])
    return df.filter(hit).get_column("json")


# Every Reference the grammars admit is spelled {"reference":"Type/uuid"}; the literal prefix lets
# the regex engine jump between candidates instead of trying every capital letter.
_REFERENCE = rf'"reference":"{REF_TARGET}"'
_REFERENCE_PREFIX = len('"reference":"')


def _reference_expr() -> pl.Expr:
    found = pl.col("json").str.extract_all(_REFERENCE).explode(empty_as_null=True).drop_nulls()
    return found.str.slice(_REFERENCE_PREFIX).str.strip_suffix('"').unique().alias("ref")


def _references(texts: pl.Series) -> pl.Series:
    return texts.to_frame("json").select(_reference_expr()).to_series()


def fast_report(
    frames: Mapping[str, pl.DataFrame],
    order: list[str],
    *,
    structural: str,
    sample_size: int,
    seed: int,
    assume_profiles: bool,
    resolve_references: bool,
) -> ConformReport | None:
    from atr_pipeline.conform.checker import Checker, _walk_null_empty

    if structural not in ("sample", "none"):
        return None
    scratch = Checker(structural="none", assume_profiles=assume_profiles, resolve_references=resolve_references)
    reference_sets: list[pl.Series] = []
    keys: list[pl.Series] = []
    by_type: dict[str, int] = {}
    split_groups: tuple[pl.Series, pl.Series] | None = None
    bulk: dict[str, pl.DataFrame] = {}
    for rtype in order:
        df = frames[rtype]
        if df.height and rtype in TEMPLATES:
            bulk[rtype] = df.select("id", "json")
        elif df.height and rtype == "Group":
            split_groups = _split_groups(df.select("id", "json"))
            if split_groups is None:
                return None
            bulk[rtype] = split_groups[1].to_frame("json")
    bulk_results = _bulk_checks(bulk) if bulk else {}
    for rtype in order:
        df = frames[rtype].select("id", "json")
        if df.height == 0:
            continue
        by_type[rtype] = df.height
        if df.get_column("id").null_count() or df.get_column("id").is_duplicated().any():
            return None
        keys.append((f"{rtype}/" + df.get_column("id")).alias("key"))
        if df.get_column("json").null_count():
            return None
        if not _all(df, ~pl.col("json").str.contains("\\", literal=True)):
            return None
        if rtype in TEMPLATES:
            admitted, refs = bulk_results[rtype]
            if not admitted:  # grammar, column checks and (Coverage) period order
                return None
            reference_sets.append(refs)
            candidates = _null_or_empty_candidates(df)
        elif rtype == "Group":
            assert split_groups is not None
            heads = split_groups[0]
            for rid, head in zip(df.get_column("id").to_list(), heads.to_list()):
                scratch.add_text(head, expected_type=rtype, expected_id=rid)
            admitted, refs = bulk_results[rtype]
            if not admitted:  # member grammar and period order
                return None
            reference_sets.append(refs)
            candidates = pl.Series([], dtype=pl.String)  # the member grammar has no null or empty
        elif df.height <= SCRATCH_LIMIT:
            for rid, text in zip(df.get_column("id").to_list(), df.get_column("json").to_list()):
                scratch.add_text(text, expected_type=rtype, expected_id=rid)
            candidates = pl.Series([], dtype=pl.String)  # the scratch checker scanned them
        else:
            return None
        for text in candidates.to_list():
            probe = Findings(resolve_references=False)
            _walk_null_empty(orjson.loads(text), rtype, rtype, probe)
            if probe.results():
                return None
        if scratch.findings._hits:
            return None

    if resolve_references:
        present = pl.concat(keys) if keys else pl.Series("key", [], dtype=pl.String)
        pending = pl.Series("ref", list(scratch.findings._pending), dtype=pl.String)
        refs = pl.concat([*(s.alias("ref") for s in reference_sets), pending])
        if refs.len() and not bool(refs.is_in(present.implode()).all()):
            return None

    total = sum(by_type.values())
    findings = Findings(resolve_references=False)
    checked = 0
    if structural == "sample" and sample_size:
        for index in _reservoir(total, sample_size, seed):
            rtype, rid, text = _locate(frames, order, index)
            check_structure(orjson.loads(text), rtype, f"{rtype}/{rid}", findings)
            checked += 1
    return ConformReport(resources_checked=total, structurally_checked=checked, by_type=dict(sorted(by_type.items())), results=findings.results())


def _split_groups(df: pl.DataFrame) -> tuple[pl.Series, pl.Series] | None:
    """Group text -> (header text without ``member``, member array inner text), or None."""
    text = pl.col("json")
    pos = text.str.find(_MEMBER_KEY, literal=True)
    parts = df.select(
        ok=(text.str.count_matches('"member":', literal=True) == 1) & pos.is_not_null() & text.str.ends_with("]}"),
        head=pl.concat_str([text.str.slice(0, pos), pl.lit("}")]),
        body=text.str.slice(pos + len(_MEMBER_KEY), text.str.len_chars() - pos - len(_MEMBER_KEY) - 2),
    )
    if not parts.get_column("ok").fill_null(False).all():
        return None
    heads = parts.get_column("head")
    # "{" + "}" would parse although "{,"member":[...]}" does not.
    if heads.str.ends_with("{}").any():
        return None
    return heads, parts.get_column("body")


def _reservoir(total: int, size: int, seed: int) -> list[int]:
    """The stream positions Checker's seeded reservoir keeps, in its final list order."""
    rng = random.Random(seed)
    sample = list(range(min(size, total)))
    # rng.randrange(seen) inlined: CPython's Random._randbelow_with_getrandbits, the same draws
    # (tests/test_perf_conform_round3.py checks the positions against randrange), without the two
    # Python calls per resource that took ~2 s at 1M.
    getrandbits = rng.getrandbits
    for seen in range(size + 1, total + 1):
        k = seen.bit_length()
        j = getrandbits(k)
        while j >= seen:
            j = getrandbits(k)
        if j < size:
            sample[j] = seen - 1
    return sample


def _locate(frames: Mapping[str, pl.DataFrame], order: list[str], index: int) -> tuple[str, str, str]:
    for rtype in order:
        df = frames[rtype]
        if index < df.height:
            return rtype, df.get_column("id")[index], df.get_column("json")[index]
        index -= df.height
    raise IndexError(index)
