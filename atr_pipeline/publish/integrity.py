"""Are the export's files the ones its manifest describes? Checked before anything is sent.

In:  an export folder and its manifest (``extension.sha256``: file name -> sha256 hex, as
     publish/export.py writes it; ``output[].count``: lines per file).
Out: file name -> sha256 of its bytes now, for every output file (the checkpoint's key: a resume
     is only trusted for the same bytes).
Refused: ``ExportChanged`` naming the first file whose sha256 or line count differs from the
     manifest, or that is missing. A manifest without a sha256 for a file (an export from another
     tool) has that file checked by line count only.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from atr_pipeline.errors import AtrError
from atr_pipeline.publish.export import Manifest

_BLOCK = 1 << 20


class ExportChanged(AtrError):
    """A file of the export is not what the manifest says; the message names it."""


def _digest_and_lines(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    lines = 0
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for line in fh:
            if line.strip(b"\r\n"):
                lines += 1
    return digest.hexdigest(), lines


def check_files(export_dir: Path, manifest: Manifest) -> dict[str, str]:
    """sha256 per output file after checking each against the manifest; ExportChanged otherwise."""
    recorded = manifest.extension.get("sha256") or {}
    out: dict[str, str] = {}
    for item in manifest.output:
        path = Path(export_dir) / item.url
        if not path.is_file():
            raise ExportChanged(f"{item.url}: listed in the manifest but missing from {export_dir}; nothing was sent")
        digest, lines = _digest_and_lines(path)
        expected = recorded.get(item.url)
        if expected and digest != expected:
            raise ExportChanged(
                f"{item.url}: changed since the export was written (sha256 {digest[:12]}..., manifest says {expected[:12]}...); "
                "nothing was sent. Re-export the month (atr publish) instead of editing its files"
            )
        if lines != item.count:
            raise ExportChanged(f"{item.url}: {lines} lines, the manifest says {item.count}; nothing was sent")
        out[item.url] = digest
    return out
