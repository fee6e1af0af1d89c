"""Split request-CSV bytes into records of fields, remembering which were quoted and where.

Owns: the byte-level CSV grammar (RFC 4180 plus what Excel and hand editing produce), blank-line
skipping, physical line numbers, the 17-for-15 alignment rule, and decoding field bytes to text.
Must not: know column names or what a field means (``rows`` does), do I/O, or raise on any
input: malformed quoting is reported on the record, never as an exception.

It works on bytes, not text. The structural characters (``"`` ``,`` CR LF) are ASCII and never
occur inside a multi-byte UTF-8 sequence, nor stand for anything else in Windows-1252, so one
split serves both encodings and yields the byte offsets that redaction needs. The stdlib ``csv``
module is not used because it forgets which values were quoted, which the 17-for-15 rule needs.

Grammar accepted: fields separated by ``,``; records end at CRLF, LF or a lone CR; a field whose
first non-blank character is ``"`` is quoted and may contain ``,``, line breaks and ``""`` (one
quote); spaces/tabs around a quoted field are ignored (``"a", "b"``); an unquoted field is taken
exactly as written, quotes inside it included. A line of only spaces/tabs is blank; so is a record
whose fields are all unquoted and blank (``,,,`` as spreadsheets write empty rows).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

BOM = b"\xef\xbb\xbf"
UTF8 = "utf-8"
WINDOWS_1252 = "windows-1252"

# One value and the separator after it. Groups: 1 body of a quoted value, 2 text after its
# closing quote, 3 unquoted value, 4 separator ("," or a line break, empty at the end).
# Possessive quantifiers (3.11+): a quote never closed fails at once instead of backtracking
# over the rest of the file; then neither branch matches.
_VALUE = re.compile(
    rb'(?:[ \t]*+"([^"]*+(?:""[^"]*+)*+)"([^,\r\n]*+)|(?![ \t]*+")([^,\r\n]*+))(,|\r\n?|\n|\Z)'
)
_OPEN_QUOTE = re.compile(rb'[ \t]*+"')
_TO_LINE_END = re.compile(rb"[^\r\n]*+")
_BLANK_LINE = re.compile(rb"[ \t]*+(?:\r\n?|\n)")
_BLANK_TAIL = re.compile(rb"[ \t]*+\Z")

# ``sniff_encoding`` decodes this much at a time: decoding a whole file at once would hold a
# second copy of it, up to four times its size as a str.
_SNIFF_CHUNK = 1 << 20

TEXT_AFTER_QUOTE = "text after its closing double quote"
UNCLOSED_QUOTE = "an opening double quote that is never closed"

# Windows-1252 as browsers and Excel read it: the five bytes the codec leaves undefined
# (0x81 0x8D 0x8F 0x90 0x9D) become the C1 code points of the same value instead of an error.
_CP1252_HIGH = {
    byte: bytes([byte]).decode(WINDOWS_1252, errors="ignore") or chr(byte)
    for byte in range(0x80, 0xA0)
}


class Field(NamedTuple):
    """One value. ``raw`` is the value's bytes (quotes removed, ``""`` undone).

    ``start:end`` is where the value is written in the file: for a quoted value from its
    opening quote through its closing quote (and any stray text after it); without the spaces
    around it. ``closed`` is False for a quoted value whose closing quote is missing.
    """

    raw: bytes
    quoted: bool
    start: int
    end: int
    closed: bool = True
    # A NamedTuple, not a dataclass: a big file has hundreds of thousands of these and a
    # tuple is several times cheaper to build. Compare fields with ``is``, not ``==``.

    @property
    def blank(self) -> bool:
        """Empty (or only spaces/tabs) and unquoted: what the 17-for-15 rule may drop."""
        return not self.quoted and not self.raw.strip(b" \t")


@dataclass(frozen=True, slots=True)
class Record:
    """One row: physical lines ``line`` through ``last_line`` (1-based), its fields.

    ``problem`` describes malformed quoting of field ``problem_index`` (the first one found).
    """

    line: int
    last_line: int
    fields: tuple[Field, ...]
    problem: str | None = None
    problem_index: int | None = None


def content_start(data: bytes) -> int:
    """Offset after a UTF-8 byte-order mark, if any."""
    return len(BOM) if data.startswith(BOM) else 0


def sniff_encoding(data: bytes) -> str:
    """``utf-8`` if the whole content (after a BOM) is valid UTF-8, else ``windows-1252``.

    Uses memory independent of the size of ``data``.
    """
    view, decoder = memoryview(data), codecs.getincrementaldecoder(UTF8)()
    try:
        for at in range(content_start(data), len(data), _SNIFF_CHUNK):
            decoder.decode(view[at : at + _SNIFF_CHUNK])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return WINDOWS_1252
    return UTF8


def decode(raw: bytes, encoding: str) -> str:
    """Field bytes as text. Never raises (invalid UTF-8 becomes U+FFFD)."""
    if encoding == UTF8:
        return raw.decode(UTF8, errors="replace")
    return raw.decode("latin-1").translate(_CP1252_HIGH)


def _line_breaks(chunk: bytes) -> int:
    return chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")


def tokenize(data: bytes) -> list[Record]:
    """Every non-blank record of ``data`` (a leading BOM is skipped), in file order."""
    return list(records(data))


def records(data: bytes) -> Iterator[Record]:
    """``tokenize`` one record at a time: a caller that keeps none of them holds memory for one
    record, not for the whole file (hundreds of bytes of objects per value)."""
    pos, line, size = content_start(data), 1, len(data)
    while pos < size:
        if blank := _BLANK_LINE.match(data, pos):
            pos, line = blank.end(), line + 1
            continue
        if _BLANK_TAIL.match(data, pos):
            break
        record, pos, line = _record(data, pos, line)
        if not all(field.blank for field in record.fields):
            yield record


def _record(data: bytes, pos: int, line: int) -> tuple[Record, int, int]:
    """The record starting at ``pos`` on ``line``; returns it, the next offset and line."""
    start = pos
    fields: list[Field] = []
    problem: str | None = None
    problem_index: int | None = None
    while True:
        value = _VALUE.match(data, pos)
        if value and value[1] is not None and value[2].strip(b" \t") and _line_breaks(value[1]):
            # Closed on a later line and followed by text: a quote left open that paired with
            # one of the next rows. Treat it as unclosed so that those rows are still read.
            value = None
        if value is None:
            # End an unclosed value at the end of its line so that the rows after it are still
            # read (a reader that swallowed the rest of the file would lose them).
            opening = _OPEN_QUOTE.match(data, pos)
            rest = _TO_LINE_END.match(data, opening.end() if opening else pos)
            assert opening is not None and rest is not None  # only a quote can fail _VALUE
            fields.append(Field(rest[0], True, opening.end() - 1, rest.end(), False))
            if problem is None:
                problem, problem_index = UNCLOSED_QUOTE, len(fields) - 1
            end = rest.end()
            pos = end + (2 if data.startswith(b"\r\n", end) else 1 if end < len(data) else 0)
            break
        body, tail, plain, separator = value.groups()
        pos = value.end()
        if plain is not None:
            fields.append(Field(plain, False, value.start(3), value.end(3)))
        else:
            stray = bool(tail.strip(b" \t"))
            raw = body.replace(b'""', b'"') + (tail if stray else b"")
            end = value.end(2) if stray else value.end(1) + 1
            fields.append(Field(raw, True, value.start(1) - 1, end))
            if stray and problem is None:
                problem, problem_index = TEXT_AFTER_QUOTE, len(fields) - 1
        if separator != b",":
            end = pos - len(separator)
            break
    last_line = line + _line_breaks(data[start:end])
    next_line = last_line + (pos > end)
    return Record(line, last_line, tuple(fields), problem, problem_index), pos, next_line


def align(record: Record, width: int) -> tuple[tuple[Field, ...] | None, bool]:
    """The record's fields matched one-to-one to ``width`` header columns, or None.

    The reference document's sample row has 17 values for 15 columns, the two extra ones empty
    and unquoted. Rule: with more values than columns, drop every blank unquoted value if that
    makes the counts equal. The second item tells whether values were dropped.
    """
    if len(record.fields) == width:
        return record.fields, False
    if len(record.fields) > width:
        kept = tuple(field for field in record.fields if not field.blank)
        if len(kept) == width:
            return kept, True
    return None, False
