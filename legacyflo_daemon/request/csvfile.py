"""The request CSV file: bytes in, ``Request`` values and row errors out; redaction.

The rules are docs/contract.md §3.

Owns: the header, duplicate rows, the file's limits (``max_bytes``, ``max_rows``), the file's
warnings, and ``redact`` (what a CSV looks like once its passwords, and every value of its
rejected rows, are gone: §3.8). One row's fields, their limits and their messages are ``rows``'
(which also names the columns), byte-level splitting is ``tokens``'.
Must not: do I/O, log, or put any value of a row into a message: with shifted columns any field
may hold a password, so messages name the row, the field and the fix, never the content.
A bad row is a ``RowError`` value and the good rows of the same file still come out;
``CsvFileError`` is only for a file that is unusable as a whole.
"""

from __future__ import annotations

from collections.abc import Iterator

from legacyflo_daemon.errors import CsvFileError
from legacyflo_daemon.model import REDACTED, ParseResult, Request, RowError
from legacyflo_daemon.request import tokens
from legacyflo_daemon.request.rows import COLUMNS as COLUMNS
from legacyflo_daemon.request.rows import DEFAULT_LIMITS as DEFAULT_LIMITS
from legacyflo_daemon.request.rows import FIX_QUOTES, SHORTENED, row
from legacyflo_daemon.request.rows import PASSWORD_COLUMNS as PASSWORD_COLUMNS
from legacyflo_daemon.request.rows import REQUIRED_COLUMNS as REQUIRED_COLUMNS
from legacyflo_daemon.request.rows import Limits as Limits

# What ``redact`` returns for binary content (a NUL byte in the header: UTF-16, .xlsx, ...) or a
# file over ``Limits.max_bytes``: no structure can be trusted there, so nothing of it is kept.
BINARY_REDACTED = REDACTED.encode() + b"\n"


def check_size(size: int, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise ``CsvFileError`` naming ``csv.max_bytes`` if a file of ``size`` bytes is over it.

    ``parse`` checks this itself; a caller that knows the size before reading the file (its
    ``stat``) calls it first so that an oversized file is never read into memory.
    """
    if size > limits.max_bytes:
        raise CsvFileError(
            f"the file is {size:,} bytes, more than the limit of {limits.max_bytes:,} bytes"
            " (csv.max_bytes); split it into smaller files"
        )


def parse(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ParseResult:
    """Read a request CSV. Raises ``CsvFileError`` only if the file as a whole is unusable:
    among others when it is over ``limits.max_bytes`` or has more than ``limits.max_rows`` rows.

    Memory: besides ``data`` and the result, one record at a time and one entry per good row
    (to find duplicates); no list of every row's values.
    """
    if not data:
        raise CsvFileError(
            "the file is empty (0 bytes); write a header line and one row per request"
        )
    check_size(len(data), limits)
    records = tokens.records(data)
    first = next(records, None)
    if first is None:
        raise CsvFileError(
            "the file has only blank lines; write a header line and the request rows"
        )
    if _has_nul(first):
        raise CsvFileError(
            "the header line contains NUL bytes, so the file is not CSV text (UTF-16 text or a"
            ' spreadsheet file?); save it as "CSV UTF-8 (comma delimited)"'
        )
    encoding = tokens.sniff_encoding(data)
    names = _header(first, encoding)
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
    count = 0
    for _, outcome in _outcomes(records, names, encoding, limits, dropped):
        count += 1
        if count > limits.max_rows:
            raise CsvFileError(
                f"the file has more than {limits.max_rows:,} request rows, the limit"
                " (csv.max_rows); split it into smaller files"
            )
        if isinstance(outcome, Request):
            requests.append(outcome)
        else:
            errors.append(outcome)
    if dropped:
        warnings.append(
            f"{_rows(dropped)} had more values than the header has columns; their"
            " empty unquoted values were ignored, as in the reference sample."
        )
    if count == 0:
        warnings.append("The file has a header but no request rows.")
    return ParseResult(tuple(requests), tuple(errors), tuple(warnings), encoding, count)


def _outcomes(
    records: Iterator[tokens.Record],
    names: tuple[str, ...],
    encoding: str,
    limits: Limits,
    dropped: list[int],
) -> Iterator[tuple[tokens.Record, Request | RowError]]:
    """Each data record with its verdict: ``rows.row``'s, or a duplicate of an earlier row."""
    seen: dict[tuple[str, ...], int] = {}
    shared: dict[str, str] = {}
    for record in records:
        outcome = row(record, names, encoding, dropped, limits, shared)
        if isinstance(outcome, Request):
            source, folder = outcome.source, outcome.dest_folder
            key = tuple(part.casefold() for part in (source.userid, source.domain, source.server))
            first = seen.setdefault((*key, folder.casefold()), record.line)
            if first != record.line:
                outcome = RowError(
                    record.line,
                    "destfolder",
                    f"duplicate of row {first}: same source account and same destfolder; "
                    "remove this row or give it another destfolder",
                    outcome.title,
                    outcome.report_to,
                )
        yield record, outcome


def redact(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """``data`` with every value that may be secret replaced by ``********``. Never raises.

    Everything else stays byte-identical (BOM, line endings, blank lines, encoding, quoting).
    In a row that ``parse`` (with the same ``limits``) accepts, the password fields are
    replaced: ``PASSWORD_COLUMNS`` plus any column whose name contains "pass" or "pwd". In a
    row that it rejects, for whatever reason (wrong count of values, malformed quoting, any bad
    value, a duplicate), every value is replaced: shifted columns (an unquoted password with a
    comma in it) may have put a piece of a password in any field. The row itself stays, so its
    line still shows where it was. Every value is replaced in every row after the first
    non-blank line when that line lacks a required column (the first line too when it names no
    known column: then it is probably data). Any value spanning lines is replaced too (an
    unbalanced quote may have swallowed the next rows into it); empty values stay empty (a quote
    never closed gets ``********`` after it, so that redacting again changes nothing). A
    header with a NUL byte (binary content) or a file over ``limits.max_bytes`` is replaced as
    a whole by ``BINARY_REDACTED``.
    """
    try:
        return _redact(data, limits)
    except Exception:  # a bug here must not leak the file: keep nothing of it
        return BINARY_REDACTED


def _redact(data: bytes, limits: Limits) -> bytes:
    if len(data) > limits.max_bytes:
        return BINARY_REDACTED
    records = tokens.records(data)
    header = next(records, None)
    if header is None:
        return data
    if _has_nul(header):
        return BINARY_REDACTED
    names = tuple(_name(tokens.decode(f.raw, tokens.UTF8)) for f in header.fields)
    # Only the fields to replace are kept, so that memory does not grow with the whole file.
    hidden: list[tokens.Field] = [f for f in header.fields if _spans_lines(f)]
    if header.problem or not set(REQUIRED_COLUMNS) <= set(names):
        if not set(COLUMNS) & set(names):
            hidden += header.fields
        for record in records:
            hidden += record.fields
    else:
        secret = {i for i, name in enumerate(names) if _is_secret(name)}
        encoding = tokens.sniff_encoding(data)
        for record, outcome in _outcomes(records, names, encoding, limits, []):
            fields, _ = tokens.align(record, len(names))
            if fields is None or isinstance(outcome, RowError):
                hidden += record.fields
            else:
                hidden += (f for i, f in enumerate(fields) if i in secret or _spans_lines(f))
                # An unaligned value (dropped as blank) never spans lines: it is unquoted.
    # An empty value stays empty, except a quote never closed: left as it is, it could pair
    # with a quote of the redacted text (a second redaction would then change the file).
    kept = {f.start: f for f in hidden if f.raw or not f.closed}
    out, pos = bytearray(), 0
    for field in sorted(kept.values(), key=lambda f: f.start):
        quote = b'"' if field.quoted else b""
        out += data[pos : field.start] + quote + REDACTED.encode()
        out += quote if field.closed else b""
        pos = field.end
    out += data[pos:]
    return bytes(out)


def _has_nul(record: tokens.Record) -> bool:
    return any(b"\x00" in field.raw for field in record.fields)


def _spans_lines(field: tokens.Field) -> bool:
    """A value spanning lines may be an unbalanced quote that swallowed the next rows."""
    return b"\n" in field.raw or b"\r" in field.raw


def _is_secret(name: str) -> bool:
    return name in PASSWORD_COLUMNS or "pass" in name or "pwd" in name


def _name(text: str) -> str:
    return text.strip().lower()


def _shorten(text: str) -> str:
    return text if len(text) <= SHORTENED else text[: SHORTENED - 1] + "\u2026"


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
        # A header is data too: a name may be megabytes long, so each is cut for the message.
        listed = ", ".join(repr(_shorten(name)) for name in unknown[:10])
        listed += f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        warnings.append(
            f"Unknown column(s) {listed} ignored; the known columns are {', '.join(COLUMNS)}."
        )
    if "" in names:
        warnings.append("The header has column(s) without a name; their values are ignored.")
    return warnings
