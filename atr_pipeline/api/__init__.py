"""The producer API (`atr serve`): the published ATR lists over FHIR REST and Bulk Data.

In:  what publish/ wrote (``ATR_HOME/exports/<source>/<YYYY-MM>/`` manifest + NDJSON), read-only.
Out: FHIR R4 answers (CapabilityStatement, SMART configuration, Group search/read/vread/_history,
     reads of every resource a Group references) and ``$davinci-data-export`` jobs.
Own state only, under ``ATR_HOME/api/`` (0700 folders, 0600 files): registered clients, used
assertion ``jti`` values, the access-token signing key, export jobs and their files.
"""
