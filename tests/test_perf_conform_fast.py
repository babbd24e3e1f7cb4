"""conform/fast.py gives the per-resource checker's report, or declines.

The fast path is only allowed to be faster: on the pipeline's own output it must take over (and
give the identical report, sample included); on every mutated set it must either decline or give
the identical report. Each mutation below breaks one cheap rule the templates encode.
"""

from __future__ import annotations

import random
import re

import polars as pl
import pytest
from conform_frames import built_frames

from atr_pipeline.conform.checker import check_ndjson_frames, frame_order
from atr_pipeline.conform.fast import fast_report


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return built_frames(members=1500, seed=3)


def _both(frames: dict[str, pl.DataFrame], **kw):
    return check_ndjson_frames(frames, fast=True, **kw), check_ndjson_frames(frames, fast=False, **kw)


def test_pipeline_output_takes_the_fast_path_with_the_same_report(frames):
    kw = dict(structural="sample", sample_size=40, seed=5, assume_profiles=False, resolve_references=True)
    report = fast_report(frames, frame_order(frames), **kw)
    assert report is not None
    slow = check_ndjson_frames(frames, fast=False, **kw)
    assert report == slow
    assert report.structurally_checked == 40
    assert report.resources_checked == sum(df.height for df in frames.values())
    assert report.by_type["Group"] == frames["Group"].height
    assert report.ok is True


@pytest.mark.parametrize("seed", [0, 1, 99])
def test_structural_sample_is_the_same_resources(frames, seed):
    # Make a sampled-only structural error visible: a bad birthDate passes every cheap rule.
    patients = frames["Patient"].with_columns(pl.col("json").str.replace(r'"birthDate":"(\d{4})-\d\d', '"birthDate":"${1}-13'))
    changed = dict(frames, Patient=patients)
    fast, slow = _both(changed, structural="sample", sample_size=300, seed=seed)
    assert fast == slow
    assert fast.structurally_checked == 300
    assert [r.rule for r in fast.results] == ["r4.structure"]
    assert fast_report(changed, frame_order(changed), structural="sample", sample_size=300, seed=seed,
                       assume_profiles=False, resolve_references=True) is not None


def _mutate(frames, rtype: str, old: str, new: str, *, row: int = 0):
    df = frames[rtype]
    text = df["json"][row]
    changed = re.sub(old[3:], new, text, count=1) if old.startswith("re:") else text.replace(old, new, 1)
    assert changed != text, (rtype, old)
    return dict(frames, **{rtype: df.with_columns(pl.when(pl.int_range(0, pl.len()) == row).then(pl.lit(changed)).otherwise(pl.col("json")).alias("json"))})


MUTATIONS = [  # (type, text, replacement, the rule the per-resource checker reports or None)
    ("Patient", '"gender":"', '"gender":"x', "patient.gender.binding"),
    ("Patient", '"name":[', '"name":[{"text":"a"},', "patient.name.family-or-given"),
    ("Patient", '"identifier":[', '"identifier":[{"system":"urn:x"},', "patient.identifier.system-value"),
    ("Patient", '"birthDate"', '"x":null,"birthDate"', "json.null"),
    ("Patient", '"birthDate"', '"x":[],"birthDate"', "json.empty"),
    ("Patient", '"gender"',
     '"extension":[{"url":"http://hl7.org/fhir/us/davinci-atr/StructureDefinition/ext-changeType","valueCode":"new"}],"gender"',
     "ext.context"),
    ("Coverage", '"status":"active"', '"status":"cancelled"', "coverage.status.fixed"),
    ("Coverage", '"beneficiary":{"reference":"Patient/', '"beneficiary":{"reference":"Group/', "ref.target-type"),
    ("Coverage", '"beneficiary":{"reference":"Patient/', '"beneficiary":{"reference":"Patient/0', "ref.unresolved"),
    ("Coverage", '"period":{"start":"', '"period":{"end":"2000-01-01","start":"', "period.order"),
    ("Coverage", '"payor":[', '"payor":[{"reference":"Organization/x"},', "coverage.payor.count"),
    ("Coverage", '"subscriberId":"', '"subscriberId":"\\u0041', None),  # valid but escaped: declined, still clean
    ("RelatedPerson", '"patient":{"reference":"Patient/', '"patient":{"reference":"Coverage/', "ref.target-type"),
    ("Group", '"valueCode":"nochange"', '"valueCode":"gone"', "group.member.changeType.code"),
    ("Group", '"valueCode":"new"}', '"valueCode":"dropped"}', "group.member.dropped.inactive"),
    ("Group", 're:("valueCode":"new"\\}.*?"inactive":)false', r"\1true", "group.member.inactive.dropped"),
    ("Group", '"type":"person"', '"type":"animal"', "group.type.fixed"),
    ("Group", '"actual":true', '"actual":false', "group.actual.fixed"),
    ("Group", '"entity":{"reference":"Patient/', '"entity":{"reference":"Patient/f', "ref.unresolved"),
    ("Practitioner", '"value":"', '"value":"1', "npi.format"),
    ("Organization", '"active":true', '"active":null', "json.null"),
    ("PractitionerRole", '"practitioner":{"reference":"Practitioner/', '"practitioner":{"reference":"Practitioner/a', "ref.unresolved"),
]


@pytest.mark.parametrize(("rtype", "old", "new", "rule"), MUTATIONS)
def test_a_broken_rule_is_reported_exactly_as_before(frames, rtype, old, new, rule):
    changed = _mutate(frames, rtype, old, new)
    kw = dict(structural="sample", sample_size=20, seed=0, assume_profiles=False, resolve_references=True)
    assert fast_report(changed, frame_order(changed), **kw) is None
    fast, slow = _both(changed, **kw)
    assert fast == slow
    fired = [r.rule for r in fast.results]
    assert (rule in fired) if rule else fired == []


def test_duplicate_ids_and_id_mismatch_are_declined(frames):
    patients = frames["Patient"]
    dup = dict(frames, Patient=pl.concat([patients, patients.head(1)]))
    fast, slow = _both(dup, structural="none")
    assert fast == slow
    assert [r.rule for r in fast.results] == ["resource.id.duplicate"]
    wrong = dict(frames, Patient=patients.with_columns(pl.when(pl.int_range(0, pl.len()) == 3).then(pl.lit("x")).otherwise(pl.col("id")).alias("id")))
    fast, slow = _both(wrong, structural="none")
    assert fast == slow
    assert "export.id-mismatch" in [r.rule for r in fast.results]


def test_random_character_edits_never_change_the_report(frames):
    rng = random.Random(11)
    types = [t for t in frames if frames[t].height]
    for _ in range(25):
        rtype = rng.choice(types)
        row = rng.randrange(frames[rtype].height)
        text = frames[rtype]["json"][row]
        pos = rng.randrange(len(text))
        edited = text[:pos] + rng.choice('"{}[],:0aZ n') + text[pos + 1:]
        df = frames[rtype].with_columns(pl.when(pl.int_range(0, pl.len()) == row).then(pl.lit(edited)).otherwise(pl.col("json")).alias("json"))
        fast, slow = _both(dict(frames, **{rtype: df}), structural="none")
        assert fast == slow, (rtype, pos)


def test_unresolved_references_off_and_no_sample(frames):
    changed = _mutate(frames, "Coverage", 're:("beneficiary":\\{"reference":"Patient/)[0-9a-f]{8}', r"\g<1>00000000")
    fast, slow = _both(changed, structural="none", resolve_references=False)
    assert fast == slow
    assert fast.results == []
    resolved_fast, resolved_slow = _both(changed, structural="none", resolve_references=True)
    assert resolved_fast == resolved_slow
    assert [r.rule for r in resolved_fast.results] == ["ref.unresolved"]
    assert fast_report(changed, frame_order(changed), structural="none", sample_size=0, seed=0,
                       assume_profiles=False, resolve_references=False) is not None
