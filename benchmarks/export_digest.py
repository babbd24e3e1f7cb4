"""sha256 of every file of a bulk export, with the publish time masked, to compare two runs' output.

    python benchmarks/export_digest.py EXPORT_DIR [EXPORT_DIR ...]

Two runs of the same inputs and key write the same bytes except where the publish time shows:
the Group's ``meta.lastUpdated`` (when its version was first published), the manifest's
``transactionTime``, and the manifest's sha256 of Group.ndjson. Those are replaced by a
placeholder before hashing; every other byte counts. Prints one line per file and a digest of
the whole export. Not a benchmark: the check that a speed change kept the output.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

_LAST_UPDATED = re.compile(rb'"lastUpdated":"[0-9T:.Z-]+"')


def file_digests(export: Path) -> dict[str, str]:
    digests: dict[str, str] = {}
    for path in sorted(export.iterdir()):
        if path.name == "manifest.json":
            manifest = json.loads(path.read_bytes())
            manifest["transactionTime"] = "*"
            manifest.get("extension", {}).get("sha256", {}).pop("Group.ndjson", None)
            data = json.dumps(manifest, sort_keys=True).encode()
            digests[path.name] = hashlib.sha256(data).hexdigest()
            continue
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for line in fh:  # lines: a Group line holds a whole contract, still one line at a time
                h.update(_LAST_UPDATED.sub(b'"lastUpdated":"*"', line) if path.name == "Group.ndjson" else line)
        digests[path.name] = h.hexdigest()
    return digests


def main(folders: list[str]) -> int:
    for folder in folders:
        digests = file_digests(Path(folder))
        for name, digest in digests.items():
            print(f"{digest}  {name}")
        whole = hashlib.sha256("".join(f"{n}:{d}\n" for n, d in digests.items()).encode()).hexdigest()
        print(f"{whole}  (export {folder})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
