"""Split one huge Group JSON line into its head and its member byte ranges, without parsing members.

In:  the bytes of one JSON object (a Group NDJSON line, or a server's answer to ``GET Group/<id>``).
Out: ``GroupSplit``: ``head`` (the object without its ``member`` key, as bytes of valid JSON) and
     ``spans`` ((start, end) offsets of each member object in the original bytes).
Refused: input that is not a JSON object, or a ``member`` value that is not an array of objects
     (ValueError, naming the byte offset, never the content).

Why: ``orjson.loads`` of a 100k-member Group (~60 MB) builds about half a gigabyte of Python
objects. Scanning the bytes for strings and brackets keeps memory at the line itself plus two
integers per member, and the loader slices each request's members straight out of the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

# A JSON string (with escapes) or one structural bracket; everything else is skipped by the regex.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_COLON = re.compile(rb"\s*:\s*")
_MEMBER_KEY = b'"member"'


@dataclass(frozen=True)
class GroupSplit:
    data: bytes
    head: bytes  # valid JSON object without "member"
    spans: list[tuple[int, int]]

    def member(self, index: int) -> bytes:
        start, end = self.spans[index]
        return self.data[start:end]

    def __len__(self) -> int:
        return len(self.spans)


def split_group(data: bytes) -> GroupSplit:
    depth = 0
    spans: list[tuple[int, int]] = []
    key_start = array_start = array_end = -1
    in_members = False
    element_start = -1
    started = False
    for match in _TOKEN.finditer(data):
        token = match.group()
        first = token[0]
        if first == 0x22:  # '"'
            if depth == 1 and not in_members and token == _MEMBER_KEY:
                colon = _COLON.match(data, match.end())
                if colon and data[colon.end() : colon.end() + 1] == b"[":
                    key_start = match.start()
            continue
        if first in (0x7B, 0x5B):  # '{' or '['
            if not started:
                if first != 0x7B:
                    raise ValueError("expected a JSON object at byte 0")
                started = True
            depth += 1
            if depth == 2 and first == 0x5B and key_start >= 0 and not spans and not in_members and array_end < 0:
                in_members = True
                array_start = match.start()
            elif in_members and depth == 3:
                if first != 0x7B:
                    raise ValueError(f"Group.member holds a non-object at byte {match.start()}")
                element_start = match.start()
        else:  # '}' or ']'
            if in_members and depth == 3 and first == 0x7D:
                spans.append((element_start, match.end()))
            elif in_members and depth == 2 and first == 0x5D:
                in_members = False
                array_end = match.end()
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced JSON at byte {match.start()}")
    if not started or depth != 0:
        raise ValueError("not a complete JSON object")
    if key_start < 0 or array_end < 0:
        return GroupSplit(data, data, [])
    _check_gaps(data, array_start, array_end, spans)
    head = _remove_member(data, key_start, array_end)
    orjson.loads(head)  # the head must stay valid JSON; raises on a splitting mistake
    return GroupSplit(data, head, spans)


def _check_gaps(data: bytes, array_start: int, array_end: int, spans: list[tuple[int, int]]) -> None:
    """Between member objects only commas and whitespace: a number or string member would
    otherwise be skipped by the scanner and silently lost."""
    previous = array_start + 1
    for index, (start, end) in enumerate(spans):
        gap = data[previous:start].strip()
        if gap != (b"," if index else b""):
            raise ValueError(f"Group.member holds a non-object near byte {previous}")
        previous = end
    if data[previous : array_end - 1].strip():
        raise ValueError(f"Group.member holds a non-object near byte {previous}")


def _remove_member(data: bytes, key_start: int, array_end: int) -> bytes:
    before = data[:key_start].rstrip()
    after = data[array_end:].lstrip()
    if after.startswith(b","):
        return before + after[1:].lstrip()
    if before.endswith(b","):
        return before[:-1] + after
    return before + after
