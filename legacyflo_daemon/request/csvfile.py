"""The request CSV file: bytes in, ``Request`` values and row errors out; redaction.

The rules are docs/contract.md §3.

Owns: the header, duplicate rows, the file's warnings, and ``redact`` (what a CSV looks like once
its passwords are gone). One row's fields and their messages are ``rows``' (which also names
the columns), byte-level splitting is ``tokens``'.
Must not: do I/O, log, or put any value of a row into a message: with shifted columns any field
may hold a password, so messages name the row, the field and the fix, never the content.
A bad row is a ``RowError`` value and the good rows of the same file still come out;
``CsvFileError`` is only for a file that is unusable as a whole.
"""

from __future__ import annotations

from legacyflo_daemon.errors import CsvFileError
from legacyflo_daemon.model import REDACTED, ParseResult, Request, RowError
from legacyflo_daemon.request import tokens
from legacyflo_daemon.request.rows import COLUMNS as COLUMNS
from legacyflo_daemon.request.rows import FIX_QUOTES, row
from legacyflo_daemon.request.rows import PASSWORD_COLUMNS as PASSWORD_COLUMNS
from legacyflo_daemon.request.rows import REQUIRED_COLUMNS as REQUIRED_COLUMNS

# What ``redact`` returns for binary content (NUL bytes: UTF-16, .xlsx, ...): no structure can
# be trusted there, so nothing of it is kept.
BINARY_REDACTED = REDACTED.encode() + b"\n"


def parse(data: bytes) -> ParseResult:
    """Read a request CSV. Raises ``CsvFileError`` only if the file as a whole is unusable."""
    if not data:
        raise CsvFileError(
            "the file is empty (0 bytes); write a header line and one row per request"
        )
    if b"\x00" in data:
        raise CsvFileError(
            "the file contains NUL bytes, so it is not CSV text (UTF-16 text or a spreadsheet"
            ' file?); save it as "CSV UTF-8 (comma delimited)"'
        )
    encoding = tokens.sniff_encoding(data)
    records = tokens.tokenize(data)
    if not records:
        raise CsvFileError(
            "the file has only blank lines; write a header line and the request rows"
        )
    names = _header(records[0], encoding)
    warnings = _header_warnings(names)
    if encoding != tokens.UTF8:
        warnings.insert(
            0,
            "The file is not valid UTF-8; it was read as Windows-1252 (what Excel"
            ' writes). If accented letters look wrong, save it as "CSV UTF-8".',
        )
    requests: list[Request] = []
    errors: list[RowError] = []
    dropped: list[int] = []
    seen: dict[tuple[str, ...], int] = {}
    for record in records[1:]:
        outcome = row(record, names, encoding, dropped)
        if isinstance(outcome, Request):
            source, folder = outcome.source, outcome.dest_folder
            key = tuple(part.casefold() for part in (source.userid, source.domain, source.server))
            first = seen.setdefault((*key, folder.casefold()), record.line)
            if first == record.line:
                requests.append(outcome)
                continue
            outcome = RowError(
                record.line,
                "destfolder",
                f"duplicate of row {first}: same source account and same destfolder; "
                "remove this row or give it another destfolder",
                outcome.title,
                outcome.report_to,
            )
        errors.append(outcome)
    if dropped:
        warnings.append(
            f"{_rows(dropped)} had more values than the header has columns; their"
            " empty unquoted values were ignored, as in the reference sample."
        )
    if len(records) == 1:
        warnings.append("The file has a header but no request rows.")
    return ParseResult(tuple(requests), tuple(errors), tuple(warnings), encoding, len(records) - 1)


def redact(data: bytes) -> bytes:
    """``data`` with the value of every password field replaced by ``********``. Never raises.

    Everything else stays byte-identical (BOM, line endings, blank lines, encoding, quoting).
    Password fields are ``PASSWORD_COLUMNS`` plus any column whose name contains "pass" or
    "pwd". Where it is unclear which value is a password, every value is replaced: in a row whose
    values do not match the header's columns or whose quoting is malformed, and in every row
    after the first non-blank line when that line lacks a required column (the first line too
    when it names no known column: then it is probably data). Any value spanning lines is
    replaced too (an unbalanced quote may have swallowed the next rows into it); empty values
    stay empty. Binary content (a NUL byte) is replaced as a whole by ``BINARY_REDACTED``.
    """
    try:
        return _redact(data)
    except Exception:  # a bug here must not leak the file: keep nothing of it
        return BINARY_REDACTED


def _redact(data: bytes) -> bytes:
    if b"\x00" in data:
        return BINARY_REDACTED
    records = tokens.tokenize(data)
    if not records:
        return data
    header, rows = records[0], records[1:]
    names = [_name(tokens.decode(f.raw, tokens.UTF8)) for f in header.fields]
    hidden: list[tokens.Field] = []
    if header.problem or not set(REQUIRED_COLUMNS) <= set(names):
        if not set(COLUMNS) & set(names):
            hidden += header.fields
        for record in rows:
            hidden += record.fields
    else:
        secret = {i for i, name in enumerate(names) if _is_secret(name)}
        for record in rows:
            fields, _ = tokens.align(record, len(names))
            if fields is None or record.problem:
                hidden += record.fields
            else:
                hidden += (field for i, field in enumerate(fields) if i in secret)
    # A value spanning lines may be an unbalanced quote that swallowed the next rows.
    hidden += (f for r in records for f in r.fields if b"\n" in f.raw or b"\r" in f.raw)
    out, pos = bytearray(), 0
    for field in sorted({f.start: f for f in hidden if f.raw}.values(), key=lambda f: f.start):
        quote = b'"' if field.quoted else b""
        out += data[pos : field.start] + quote + REDACTED.encode()
        out += quote if field.closed else b""
        pos = field.end
    return bytes(out + data[pos:])


def _is_secret(name: str) -> bool:
    return name in PASSWORD_COLUMNS or "pass" in name or "pwd" in name


def _name(text: str) -> str:
    return text.strip().lower()


def _rows(lines: list[int]) -> str:
    shown = ", ".join(str(line) for line in lines[:10])
    more = f" and {len(lines) - 10} more" if len(lines) > 10 else ""
    return f"Row{'s' if len(lines) > 1 else ''} {shown}{more}"


def _header(record: tokens.Record, encoding: str) -> tuple[str, ...]:
    """Normalised column names of the header record; ``CsvFileError`` if it is unusable."""
    where = f"the header (line {record.line})"
    expected = f"name the columns {', '.join(COLUMNS)} (any order, any case)"
    if len(record.fields) == 1 and any(sep in record.fields[0].raw for sep in (b";", b"\t")):
        raise CsvFileError(f"{where} seems to use ';' or tabs between values: save the file "
                           "with commas between values (CSV)")  # fmt: skip
    if record.problem:
        raise CsvFileError(f"{where} has {record.problem}; {FIX_QUOTES}")
    names = tuple(_name(tokens.decode(f.raw, encoding)) for f in record.fields)
    missing = [column for column in REQUIRED_COLUMNS if column not in names]
    if missing and not set(COLUMNS) & set(names):
        raise CsvFileError(f"{where} is not a header: the first non-blank line must {expected}")
    if missing:
        raise CsvFileError(f"{where} lacks the required column(s) {', '.join(missing)}; {expected}")
    twice = sorted({name for name in names if name in COLUMNS and names.count(name) > 1})
    if twice:
        raise CsvFileError(f"{where} names {', '.join(twice)} more than once; keep one of each")
    return names


def _header_warnings(names: tuple[str, ...]) -> list[str]:
    warnings = []
    unknown = list(dict.fromkeys(name for name in names if name and name not in COLUMNS))
    if unknown:
        listed = ", ".join(repr(name) for name in unknown)
        warnings.append(
            f"Unknown column(s) {listed} ignored; the known columns are {', '.join(COLUMNS)}."
        )
    if "" in names:
        warnings.append("The header has column(s) without a name; their values are ignored.")
    return warnings
