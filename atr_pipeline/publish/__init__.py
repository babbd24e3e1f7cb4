"""publish/: the last stage. ATR resources -> a Bulk Data export folder -> a FHIR server.

In:  type -> DataFrame(id, json) from fhir/, the rejects as OperationOutcome JSON lines.
Out: an export folder (manifest.json + NDJSON per type; ``export.write_bulk_export``) and, on
     request, a load of that folder into a FHIR server by PUT (``loader.load_export``, ``atr load``)
     with a ``load_report.json`` and a resumable checkpoint.
Refused: see each module: export.py (bad input frames), loader.py (bad lines, server refusals),
     auth.py (missing or bad credentials), server.py (impossible settings).

Public API: ``export.write_bulk_export``, ``export.read_manifest``, ``export.iter_ndjson``,
``export.Manifest``, ``loader.load_export``, ``loader.LoadProgress``, ``report.LoadReport``,
``server.ServerConfig``, ``auth.auth_from_env``, ``auth.SmartBackendAuth``, ``cli.load``.
User documentation: docs/LOADING.md.
"""
