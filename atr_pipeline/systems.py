"""Every FHIR URL, identifier system and code the project uses, in one place.

Source: Da Vinci ATR 2.1.0 (hl7.fhir.us.davinci-atr), FHIR R4 4.0.1. Payer-defined systems
(member id, contract, plan, settlement entity) come from each mapping, never from here.
"""

from __future__ import annotations

ATR_BASE = "http://hl7.org/fhir/us/davinci-atr"
ATR_SD = f"{ATR_BASE}/StructureDefinition"

# Profiles (meta.profile of every resource we emit)
PROFILE_GROUP = f"{ATR_SD}/atr-group"
PROFILE_PATIENT_LIST = f"{ATR_SD}/davinci-patient-list"
PROFILE_PATIENT = f"{ATR_SD}/atr-patient"
PROFILE_COVERAGE = f"{ATR_SD}/atr-coverage"
PROFILE_PRACTITIONER = f"{ATR_SD}/atr-practitioner"
PROFILE_PRACTITIONER_ROLE = f"{ATR_SD}/atr-practitionerrole"
PROFILE_ORGANIZATION = f"{ATR_SD}/atr-organization"
PROFILE_RELATED_PERSON = f"{ATR_SD}/atr-relatedperson"
PROFILE_LOCATION = f"{ATR_SD}/atr-location"

PROFILE_BY_TYPE: dict[str, str] = {
    "Group": PROFILE_GROUP,
    "Patient": PROFILE_PATIENT,
    "Coverage": PROFILE_COVERAGE,
    "Practitioner": PROFILE_PRACTITIONER,
    "PractitionerRole": PROFILE_PRACTITIONER_ROLE,
    "Organization": PROFILE_ORGANIZATION,
    "RelatedPerson": PROFILE_RELATED_PERSON,
    "Location": PROFILE_LOCATION,
}

# Extensions
EXT_CHANGE_TYPE = f"{ATR_SD}/ext-changeType"
EXT_COVERAGE_REFERENCE = f"{ATR_SD}/ext-coverageReference"
EXT_ATTRIBUTED_PROVIDER = f"{ATR_SD}/ext-attributedProvider"
EXT_CONTRACT_VALIDITY_PERIOD = f"{ATR_SD}/ext-contractValidityPeriod"
EXT_ATTRIBUTION_LIST_STATUS = f"{ATR_SD}/ext-attributionListStatus"
EXT_INSURANCE_PRODUCT_TYPE = f"{ATR_SD}/ext-insuranceProductType"
EXT_ANY_RESOURCE = f"{ATR_SD}/atr-any-resource-extension"
EXT_INTENDED_RECIPIENT = f"{ATR_SD}/atr-intended-recipient-identifier-extension"

# Code systems
CS_CHANGE_TYPE = f"{ATR_BASE}/CodeSystem/atr-changetype"
CS_LIST_STATUS = f"{ATR_BASE}/CodeSystem/atr-attribution-list-status"
CS_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CS_COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
CS_SUBSCRIBER_RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
CS_INSURANCE_PRODUCT_TYPE = "http://hl7.org/fhir/us/davinci-pdex-plan-net/CodeSystem/InsuranceProductTypeCS"
CS_ORGANIZATION_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
CS_V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"

# exportType of an ATR $davinci-data-export (the IG uses the package id here)
ATR_EXPORT_TYPE = "hl7.fhir.us.davinci-atr"

CHANGE_TYPES = ("new", "changed", "nochange", "dropped", "cancelled")
LIST_STATUSES = ("draft", "open", "final")
GENDERS = ("male", "female", "other", "unknown")
# http://terminology.hl7.org/CodeSystem/subscriber-relationship (R4 value set, extensible)
RELATIONSHIPS = ("child", "parent", "spouse", "common", "other", "self", "injured")
# The member's relationship to the subscriber -> the subscriber's v3 RoleCode towards the member
# (RelatedPerson.relationship of the subscriber).
SUBSCRIBER_ROLE: dict[str, tuple[str, str]] = {
    "child": ("PRN", "parent"),
    "spouse": ("SPS", "spouse"),
    "common": ("DOMPART", "domestic partner"),
    "parent": ("CHILD", "child"),
}
# Required bindings checked beyond gender (FHIR R4 value sets)
GROUP_TYPES = frozenset({"person", "animal", "practitioner", "device", "medication", "substance"})
COVERAGE_STATUSES = frozenset({"active", "cancelled", "draft", "entered-in-error"})
# plan-net InsuranceProductTypeCS
PRODUCT_TYPES: dict[str, str] = {
    "commppo": "Commercial PPO",
    "commhmo": "Commercial HMO",
    "commepo": "Commercial EPO",
    "commpos": "Commercial POS",
    "commhdhp": "Commercial HDHP",
    "medicare": "Medicare",
    "mediadv": "Medicare Advantage",
    "medicaid": "Medicaid",
    "chip": "CHIP",
    "dental": "Dental",
    "vision": "Vision",
    "ihs": "Indian Health Service",
}

# v2-0203 identifier type codes used on Patient and Coverage
ID_TYPE_MEMBER = "MB"
ID_TYPE_MEDICARE = "MC"
ID_TYPE_MEDICAID = "MA"
ID_TYPE_MRN = "MR"
ID_TYPE_SSN = "SB"  # STU2+ (STU1 used SS)
ID_TYPE_NPI = "NPI"
ID_TYPE_TAX = "TAX"
ID_TYPE_DISPLAY: dict[str, str] = {
    "MB": "Member Number",
    "MC": "Patient's Medicare number",
    "MA": "Patient Medicaid number",
    "MR": "Medical record number",
    "SB": "Social Beneficiary Identifier",
    "NPI": "National provider identifier",
    "TAX": "Tax ID number",
}

# Identifier systems fixed by FHIR / US Core / ATR
SYS_NPI = "http://hl7.org/fhir/sid/us-npi"
SYS_TIN = "urn:oid:2.16.840.1.113883.4.4"
SYS_MBI = "http://hl7.org/fhir/sid/us-mbi"
SYS_SSN = "http://hl7.org/fhir/sid/us-ssn"

# The order a FHIR server needs to resolve references when loading (publish/).
LOAD_ORDER: tuple[str, ...] = (
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Patient",
    "RelatedPerson",
    "Coverage",
    "Group",
)
