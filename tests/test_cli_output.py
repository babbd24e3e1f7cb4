"""What `atr` prints, through the real entry point with stdout a pipe (as in cron, CI, a log):
user text is printed literally (never read as terminal markup), nothing wraps, tables keep
whole ids, and check-mapping prints everything the mapping says."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from atr_cli import ROOT, atr, home_with_acme_history


@pytest.fixture(scope="module")
def trends_home(tmp_path_factory) -> Path:
    return home_with_acme_history(tmp_path_factory.mktemp("out") / "home")


def _mapping_with(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "mappings" / "acme_commercial.yaml").read_text())
    data.update(changes)
    folder = tmp_path / "mappings"
    folder.mkdir()
    path = folder / "acme_commercial.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_check_mapping_prints_every_setting_literally(tmp_path):
    description = "[bold]Acme[/bold] feed [date MM/DD/YYYY; code map] with a long description " + "x" * 120
    mapping = _mapping_with(tmp_path, description=description)
    res = atr("check-mapping", str(mapping))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert description in out.splitlines()[0]  # markup-looking text kept, one line however long
    spec = yaml.safe_load(mapping.read_text())
    # date formats, code maps (every code), defaults and transforms: nothing dropped
    assert "birth_date" in out and "date 'MM/DD/YYYY'" in out
    gender = next(line for line in out.splitlines() if line.strip().startswith("gender "))
    for raw, code in spec["fields"]["gender"]["map"].items():
        assert f"'{raw}': '{code}'" in gender
    assert "default 'U'" in gender and "transforms ['trim', 'upper']" in gender
    relationship = next(line for line in out.splitlines() if line.strip().startswith("relationship "))
    assert "'18': 'self'" in relationship and "unmapped 'reject'" in relationship
    assert r"pattern 'ACME_ATTRIB_(?P<yyyymm>\d{6})\.csv'" in out  # the regex as written
    assert "identifier systems: member_id 'https://acme-health.example.org/fhir/sid/member-id'" in out
    assert "  first month: 2026-08" in out.splitlines()  # where the Dagster partitions and lateness start


def test_an_error_with_markup_characters_is_printed_as_is(tmp_path):
    mapping = _mapping_with(tmp_path, fields={"member_id": {"column": "[red]MEMBER[/red]", "date": "[QQ]"}})
    res = atr("check-mapping", str(mapping))
    assert res.returncode == 2
    assert "fields.member_id.date" in res.stderr
    assert "[QQ]" in res.stderr


def test_nothing_wraps_in_a_pipe(tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 6) / "incoming"
    res = atr("fixtures", "--source", "acme_commercial", "--members", "5", "--month", "2026-09", "--out", str(deep))
    assert res.returncode == 0, res.stderr
    assert f"wrote {deep / 'ACME_ATTRIB_202609.csv'} (" in res.stdout.splitlines()[0]


def test_trends_table_keeps_whole_ids_even_when_narrow(trends_home):
    wide = atr("trends", "--source", "acme_commercial", "--home", str(trends_home))
    assert wide.returncode == 0, wide.stderr
    rows = [line for line in wide.stdout.splitlines() if "VBC25-" in line]
    assert len(rows) == 6  # two contracts x three months, one line each
    assert all(re.search(r"VBC25-000[12] .*20\d\d-\d\d", line) for line in rows)
    narrow = atr("trends", "--source", "acme_commercial", "--home", str(trends_home), env={"COLUMNS": "60"})
    assert narrow.returncode == 0, narrow.stderr
    assert "VBC25-0001" in narrow.stdout and "VBC25-0002" in narrow.stdout
    assert "VBC25-…" not in narrow.stdout


def test_unknown_source_in_trends_names_the_recorded_ones(trends_home):
    res = atr("trends", "--source", "nope", "--home", str(trends_home))
    assert res.returncode == 0
    assert "no months recorded for source nope; sources with history: acme_commercial" in res.stdout
    res = atr("trends", "--source", "acme_commercial", "--contract", "VBC25", "--home", str(trends_home))
    assert res.returncode == 0
    assert "contract VBC25; contracts of acme_commercial: VBC25-0001, VBC25-0002" in res.stdout


def test_trends_on_a_home_copy_prints_the_same(trends_home, tmp_path):
    copy = shutil.copytree(trends_home, tmp_path / "copy")
    a = atr("trends", "--source", "acme_commercial", "--home", str(trends_home))
    b = atr("trends", "--source", "acme_commercial", "--home", str(copy))
    assert a.stdout == b.stdout


def test_consecutive_fixture_months_differ(tmp_path):
    """`atr fixtures --members 20` for consecutive months: members added and dropped every month."""
    rows = {}
    for month in ("2026-09", "2026-10", "2026-11"):
        res = atr("fixtures", "--source", "acme_commercial", "--members", "20", "--month", month, "--out", str(tmp_path / month))
        assert res.returncode == 0, res.stderr
        (path,) = (tmp_path / month).iterdir()
        rows[month] = path.read_bytes().splitlines()[1:]
    months = sorted(rows)
    for before, after in zip(months, months[1:], strict=False):
        ids_before = {r.split(b",")[9] for r in rows[before]}  # MEMBER_ID
        ids_after = {r.split(b",")[9] for r in rows[after]}
        assert ids_after - ids_before and ids_before - ids_after, (before, after)


def test_small_files_never_repeat_a_month():
    from datetime import date

    from atr_pipeline.layouts.spec import load_mapping
    from atr_pipeline.synthetic import MONTHLY_CHANGES, population

    spec = load_mapping(ROOT / "mappings" / "statewide_medicaid.yaml")
    frames = [population(spec, members=20, month=date(2026 + m // 12, m % 12 + 1, 1), seed=0, min_changes=MONTHLY_CHANGES)
              for m in range(24)]
    for before, after in zip(frames, frames[1:], strict=False):
        assert not before.equals(after)


def test_load_prints_a_path_with_markup_characters_as_is(tmp_path):
    # atr load has its own console (progress bars on a terminal): its lines are literal too.
    export = tmp_path / "[bold]export"
    export.mkdir()
    res = atr("load", str(export), "--server", "http://127.0.0.1:9/fhir")
    out = res.stdout + res.stderr
    assert f"{export}: no manifest.json; not a complete bulk export folder" in out, out
    assert f"atr load: {export} -> http://127.0.0.1:9/fhir" in out, out
