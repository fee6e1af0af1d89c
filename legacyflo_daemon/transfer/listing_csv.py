"""The report's listing CSV, row by row: its columns and the exact bytes of each row. Pure.

Owns: the listing's columns (``COLUMNS``), its first bytes (``HEAD``: a UTF-8 BOM, so that Excel
shows accents correctly, and the header row), spreadsheet-formula neutralisation
(``neutralise``) and the bytes of one row (``row``): the cells neutralised, quoted as Python's
``csv.writer`` quotes them (excel dialect, minimal quoting), CRLF, UTF-8 (a surrogate, from an
undecodable folder name, written as the former pipeline wrote it: see ``row``).

The copier (``transfer.recorder``) writes these rows while it reads a folder, and
``report.listing`` only concatenates them: a listing of 200,000 messages is never parsed or
formatted again. The bytes are those the former pipeline wrote for the same messages (JSON
lines read back, then a ``csv.writer`` over a ``utf-8-sig`` text file with
``errors="replace"``; ``tests/test_listing_csv.py``).
Must not: do I/O.
"""

from __future__ import annotations

import datetime as dt
import functools

COLUMNS = ("folder", "received", "from", "subject", "size", "message_id")

# A cell starting with one of these is a formula (or becomes one) in Excel, LibreOffice and
# Google Sheets; a leading apostrophe makes the spreadsheet show it as text (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: str) -> str:
    """``value`` made safe to open in a spreadsheet: a formula-like start gets a leading ``'``.

    NUL characters (which no spreadsheet shows and some CSV readers choke on) become U+FFFD.
    """
    if "\0" in value:
        value = value.replace("\0", "\ufffd")
    if value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def cell(value: str) -> str:
    """``value`` as one CSV cell: neutralised, then quoted when it holds a comma, a quote or a
    line break (``csv.QUOTE_MINIMAL``: those are the only characters that make it quote)."""
    value = neutralise(value)
    if '"' in value:
        return '"' + value.replace('"', '""') + '"'
    if "," in value or "\n" in value or "\r" in value:
        return '"' + value + '"'
    return value


@functools.lru_cache(maxsize=256)
def _folder_cell(folder: str) -> str:
    # A folder's many rows share its name: neutralised and quoted once (the names a run
    # sees are a few hundred at most).
    return cell(folder)


def row(
    folder: str, received: dt.datetime, sender: str, subject: str, size: int, message_id: str
) -> bytes:
    """One listing row, in ``COLUMNS`` order: every text cell neutralised (``cell``),
    ``received`` (timezone-aware) in ISO 8601, ``size`` in decimal; CRLF; UTF-8, a high and
    a low surrogate side by side as the character they encode, any other surrogate ``?``."""
    text = (
        f"{_folder_cell(folder)},{received.isoformat()},{cell(sender)},{cell(subject)},"
        f"{size},{cell(message_id)}\r\n"
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a surrogate: an undecodable folder name (rare)
        # As the JSON-lines recording these rows replaced wrote it (json.loads joins an
        # escaped high and low surrogate side by side): such a pair is the character it
        # encodes; any other surrogate cannot be written in UTF-8 and becomes "?".
        joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        return joined.encode("utf-8", "replace")


HEAD = "\ufeff".encode() + ",".join(COLUMNS).encode("ascii") + b"\r\n"
