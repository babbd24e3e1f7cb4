"""plan_runs: stability over polls, done markers, exact run keys, partition keys and cursors."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import partial

import pytest

from atr_pipeline.layouts.spec import parse_mapping
from atr_pipeline.sources import polling
from atr_pipeline.sources.polling import (
    Observation,
    RemoteFile,
    SensorCursor,
    run_key_for,
)

pytest_plugins = ["sftp_servers"]

T = [datetime(2026, 1, 1, 0, 0, tzinfo=UTC) + timedelta(minutes=i) for i in range(10)]
NAME = "acme_attribution_202601.csv"
MT0, MT1 = 1767225600, 1767225900
# Golden run keys: sha256 of "name\0size\0mtime", first 24 hex digits.
KEY_200 = "sftp-7aff92cbe87c6a29520e7801"
KEY_300 = "sftp-fa4cec698fd71547545f7807"
KEY_FEB = "sftp-a14e70ab108c5d4595626c1f"


# Most tests here are about request logic, not the quiet period: two polls, no minimum time.
plan_runs = partial(polling.plan_runs, stable_polls=2, quiet_seconds=0)


@pytest.fixture
def mappings(mapping_factory):
    return {"acme": mapping_factory()}


def test_run_key_is_a_hash_of_name_size_mtime():
    assert run_key_for(RemoteFile(NAME, 200, MT0)) == KEY_200
    assert run_key_for(RemoteFile(NAME, 300, MT1)) == KEY_300
    assert run_key_for(RemoteFile("acme_attribution_202602.csv", 50, MT0)) == KEY_FEB


def test_growing_file_is_requested_once_stable(mappings):
    cur = SensorCursor()
    ticks = [RemoteFile(NAME, 100, MT0), RemoteFile(NAME, 200, MT0), RemoteFile(NAME, 200, MT0), RemoteFile(NAME, 200, MT0)]
    requested_per_tick = []
    for i, f in enumerate(ticks):
        runs, cur = plan_runs([f], cur, mappings, now=T[i])
        requested_per_tick.append([r.run_key for r in runs])
        if runs:
            [run] = runs
            assert run.partition_keys == {"month": "2026-01-01", "source": "acme"}
            assert (run.source_id, run.month, run.file) == ("acme", date(2026, 1, 1), RemoteFile(NAME, 200, MT0))
            assert run.tags == {"atr/remote_file": NAME, "atr/source_id": "acme", "atr/remote_size": "200",
                                "atr/remote_mtime": str(MT0)}
    assert requested_per_tick == [[], [], [KEY_200], []]
    assert cur.to_json() == (
        '{"observations":{"acme_attribution_202601.csv":[200,1767225600,3,"2026-01-01T00:01:00+00:00"]},'
        '"reported":{},"requested":{"' + KEY_200 + '":"2026-01-01T00:03:00+00:00"},"v":1}'
    )


def test_a_changed_mtime_restarts_the_count(mappings):
    cur = SensorCursor()
    out = []
    for i, f in enumerate([RemoteFile(NAME, 200, MT0), RemoteFile(NAME, 200, MT1), RemoteFile(NAME, 200, MT1)]):
        runs, cur = plan_runs([f], cur, mappings, now=T[i])
        out.append([r.run_key for r in runs])
    assert out == [[], [], [run_key_for(RemoteFile(NAME, 200, MT1))]]


def test_lost_cursor_plans_the_same_run_keys(mappings):
    listing = [RemoteFile(NAME, 200, MT0), RemoteFile("acme_attribution_202602.csv", 50, MT0)]
    _, c1 = plan_runs(listing, SensorCursor(), mappings, now=T[0])
    first, _ = plan_runs(listing, c1, mappings, now=T[1])
    # The cursor is lost (e.g. the sensor was reset): the same files give the same keys,
    # which Dagster refuses to launch twice.
    _, lost = plan_runs(listing, SensorCursor.from_json(None), mappings, now=T[5])
    again, _ = plan_runs(listing, lost, mappings, now=T[6])
    assert [r.run_key for r in first] == [KEY_200, KEY_FEB]
    assert [r.run_key for r in again] == [KEY_200, KEY_FEB]
    assert [r.partition_keys for r in again] == [{"month": "2026-01-01", "source": "acme"},
                                                  {"month": "2026-02-01", "source": "acme"}]


def test_changed_file_under_same_name_is_a_new_request(mappings):
    cur = SensorCursor()
    keys = []
    for i, f in enumerate([RemoteFile(NAME, 200, MT0)] * 2 + [RemoteFile(NAME, 300, MT1)] * 3):
        runs, cur = plan_runs([f], cur, mappings, now=T[i])
        keys.append([r.run_key for r in runs])
    assert keys == [[], [KEY_200], [], [KEY_300], []]
    assert sorted(cur.requested) == sorted([KEY_200, KEY_300])


def test_unmatched_and_header_month_files_are_never_requested(mapping_factory):
    header = parse_mapping({
        "source_id": "beta",
        "file": {"pattern": r"beta_\d+\.txt", "month_from": "header", "month_header_field": "period"},
        "format": {"kind": "delimited", "delimiter": "|"},
        "records": {"type_field": {"column": 1}, "detail": {"code": "D"},
                    "header": {"code": "H", "fields": {"period": {"column": 2}}}},
        "fields": {"member_id": {"column": 2}, "payer_id": {"constant": "P"}, "contract_id": {"constant": "C"}},
        "identifier_systems": {"member_id": "urn:m", "payer_id": "urn:p", "contract_id": "urn:c"},
    })
    mappings = {"acme": mapping_factory(), "beta": header}
    listing = [RemoteFile("beta_1.txt", 10, MT0), RemoteFile("readme.txt", 5, MT0), RemoteFile(NAME, 200, MT0)]
    cur = SensorCursor()
    for i in range(3):
        runs, cur = plan_runs(listing, cur, mappings, now=T[i])
        assert [r.file.name for r in runs] == ([NAME] if i == 1 else [])
    assert cur.observations["readme.txt"] == Observation(5, MT0, 3, T[0].isoformat())


def test_months_before_the_mappings_first_month_are_reported_not_requested(mapping_factory):
    """A mapping's first_month (2026-02 here): an older file is reported once; the first month's file runs."""
    spec = mapping_factory().model_copy(update={"first_month": date(2026, 2, 1)})
    jan, feb = RemoteFile(NAME, 200, MT0), RemoteFile("acme_attribution_202602.csv", 50, MT0)
    cur = SensorCursor()
    for i in range(2):
        runs, cur = plan_runs([jan, feb], cur, {"acme": spec}, now=T[i])
    assert [r.partition_keys for r in runs] == [{"month": "2026-02-01", "source": "acme"}]
    assert cur.reported == {KEY_200: f"{NAME}: month 2026-01 is before acme's first_month 2026-02 (its mapping); "
                                     "not requested until first_month covers it"}
    # without first_month the same January file is requested
    runs, _ = plan_runs([jan], SensorCursor(cur.observations), {"acme": mapping_factory()}, now=T[2])
    assert [r.run_key for r in runs] == [KEY_200]


def test_done_marker_gates_requests(mappings):
    f = RemoteFile(NAME, 200, MT0)
    marker = RemoteFile(NAME + ".done", 0, MT1)
    cur = SensorCursor()
    runs1, cur = plan_runs([f], cur, mappings, now=T[0], done_marker_suffix=".done")
    runs2, cur = plan_runs([f], cur, mappings, now=T[1], done_marker_suffix=".done")
    runs3, cur = plan_runs([f, marker], cur, mappings, now=T[2], done_marker_suffix=".done")
    runs4, cur = plan_runs([f, marker], cur, mappings, now=T[3], done_marker_suffix=".done")
    assert [[r.run_key for r in x] for x in (runs1, runs2, runs3, runs4)] == [[], [], [KEY_200], []]
    assert sorted(cur.observations) == [NAME]


def test_marker_makes_a_file_ready_on_its_first_poll(mappings):
    listing = [RemoteFile(NAME, 200, MT0), RemoteFile(NAME + ".ok", 0, MT0)]
    runs, _ = plan_runs(listing, SensorCursor(), mappings, now=T[0], done_marker_suffix=".ok")
    assert [r.run_key for r in runs] == [KEY_200]


def test_requested_keys_expire_45_days_after_their_file_left(mappings):
    f = RemoteFile(NAME, 200, MT0)
    _, cur = plan_runs([f], SensorCursor(), mappings, now=T[0], stable_polls=1)
    assert list(cur.requested) == [KEY_200]
    _, cur = plan_runs([], cur, mappings, now=T[0] + timedelta(days=44))
    assert list(cur.requested) == [KEY_200]
    assert cur.observations == {}
    _, cur = plan_runs([], cur, mappings, now=T[0] + timedelta(days=46))
    assert cur.requested == {}


def test_cursor_round_trip_and_unreadable_cursor(mappings):
    _, cur = plan_runs([RemoteFile(NAME, 200, MT0)], SensorCursor(), mappings, now=T[0], stable_polls=1)
    text = cur.to_json()
    assert SensorCursor.from_json(text) == cur
    assert SensorCursor.from_json(text).to_json() == text
    assert SensorCursor.from_json("{not json") == SensorCursor()
    assert SensorCursor.from_json('{"v": 99}') == SensorCursor()


def test_input_cursor_is_not_modified_and_stable_polls_validated(mappings):
    cur = SensorCursor()
    plan_runs([RemoteFile(NAME, 200, MT0)], cur, mappings, now=T[0])
    assert cur == SensorCursor()
    with pytest.raises(ValueError):
        plan_runs([], cur, mappings, now=T[0], stable_polls=0)
