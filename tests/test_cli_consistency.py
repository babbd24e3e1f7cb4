"""One way to name things across `atr`: --source/--mapping on every command, --version,
examples in every command's help, and wrong values answered with the valid ones."""

from __future__ import annotations

from importlib.metadata import version

import pytest
import typer
from atr_cli import atr

from atr_pipeline.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_version():
    res = atr("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"atr {version('atr_pipeline')}"


def test_every_command_is_listed():
    assert set(COMMANDS) >= {"run", "demo", "check-mapping", "fixtures", "conform", "publish", "finalize", "trends", "load",
                             "sftp-check", "sftp-pull"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_ends_with_examples(command):
    res = atr(command, "--help")
    assert res.returncode == 0, res.stderr
    examples = res.stdout.split("Examples:", 1)
    assert len(examples) == 2, res.stdout
    assert f"atr {command}" in examples[1] or f" atr {command}" in examples[1]


@pytest.mark.parametrize("command", ["run", "fixtures", "publish", "trends", "finalize", "check-mapping"])
def test_source_and_mapping_are_one_option(command):
    out = atr(command, "--help").stdout
    assert "--source" in out and "--mapping" in out


@pytest.mark.parametrize("spelling", [["--source", "acme_commercial"], ["--mapping", "mappings/acme_commercial.yaml"],
                                      ["--source", "mappings/acme_commercial.yaml"], ["mappings/acme_commercial.yaml"]])
def test_check_mapping_accepts_either_spelling(spelling):
    res = atr("check-mapping", *spelling)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("acme_commercial:")


def test_trends_accepts_a_mapping_file_for_the_source(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    by_id = atr("trends", "--source", "acme_commercial", "--home", str(home))
    by_file = atr("trends", "--mapping", "mappings/acme_commercial.yaml", "--home", str(home))
    assert by_id.returncode == by_file.returncode == 0
    assert by_id.stdout == by_file.stdout
    assert "no months recorded for source acme_commercial" in by_id.stdout


@pytest.mark.parametrize("command", [["run"], ["fixtures", "--members", "5", "--month", "2026-09", "--out", "x"],
                                     ["publish", "--month", "2026-09"]])
def test_unknown_source_lists_the_known_ones(command, tmp_path):
    res = atr(*command, "--source", "acme", home=tmp_path)
    assert res.returncode == 2
    assert "no source 'acme'" in res.stderr
    assert "known sources: acme_commercial, statewide_medicaid" in res.stderr


def test_wrong_choice_lists_the_valid_ones(tmp_path):
    res = atr("conform", str(tmp_path), "--structural", "some")
    assert res.returncode == 2
    assert "'some' is not one of 'all', 'sample', 'none'" in res.stderr


def test_bad_month_says_the_format(tmp_path):
    res = atr("fixtures", "--source", "acme_commercial", "--members", "5", "--month", "09/2026", "--out", str(tmp_path))
    assert res.returncode == 2
    assert "'09/2026' is not a month as YYYY-MM" in res.stderr
