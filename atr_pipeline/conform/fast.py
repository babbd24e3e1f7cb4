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

Memory: ``frames`` may be a lazy mapping that reads a type from disk on every access. Each type
is read once, in ``order``, checked, and dropped before the next; only its ``Type/id`` keys, the
unique reference targets it names and the sample rows that fall in it are kept. References are
resolved once every type has been seen; the reservoir is drawn type by type (no total needed).

Conservative by design: any text the expressions do not admit (escapes, ``null`` or empty
elements, NPI/TIN systems in the bulk types, extensions they do not know) sends the whole set
to the per-resource path. It can only be slower than needed, never report something else.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from itertools import pairwise

import msgspec
import orjson
import polars as pl

from atr_pipeline import systems as S
from atr_pipeline.conform.columns import NOTHING, Proof
from atr_pipeline.conform.findings import Findings
from atr_pipeline.conform.report import ConformReport
from atr_pipeline.conform.rules import MOJIBAKE_PATTERN
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
    + rf'(?:,"extension":\[\{{"url":{_lit(S.EXT_INSURANCE_PRODUCT_TYPE)},'
    + rf'"valueCodeableConcept":\{{"coding":\[{_coding(S.CS_INSURANCE_PRODUCT_TYPE, S.PRODUCT_TYPES)}\]\}}\}}\])?'
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


def _bulk_check(rtype: str, df: pl.DataFrame) -> pl.Series | None:
    """One bulk text column (a templated type's frame, or Group member array bodies in ``json``):
    the reference targets it names, or None when its grammar, column checks or (Coverage, Group)
    period order do not admit every row. Slices of ~BULK_SLICE_BYTES run in one ``collect_all``:
    one scan of a text column is single-threaded, and the slices keep both cores busy on this
    type alone, so only one type's text needs to be in memory at a time."""
    text = pl.col("json")
    check = text.str.contains(MEMBERS).all() if rtype == "Group" else _template_check(rtype)
    if rtype in ("Coverage", "Group"):  # the types whose grammar admits start + end periods
        check = check & _periods_ordered_expr()
    # The escape-free rule rides along in the same slice queries (a literal scan, both cores).
    check = check & (~text.str.contains("\\", literal=True)).all()
    # text.mojibake: a hit declines the set, and the per-resource path names the resources.
    check = check & (~text.str.contains(MOJIBAKE_PATTERN)).all()
    queries: list[pl.LazyFrame] = []
    for offset, length in _byte_slices(df.get_column("json")):
        part = df.lazy().slice(offset, length)
        queries += [part.select(check.alias("ok")), part.select(_reference_expr())]
    done = pl.collect_all(queries)
    if not all(bool(done[i].item()) for i in range(0, len(done), 2)):
        return None
    return pl.concat([done[i].to_series() for i in range(1, len(done), 2)]).unique()


BULK_SLICE_BYTES = 64 * 2**20
GROUP_CHUNK_BYTES = 4 * BULK_SLICE_BYTES  # still several slices per chunk: both cores busy


def _byte_slices(texts: pl.Series, size: int | None = None) -> list[tuple[int, int]]:
    """(offset, length) row ranges of ``texts`` holding about ``size`` (BULK_SLICE_BYTES) bytes
    each, in order."""
    size = size or BULK_SLICE_BYTES
    cum = texts.str.len_bytes().cast(pl.Int64).fill_null(0).cum_sum()
    total = int(cum[-1]) if cum.len() else 0
    cuts = [0]
    for k in range(1, total // size + 1):
        cut = int(cum.search_sorted(k * size, side="left")) + 1
        if cuts[-1] < cut < texts.len():
            cuts.append(cut)
    cuts.append(texts.len())
    return [(a, b - a) for a, b in pairwise(cuts)]


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


def fast_report(
    frames: Mapping[str, pl.DataFrame],
    order: list[str],
    *,
    structural: str,
    sample_size: int,
    seed: int,
    assume_profiles: bool,
    resolve_references: bool,
    proof: Proof = NOTHING,
) -> ConformReport | None:
    """The report of the per-resource path for ``frames`` in ``order``, or None (see module doc).

    ``frames[rtype]`` is read exactly once per type, in ``order``, and dropped before the next
    type: a lazy mapping that loads each type from disk on access keeps one type in memory; one
    with ``iter_parts`` (the staged build) is read part by part, so only one part is.
    What outlives a type is small: its ``Type/id`` keys, the unique reference targets it names,
    and the structural sample's rows that fall in it.

    A type ``proof`` covers (conform/columns.py: its rows' typed columns were proven before the
    templates wrote them) skips the regexes: every line is still parsed as JSON and checked
    against its frame's type and id, and still feeds the structural sample; its references are
    trusted to resolve (the builders name only resources they build), the other types' are not."""
    from atr_pipeline.conform.checker import Checker

    if structural not in ("sample", "none"):
        return None
    scratch = Checker(structural="none", assume_profiles=assume_profiles, resolve_references=resolve_references)
    sample = _Reservoir(sample_size if structural == "sample" else 0, seed)
    reference_sets: list[pl.Series] = []
    keys: list[pl.Series] = []
    by_type: dict[str, int] = {}
    for rtype in order:
        type_keys: list[pl.Series] = []
        for df in _parts(frames, rtype):
            if df.height == 0:
                continue
            df = df.select("id", "json")
            refs = _check_proven(rtype, df) if proof.covers(rtype) else _check_type(rtype, df, scratch)
            if refs is None or scratch.findings._hits:
                return None
            by_type[rtype] = by_type.get(rtype, 0) + df.height
            type_keys.append((f"{rtype}/" + df.get_column("id")).alias("key"))
            reference_sets.append(refs)
            sample.advance(rtype, df)
            del df
        # _check_type saw each part alone: ids must also be unique across the type's parts.
        if len(type_keys) > 1 and pl.concat(type_keys).is_duplicated().any():
            return None
        keys += type_keys

    if resolve_references:
        present = pl.concat(keys) if keys else pl.Series("key", [], dtype=pl.String)
        pending = pl.Series("ref", list(scratch.findings._pending), dtype=pl.String)
        refs = pl.concat([*(s.alias("ref") for s in reference_sets), pending])
        if refs.len() and not bool(refs.is_in(present.implode()).all()):
            return None

    findings = Findings(resolve_references=False)
    for rtype, rid, text in sample.rows():
        check_structure(orjson.loads(text), rtype, f"{rtype}/{rid}", findings)
    return ConformReport(
        resources_checked=sum(by_type.values()),
        structurally_checked=sample.count,
        by_type=dict(sorted(by_type.items())),
        results=findings.results(),
    )


_NO_REFS = pl.Series("ref", [], dtype=pl.String)


def _parts(frames: Mapping[str, pl.DataFrame], rtype: str) -> Iterator[pl.DataFrame]:
    """One type's rows: part by part when the mapping can (publish.export.StagedResources reads
    one NDJSON part at a time, so a 5M-member Coverage never sits in memory whole), else the
    frame, read once (a lazy mapping loads it from disk here)."""
    iter_parts = getattr(frames, "iter_parts", None)
    if iter_parts is not None:
        yield from iter_parts(rtype)
    else:
        yield frames[rtype]


def _check_type(rtype: str, df: pl.DataFrame, scratch) -> pl.Series | None:
    """One type's frame (``id``, ``json``): the reference targets it names that are not yet
    checked (templated types, Group members), or None when a cheap rule might fire. Small types
    and Group headers are fed to ``scratch`` (the caller checks it found nothing)."""
    from atr_pipeline.conform.checker import _walk_null_empty

    ids = df.get_column("id")
    if ids.null_count() or ids.is_duplicated().any() or df.get_column("json").null_count():
        return None
    if rtype in TEMPLATES:
        refs = _bulk_check(rtype, df)  # grammar, column checks, escapes, (Coverage) period order
        if refs is None:
            return None
        # The grammar admits no null or empty element except inside free-text strings: the
        # literal hits are candidates for the exact walk.
        for text in _null_or_empty_candidates(df).to_list():
            probe = Findings(resolve_references=False)
            _walk_null_empty(orjson.loads(text), rtype, rtype, probe)
            if probe.results():
                return None
        return refs
    if rtype == "Group":
        # Groups ~GROUP_CHUNK_BYTES at a time: the header/body split copies the text, and at 1M
        # members one file holds ~0.6 GB of member arrays (a copy of all of it was the peak).
        found: list[pl.Series] = []
        for offset, length in _byte_slices(df.get_column("json"), GROUP_CHUNK_BYTES):
            refs = _check_groups(df.slice(offset, length), scratch)
            if refs is None:
                return None
            found.append(refs)
        return pl.concat(found).unique() if found else _NO_REFS
    if df.height <= SCRATCH_LIMIT:
        if df.get_column("json").str.contains("\\", literal=True).any():
            return None
        for rid, text in zip(ids.to_list(), df.get_column("json").to_list(), strict=True):
            scratch.add_text(text, expected_type=rtype, expected_id=rid)
        return _NO_REFS  # the scratch checker keeps their references as pending
    return None


class _Head(msgspec.Struct):
    """What a proven line must say of itself; msgspec parses the rest of the line without
    building it (a 1M-member month's Group lines are ~0.6 GB of member arrays: orjson.loads
    made every entry a dict, ~8 CPU s, and ~17 s for the month's lines, the run's largest cost)."""

    resourceType: str
    id: str


_HEAD = msgspec.json.Decoder(_Head)
# orjson refuses numbers that overflow a double (``1e999``); msgspec skips an unknown field
# without converting it, so such a line would parse here. A number with an exponent of three
# or more digits sends the part to orjson (any that fails there is declined as before).
_HUGE_EXPONENT = r"[:,\[]\s*-?[0-9]+(?:\.[0-9]+)?[eE][+-]?[0-9]{3}"


def _check_proven(rtype: str, df: pl.DataFrame) -> pl.Series | None:
    """A proven type's frame (``id``, ``json``): no reference targets to resolve (see
    ``fast_report``), or None when a line is not a JSON object of this type and id. Every line
    is parsed whole (msgspec validates the entire text, skipping only the building of fields it
    is not asked for), and a line orjson (the per-resource checker's parser) would report as
    ``json.parse``, or a type or id mismatch, is declined here, never passed."""
    ids = df.get_column("id")
    if ids.null_count() or ids.is_duplicated().any() or df.get_column("json").null_count():
        return None
    decode = _HEAD.decode
    # ~BULK_SLICE_BYTES of text as Python strings at a time (a 1M-member Group file is ~0.6 GB).
    for offset, length in _byte_slices(df.get_column("json")):
        part = df.slice(offset, length)
        if part.select(pl.col("json").str.contains(_HUGE_EXPONENT).any()).item():
            if not _orjson_heads(rtype, part):
                return None
            continue
        for rid, text in zip(part.get_column("id").to_list(), part.get_column("json").to_list(), strict=True):
            try:
                head = decode(text)
            except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
                return None
            if head.resourceType != rtype or head.id != rid:
                return None
    return _NO_REFS


def _orjson_heads(rtype: str, part: pl.DataFrame) -> bool:
    """Every line of ``part`` parses with orjson as an object of this type and id."""
    loads = orjson.loads
    for rid, text in zip(part.get_column("id").to_list(), part.get_column("json").to_list(), strict=True):
        try:
            res = loads(text)
        except orjson.JSONDecodeError:
            return False
        if type(res) is not dict or res.get("resourceType") != rtype or res.get("id") != rid:
            return False
    return True


def _check_groups(df: pl.DataFrame, scratch) -> pl.Series | None:
    """Group rows: headers (without ``member``) to ``scratch``, member arrays to the grammar."""
    split = _split_groups(df)
    if split is None:
        return None
    heads, bodies = split
    if heads.str.contains("\\", literal=True).any():
        return None  # escapes anywhere decline the set (the bodies: in _bulk_check)
    for rid, head in zip(df.get_column("id").to_list(), heads.to_list(), strict=True):
        scratch.add_text(head, expected_type="Group", expected_id=rid)
    del heads
    # Member grammar (no null or empty element), escapes and period order.
    return _bulk_check("Group", bodies.to_frame("json"))


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


class _Reservoir:
    """Checker's seeded reservoir sample replayed type by type over the same stream order.

    Checker draws ``rng.randrange(seen)`` for every resource after the first ``size``; the draws
    depend only on the stream position, so feeding one type's frame at a time gives the same
    positions as knowing the total up front. The kept rows (type, id, text) are copied while
    their type is loaded; a row replaced by a later draw is dropped."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.rng = random.Random(seed)
        self.positions: list[int] = []  # stream position per slot, in the sample's list order
        self.seen = 0
        self._rows: list[tuple[str, str, str]] = []

    def advance(self, rtype: str, df: pl.DataFrame) -> None:
        first = self.seen
        self.seen = _draw(self.rng, self.positions, first, df.height, self.size)
        slots = [slot for slot, pos in enumerate(self.positions) if pos >= first]
        if not slots:
            return
        picked = df[[self.positions[slot] - first for slot in slots]]
        self._rows += [(rtype, "", "")] * (len(self.positions) - len(self._rows))
        for slot, rid, text in zip(slots, picked.get_column("id").to_list(), picked.get_column("json").to_list(), strict=True):
            self._rows[slot] = (rtype, rid, text)

    @property
    def count(self) -> int:
        return len(self.positions)

    def rows(self) -> list[tuple[str, str, str]]:
        return self._rows


def _draw(rng: random.Random, sample: list[int], seen: int, n: int, size: int) -> int:
    """Advance a reservoir of ``size`` stream positions over positions ``seen .. seen+n-1``;
    returns the new ``seen``. ``sample[j] = position`` exactly where Checker's reservoir puts it."""
    end = seen + n
    if size == 0:
        return end  # no sample: Checker draws nothing either
    while len(sample) < size and seen < end:
        sample.append(seen)
        seen += 1
    # rng.randrange(seen) inlined: CPython's Random._randbelow_with_getrandbits, the same draws
    # (tests/test_perf_conform_round3.py checks the positions against randrange), without the two
    # Python calls per resource that took ~2 s at 1M.
    getrandbits = rng.getrandbits
    for pos in range(seen + 1, end + 1):
        k = pos.bit_length()
        j = getrandbits(k)
        while j >= pos:
            j = getrandbits(k)
        if j < size:
            sample[j] = pos - 1
    return end


def _reservoir(total: int, size: int, seed: int) -> list[int]:
    """The stream positions Checker's seeded reservoir keeps, in its final list order."""
    sample: list[int] = []
    _draw(random.Random(seed), sample, 0, total, size)
    return sample
