"""What a file's bytes say before any record is cut: empty, binary, control characters, and
whether a single-byte encoding was declared for UTF-8 bytes.

In: raw bytes (a file's head, or one line-aligned slice) and the mapping's encoding.
Out: ``refuse_head`` raises ``FileRefused`` (``empty`` or ``binary``) for a head that holds no
text; ``has_control`` tells whether a slice holds a control character a text field may not
carry (so the per-field check runs only where one is); ``utf8_mismatch_line`` finds the first
line of UTF-8 text in a file declared latin-1 or cp1252.

Used by the reader on every slice and by landing (``pipeline.land_path``) on the head, so a
binary or empty file is refused with its own rule before anything tries to read a header
month out of it.
"""

from __future__ import annotations

import codecs
import re

from atr_pipeline.errors import FileRefused

HEAD_BYTES = 1 << 16
WIDE_ENCODINGS = ("utf_16", "utf_32", "utf-16", "utf-32")  # NUL bytes are normal inside these

# C0 controls other than TAB, LF, VT, FF and CR, and DEL: text files do not hold them, binary
# data is full of them (about one byte in nine of random or compressed data).
_BINARY_CONTROLS = bytes(range(0x09)) + bytes(range(0x0E, 0x20)) + b"\x7f"
_NOT_BINARY_CONTROL = bytes(b for b in range(256) if b not in _BINARY_CONTROLS)
# Controls a text field may not carry (TAB, LF and CR may: delimiter, multi-line field).
_TEXT_CONTROLS = bytes(range(0x09)) + b"\x0b\x0c" + bytes(range(0x0E, 0x20)) + b"\x7f"
_NOT_TEXT_CONTROL = bytes(b for b in range(256) if b not in _TEXT_CONTROLS)
_NOT_C1_OR_TEXT_CONTROL = bytes(b for b in range(256) if b not in _TEXT_CONTROLS and not 0x80 <= b <= 0x9F)
_UTF8_C1 = re.compile(rb"\xc2[\x80-\x9f]")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
# A head is binary when at least this share of its bytes are controls (and a few of them).
BINARY_SHARE = 0.05
BINARY_MIN = 8


def codec_name(encoding: str) -> str:
    return codecs.lookup(encoding).name


def is_wide(codec: str) -> bool:
    return codec.startswith(WIDE_ENCODINGS)


def single_byte(codec: str) -> bool:
    """Latin-1, cp1252 and the other ASCII supersets with one byte per character."""
    return codec.startswith(("iso8859", "latin", "cp125", "mac-"))


def binary_reason(data: bytes) -> str | None:
    """Why ``data`` (not UTF-16/32) is not text, or None."""
    if b"\x00" in data:
        return "NUL bytes found: this is not a text file (compressed or encrypted?)"
    controls = len(data.translate(None, _NOT_BINARY_CONTROL))
    if controls >= BINARY_MIN and controls >= BINARY_SHARE * len(data):
        return f"{controls} control bytes in the first {len(data)}: this is not a text file (compressed or encrypted?)"
    return None


def refuse_head(head: bytes, encoding: str, name: str) -> None:
    """Refuse a file whose first bytes are empty or binary (``empty`` / ``binary``)."""
    codec = codec_name(encoding)
    if is_wide(codec):
        text = head.decode(codec, errors="ignore")
        if "\x00" in text:
            raise FileRefused(name, "binary", "NUL characters found: this is not a text file")
        head = text.encode("utf-8")
    elif codec == "utf-8" and head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :]
    if not head.strip():
        raise FileRefused(name, "empty", "the file is empty" if not head else "the file holds no records")
    reason = binary_reason(head)
    if reason is not None:
        raise FileRefused(name, "binary", reason, 1)


def has_control(chunk: bytes, codec: str) -> bool:
    """True when ``chunk`` (bytes in ``codec``; UTF-8 for wide files, which are re-encoded) may
    hold a control character other than TAB, LF and CR. A fast byte scan: it may say True for
    a control in a field the mapping does not read, never False for one it does."""
    if codec.startswith(("iso8859", "latin")):
        return len(chunk.translate(None, _NOT_C1_OR_TEXT_CONTROL)) > 0
    if len(chunk.translate(None, _NOT_TEXT_CONTROL)) > 0:
        return True
    # The literal test first: a search for C2 runs at memchr speed, the regex does not.
    return codec == "utf-8" and b"\xc2" in chunk and _UTF8_C1.search(chunk) is not None


def utf8_mismatch_line(chunk: bytes) -> int | None:
    """For a slice of a file declared single-byte: the 1-based line (within the slice) of its
    first non-ASCII byte when the slice is valid UTF-8 with non-ASCII text, else None.

    Latin-1 text almost never forms valid UTF-8 (an accented letter is one byte >= 0x80 followed
    by ASCII), so valid UTF-8 here means the file was written in UTF-8.
    """
    if chunk.isascii():
        return None
    try:
        chunk.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        return None
    m = _NON_ASCII.search(chunk)
    assert m is not None
    return chunk.count(b"\n", 0, m.start()) + 1
