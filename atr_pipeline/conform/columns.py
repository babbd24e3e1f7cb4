"""The cheap rules proven on the typed columns, before the fhir/ templates write any text.

In: the member rows ``fhir.build`` is given (canonical columns + ``change_type`` + ``inactive``)
and its BuildContext. Out: ``column_rules`` (the cheap rules those values could make the built
resources break) and ``prove`` (a ``Proof``: per bulk type, the cheap rules proven silent on it).
``pipeline.check_month`` hands the proof to conform/fast.py, which then skips its regex proof of
the written text for the types the proof covers, and still parses every written line as JSON,
checks each line's type and id against its frame, runs the R4B structure check on the plan's
sample and runs every rule of every type the proof does not cover.

Why it may be trusted: the templates are fixed strings around the columns' values (fhir/json.py
escapes every value), so what a resource can break is decided by the values alone.
tests/test_conform_templates.py binds each template in TRUSTED to every rule it is trusted for:
on random rows (hostile text included) every rule the per-resource checker fires on a type must
be predicted here, and a changed template makes that property fail.

Conservative by design: any predicted rule leaves every type trusted for it unproven (its text
is then proven by the regexes as before, and a finding is reported exactly as before), and a
BuildContext this module cannot vouch for (a payer system spelled like the NPI or TIN system,
empty or mojibake strings, an invalid recipient NPI/TIN) proves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from atr_pipeline import systems as S
from atr_pipeline.conform.rules import MOJIBAKE_PATTERN, RULES
from atr_pipeline.validate.identifiers import npi_is_valid, tin_is_valid

# Checked on the written text even for a proven type (cheap, literal or one JSON parse per line):
# they are about the frame and the lines, which no column decides.
CHECKED_ON_TEXT = frozenset({"json.parse", "export.type-mismatch", "export.id-mismatch", "resource.id.missing", "resource.id.duplicate"})

# Rules any resource can break, whatever its type (references, extensions, JSON hygiene, ...).
_ANY_TYPE = frozenset(
    r for r in RULES
    if r.split(".")[0] in ("json", "resource", "meta", "ref", "ext", "npi", "tin", "period", "text")
    and r not in CHECKED_ON_TEXT and r != "resource.type.unknown"
)


def _trusted(rtype: str) -> frozenset[str]:
    return _ANY_TYPE | {r for r in RULES if r.startswith(rtype.lower() + ".")}


# The bulk types (one resource per member entry) whose templates the proof covers, each with every
# cheap rule the per-resource checker applies to it. The small types (Organization, Practitioner,
# PractitionerRole: one per provider or payer) keep the per-resource checker: it costs little there.
TRUSTED: dict[str, frozenset[str]] = {t: _trusted(t) for t in ("Patient", "RelatedPerson", "Coverage", "Group")}

_NAMES = ("family_name", "given_name", "middle_name", "name_prefix", "name_suffix")


@dataclass(frozen=True)
class Proof:
    """Per resource type, the cheap rules the typed columns proved no resource of it breaks."""

    rules: dict[str, frozenset[str]] = field(default_factory=dict)

    def covers(self, rtype: str) -> bool:
        """True when every rule ``rtype``'s template is trusted for is proven: its text needs no regex."""
        trusted = TRUSTED.get(rtype)
        return trusted is not None and trusted <= self.rules.get(rtype, frozenset())


NOTHING = Proof()


def column_rules(rows: pl.DataFrame) -> set[str]:
    """The cheap rules the typed values of ``rows`` could make the built resources break."""
    rules: set[str] = set()
    # The periods the builders write (period.order compares dates):
    # * Coverage: the representative row's coverage dates, so any row's pair is checked;
    # * Coverage without them: min attribution_start (else the reporting month) to max
    #   attribution_end of its rows. min start > max end puts every row's start after its end,
    #   and with no start at all the representative's reporting month after its end: a row check;
    # * Group member: the row's attribution pair (the same row check);
    # * Group contractValidityPeriod: min contract_start to max contract_end per payer + contract.
    start, end = pl.col("attribution_start"), pl.col("attribution_end")
    period = (
        (pl.col("coverage_start") > pl.col("coverage_end")).any()
        | (pl.coalesce(start, pl.col("reporting_month")) > end).any()
    )
    # The four columns first: grouping the whole member list by two string keys copied every
    # column of it (a list read from history is two chunks; the group-by made them one), +765 MB
    # at 1M entries and the run's peak, for a 200-row answer.
    contracts = (
        rows.select("payer_id", "contract_id", "contract_start", "contract_end")
        .group_by("payer_id", "contract_id")
        .agg(pl.col("contract_start").min(), pl.col("contract_end").max())
    )
    contract_period = contracts.select((pl.col("contract_start") > pl.col("contract_end")).any()).item()
    texts = [c for c, t in rows.schema.items() if t == pl.String()]
    names = [pl.col(c).is_null() for c in _NAMES]
    flags = rows.select(
        period=period | pl.lit(bool(contract_period)),
        mojibake=pl.any_horizontal(pl.col(c).str.contains(MOJIBAKE_PATTERN) for c in texts).any(),
        empty=pl.any_horizontal(pl.col(c) == "" for c in texts).any(),
        no_name=pl.all_horizontal(names).any(),
        no_family_given=(pl.all_horizontal(names[:3]) & ~pl.all_horizontal(names[3:])).any(),
        no_org_name=(
            pl.col("payer_name").is_null() | pl.col("provider_org_name").is_null()
            | (pl.col("settlement_entity_id").is_not_null() & pl.col("settlement_entity_name").is_null())
        ).any(),
        no_practitioner_name=pl.col("provider_family_name").is_null().any() | pl.col("provider_given_name").is_null().any(),
        no_npi=pl.col("provider_npi").is_null().any(),
    ).row(0, named=True)
    for flag, found in (
        ("period", {"period.order"}),
        ("mojibake", {"text.mojibake"}),
        ("empty", {"json.empty"}),
        ("no_name", {"patient.name.cardinality"}),
        ("no_family_given", {"patient.name.family-or-given"}),
        ("no_org_name", {"organization.name.cardinality"}),
        ("no_practitioner_name", {"practitioner.name.cardinality", "practitioner.name.family"}),
        ("no_npi", {"practitioner.identifier.cardinality"}),
    ):
        if flags[flag]:  # None (no rows) counts as nothing found
            rules |= found
    # NPIs and TINs repeat across members: each distinct value is checked once.
    for column in ("provider_npi", "provider_org_npi"):
        if not all(npi_is_valid(v) for v in rows[column].drop_nulls().unique().to_list()):
            rules |= {"npi.format", "npi.check-digit"}
    if not all(tin_is_valid(v) for v in rows["provider_tin"].drop_nulls().unique().to_list()):
        rules.add("tin.format")
    for column, allowed, rule in (
        ("gender", S.GENDERS, "patient.gender.binding"),
        ("relationship", S.RELATIONSHIPS, "coverage.relationship.code"),
        ("product_type", S.PRODUCT_TYPES, "coverage.insuranceProductType.code"),
        ("change_type", S.CHANGE_TYPES, "group.member.changeType.code"),
    ):
        if not rows[column].drop_nulls().is_in(list(allowed)).all():
            rules.add(rule)
    return rules


def context_vouched(ctx) -> bool:
    """True when the BuildContext's own strings cannot break a rule the columns do not see
    (``ctx`` is a fhir.context.BuildContext; the property test builds with a plain one)."""
    import re

    strings = [v for v in ctx.systems.model_dump().values() if v is not None]
    if ctx.payer_name is not None:
        strings.append(ctx.payer_name)
    strings += [ctx.list_status, *ctx.group_statuses.values()]
    recipient = ctx.intended_recipient
    if recipient is not None:
        strings += [recipient.system, recipient.value]
        if recipient.system == S.SYS_NPI and not npi_is_valid(recipient.value):
            return False
        if recipient.system == S.SYS_TIN and not tin_is_valid(recipient.value):
            return False
    if any(not s or re.search(MOJIBAKE_PATTERN, s) for s in strings):
        return False
    # A payer system spelled like the NPI or TIN system would make the identifier rules apply
    # to member ids the columns were not checked for.
    return not ({S.SYS_NPI, S.SYS_TIN} & set(ctx.systems.model_dump().values()))


def prove(rows: pl.DataFrame, ctx) -> Proof:
    """The rules proven per type for resources built from ``rows`` with ``ctx`` (see module doc)."""
    if not context_vouched(ctx):
        return NOTHING
    broken = column_rules(rows)
    return Proof({t: trusted - broken for t, trusted in TRUSTED.items()})
