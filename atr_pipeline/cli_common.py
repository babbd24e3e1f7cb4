"""What every `atr` command shares: its consoles, the month option, and the source option.

Consoles: markup on, highlighting off. When the stream is not a terminal (a pipe, a file, a
cron or Dagster log) nothing wraps and tables keep their natural width, so paths, ids and the
copy-paste commands the CLI prints stay on one line. Every piece of text that comes from the
user or the data (paths, file names, ids, messages) goes through ``escape``: the terminal
library reads ``[...]`` as markup and would drop it (``[date MM/DD/YYYY]`` vanished before).

Source option: ``--source`` and ``--mapping`` are one option on every command that names a
source. It takes a source id (``acme_commercial``, looked up as ``<ATR_MAPPINGS_DIR>/<id>.yaml``)
or a mapping file path; an unknown id is answered with the ids that exist.
"""

from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["console_for", "escape", "mapping_path", "month_option", "source_id_option", "SOURCE_HELP"]

# Wide enough for any table this CLI prints; rich would otherwise assume 80 columns.
_UNBOUNDED_WIDTH = 10_000

SOURCE_HELP = "source id (mappings/<id>.yaml) or a mapping file; --source and --mapping are the same option"


def console_for(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that wraps only on a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    if _is_terminal(stream):
        return Console(stderr=stderr, highlight=False)
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() else _UNBOUNDED_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def month_option(value: str | None) -> date | None:
    """``YYYY-MM`` to the first day of that month; a usage error names the bad value."""
    if value is None:
        return None
    try:
        year, month = value.split("-")
        return date(int(year), int(month), 1)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a month as YYYY-MM (e.g. 2026-09)") from None


def _known_sources(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def mapping_path(value: str | Path | None) -> Path | None:
    """The mapping file a ``--source``/``--mapping`` value names (a path, or a source id)."""
    if value is None:
        return None
    from atr_pipeline.config import mappings_dir_for

    given = Path(value)
    if given.suffix in (".yaml", ".yml") or given.is_file() or os.sep in str(value):
        if not given.is_file():
            raise typer.BadParameter(f"mapping file {escape(str(given))} does not exist")
        return given
    folder = mappings_dir_for()
    candidate = folder / f"{value}.yaml"
    if candidate.is_file():
        return candidate
    known = _known_sources(folder)
    raise typer.BadParameter(
        f"no source {str(value)!r} in {escape(str(folder))}; known sources: {', '.join(known) or 'none'} "
        "(or give a mapping file path)"
    )


def source_id_option(value: str | None) -> str | None:
    """A source id from a ``--source``/``--mapping`` value; a mapping file gives its ``source_id``.

    An id is taken as it is (history may hold sources whose mapping lives elsewhere).
    """
    if value is None:
        return None
    given = Path(value)
    if given.suffix not in (".yaml", ".yml") and os.sep not in value:
        return value
    from atr_pipeline.layouts.spec import MappingError, load_mapping

    if not given.is_file():
        raise typer.BadParameter(f"mapping file {escape(str(given))} does not exist")
    try:
        return load_mapping(given).source_id
    except MappingError as exc:
        raise typer.BadParameter(escape(str(exc))) from None
