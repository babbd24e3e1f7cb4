"""The catalogue of conformance rules: one stable id, a severity and a sentence per rule.

Every finding the checker reports names one of these ids; the docs (docs/CONFORMANCE.md) list the
same ids, and a test keeps the two in step. Ids are ``<resource>.<element>.<what>`` for profile
rules and ``<family>.<what>`` for rules that apply anywhere (``ref.unresolved``, ``json.null``).

Value sets for the required bindings the checker enforces are defined here because systems.py
holds only the codes the pipeline emits; these are the codes a validator must accept.
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    description: str


_RULES: tuple[Rule, ...] = (
    # input and set-level rules
    Rule("json.parse", ERROR, "Line or item is not a JSON object with a resourceType"),
    Rule("json.null", ERROR, "JSON null value (FHIR forbids null; omit the element)"),
    Rule("json.empty", ERROR, "Empty string, array or object (FHIR forbids empty elements; omit them)"),
    Rule("resource.id.missing", ERROR, "Resource has no id, so nothing can reference it"),
    Rule("resource.id.duplicate", ERROR, "Same Type/id appears more than once in the set"),
    Rule("resource.type.unknown", WARNING, "Resource type is not one the ATR export contains; only structure is checked"),
    Rule("meta.profile.missing", ERROR, "meta.profile does not declare any profile (run with assume_profiles to check by type)"),
    Rule("meta.profile.wrong", ERROR, "meta.profile does not include the ATR profile for this resource type"),
    Rule("r4.structure", ERROR, "FHIR R4 (R4B models) structure error: unknown element, wrong datatype or cardinality"),
    Rule("ref.literal", ERROR, "Reference is not a literal relative reference of the form Type/id"),
    Rule("ref.target-type", ERROR, "Reference points to a resource type the profile does not allow here"),
    Rule("ref.unresolved", ERROR, "Reference Type/id does not resolve to a resource in the set"),
    Rule("ext.value-type", ERROR, "ATR extension carries the wrong value[x] type (or none)"),
    Rule("ext.context", ERROR, "ATR extension used on an element it is not defined for"),
    Rule("ext.url.unknown", ERROR, "Extension url is under the ATR StructureDefinition base but is no ATR extension"),
    Rule("npi.format", ERROR, "NPI identifier value is not exactly 10 digits"),
    Rule("npi.check-digit", ERROR, "NPI fails the Luhn check digit with prefix 80840"),
    Rule("tin.format", WARNING, "TIN identifier value is not 9 digits"),
    Rule("period.order", ERROR, "Period start is after its end (FHIR invariant per-1)"),
    Rule("text.mojibake", ERROR, "Text looks like UTF-8 read as latin-1/cp1252 (e.g. 'Ã¶' for 'ö'): the source file's encoding is wrong"),
    # Group (atr-group; davinci-patient-list for the rules it shares)
    Rule("group.type.cardinality", ERROR, "Group.type is required (1..1)"),
    Rule("group.type.binding", ERROR, "Group.type is not in the required group-type value set"),
    Rule("group.type.fixed", ERROR, "Group.type is fixed to person"),
    Rule("group.actual.fixed", ERROR, "Group.actual is required and fixed to true"),
    Rule("group.managingEntity.cardinality", ERROR, "Group.managingEntity is required (1..1)"),
    Rule("group.meta.lastUpdated.cardinality", ERROR, "atr-group requires meta.lastUpdated (1..1)"),
    Rule("group.attributionListStatus.cardinality", ERROR, "atr-group requires exactly one attributionListStatus extension"),
    Rule("group.attributionListStatus.code", ERROR, "attributionListStatus valueCode is not draft, open or final"),
    Rule("group.contractValidityPeriod.cardinality", ERROR, "contractValidityPeriod extension is 0..1"),
    Rule("group.identifier.npi.value", ERROR, "Group identifier in the NPI slice (system us-npi) has no value"),
    Rule("group.identifier.tin.value", ERROR, "Group identifier in the TIN slice (system TIN OID) has no value"),
    Rule("group.member.entity.cardinality", ERROR, "Group.member.entity is required (1..1)"),
    Rule("group.member.changeType.cardinality", ERROR, "Group.member changeType extension is 0..1"),
    Rule("group.member.changeType.code", ERROR, "changeType valueCode is not in the atr-changetype code system (e.g. 'add')"),
    Rule("group.member.coverageReference.cardinality", ERROR, "Group.member coverageReference extension is 0..1"),
    Rule("group.member.attributedProvider.cardinality", ERROR, "Group.member attributedProvider extension is 0..1"),
    Rule("group.member.dropped.inactive", ERROR, "A member with changeType dropped must have inactive = true"),
    Rule("group.member.inactive.dropped", ERROR, "An inactive member must have changeType dropped (or cancelled)"),
    # Patient (atr-patient on US Core Patient 7.0.0)
    Rule("patient.identifier.cardinality", ERROR, "Patient.identifier is required (1..*)"),
    Rule("patient.identifier.system-value", ERROR, "US Core: every Patient.identifier has system and value"),
    Rule("patient.identifier.slice.coding-count", ERROR, "Identifier in an ATR slice (v2-0203 MC/MA/MR/MB/SB) must carry exactly one type.coding"),
    Rule("patient.identifier.slice.cardinality", ERROR, "Identifier slices MC, MA and SB are 0..1"),
    Rule("patient.name.cardinality", ERROR, "Patient.name is required (1..*)"),
    Rule("patient.name.family-or-given", ERROR, "US Core us-core-6: each name has a family or a given name"),
    Rule("patient.gender.cardinality", ERROR, "US Core: Patient.gender is required (1..1)"),
    Rule("patient.gender.binding", ERROR, "Patient.gender is not male, female, other or unknown"),
    # Coverage (atr-coverage)
    Rule("coverage.status.cardinality", ERROR, "Coverage.status is required (1..1)"),
    Rule("coverage.status.binding", ERROR, "Coverage.status is not in the required financial-resource-status value set"),
    Rule("coverage.status.fixed", ERROR, "atr-coverage fixes Coverage.status to active"),
    Rule("coverage.subscriberId.cardinality", ERROR, "atr-coverage requires subscriberId (1..1)"),
    Rule("coverage.beneficiary.cardinality", ERROR, "Coverage.beneficiary is required (1..1)"),
    Rule("coverage.period.cardinality", ERROR, "atr-coverage requires period (1..1)"),
    Rule("coverage.payor.count", ERROR, "atr-coverage requires exactly one payor"),
    Rule("coverage.identifier.mb.cardinality", ERROR, "Coverage MemberIdentifier (MB) slice is 0..1"),
    Rule("coverage.identifier.mb.coding-count", ERROR, "Coverage MB identifier must carry exactly one type.coding"),
    Rule("coverage.identifier.mb.system-value", ERROR, "Coverage MB identifier needs both system and value"),
    Rule("coverage.class.plan.cardinality", ERROR, "Coverage class plan slice is 0..1"),
    Rule("coverage.class.plan.coding-count", ERROR, "Coverage class plan must carry exactly one type.coding"),
    Rule("coverage.class.plan.value", ERROR, "Coverage class plan needs a value (the plan id)"),
    Rule("coverage.insuranceProductType.cardinality", ERROR, "insuranceProductType extension is 0..1 on atr-coverage"),
    Rule("coverage.insuranceProductType.code", WARNING, "insuranceProductType code is not in plan-net InsuranceProductTypeCS (extensible)"),
    Rule("coverage.relationship.code", WARNING, "relationship code is not in subscriber-relationship (extensible)"),
    # PractitionerRole, RelatedPerson, Organization, Practitioner, Location
    Rule("practitionerrole.practitioner.cardinality", ERROR, "atr-practitionerrole requires practitioner (1..1)"),
    Rule("practitionerrole.organization.cardinality", ERROR, "atr-practitionerrole requires organization (1..1)"),
    Rule("practitionerrole.location.cardinality", ERROR, "atr-practitionerrole allows at most one location (0..1)"),
    Rule("relatedperson.patient.cardinality", ERROR, "RelatedPerson.patient is required (1..1)"),
    Rule("organization.name.cardinality", ERROR, "US Core: Organization.name is required (1..1)"),
    Rule("organization.active.cardinality", ERROR, "US Core: Organization.active is required (1..1)"),
    Rule("practitioner.identifier.cardinality", ERROR, "US Core: Practitioner.identifier is required (1..*)"),
    Rule("practitioner.name.cardinality", ERROR, "US Core / atr-practitioner: Practitioner.name is required (1..*)"),
    Rule("practitioner.name.family", ERROR, "US Core: Practitioner.name.family is required (1..1)"),
    Rule("location.name.cardinality", ERROR, "US Core: Location.name is required (1..1)"),
    # bulk export / NDJSON frames
    Rule("export.file-missing", ERROR, "A file listed in manifest.json is not in the export directory"),
    Rule("export.count-mismatch", ERROR, "manifest.json count differs from the number of lines in the file"),
    Rule("export.type-mismatch", ERROR, "A resource's resourceType differs from the type of its file or frame"),
    Rule("export.id-mismatch", ERROR, "A frame's id column differs from the id inside the resource JSON"),
    Rule("export.blank-line", WARNING, "Blank line inside an NDJSON file"),
    Rule("export.file-unlisted", ERROR, "An NDJSON file in the export directory is not listed in manifest.json"),
    Rule("export.output-empty", ERROR, "manifest.json lists no output files"),
    Rule("export.type-absent", ERROR, "The export has no Group, Patient or Coverage file: an ATR export needs all three"),
)

RULES: dict[str, Rule] = {r.id: r for r in _RULES}

# text.mojibake: the UTF-8 lead bytes of U+0080..U+00FF (C2, C3) read as latin-1 or cp1252 are
# 'Â' and 'Ã', each then followed by what its continuation byte (80..BF) decodes to: a Latin-1
# supplement character, a C1 control, or one of cp1252's characters at 80..9F. Real names
# ('JOÃO', 'SÃO') put a letter after 'Ã', not one of these.
MOJIBAKE_PATTERN = "[ÂÃ][\u0080-\u00bf€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ]"
MOJIBAKE_BYTES = ("Â".encode(), "Ã".encode())  # a byte pre-check before any regex
