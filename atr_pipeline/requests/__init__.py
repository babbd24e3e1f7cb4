"""Providers answer back: member-add, member-remove and confirm requests on a monthly list.

In: a request on one contract's list for one month (from the API, or a CLI decision), already
resolved to identifiers (member id, provider NPI, plan id; never FHIR references).
Out: the request recorded in history with its outcome; an accepted one is a change to that
month's list (history ``request_rows``) and the month is published again, so the Group gets a
new version like any monthly delivery. Refused (``RequestRefused``, recorded as rejected): a
list that is ``final`` or superseded by a later month, members or providers the payer does not
know, entries already in (add) or not in (remove) the list.
"""
