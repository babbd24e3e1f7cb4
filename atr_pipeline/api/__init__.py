"""The producer API (`atr serve`): the published ATR lists over FHIR REST and Bulk Data.

In:  what publish/ wrote (``ATR_HOME/exports/<source>/<YYYY-MM>/`` manifest + NDJSON), read-only.
Out: FHIR R4 answers (CapabilityStatement, SMART configuration, Group search/read/vread/_history,
     reads of every resource a Group references), ``$davinci-data-export`` jobs, and list-change
     notifications to the clients' Subscriptions (each new published Group version).
Own state only, under ``ATR_HOME/api/`` (0700 folders, 0600 files): registered clients, used
assertion ``jti`` values, the access-token signing key, export jobs and their files, subscriptions.
"""
