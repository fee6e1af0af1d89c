"""Values shared by every layer: requests, row errors, results. Pure: no I/O, no clock.

Everything here is a frozen, slotted dataclass or a StrEnum so that values can be passed between
tasks and stored without aliasing surprises. Passwords are wrapped in ``Secret`` whose ``repr``
and ``str`` are ``********``: a request printed, logged or put in an exception never shows one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum

REDACTED = "********"


class Secret:
    """A password. ``reveal()`` is the only way to the value; everything else shows ``********``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:  # pickling would leak the value
        raise TypeError("Secret values cannot be pickled")


class JobType(StrEnum):
    EXCHANGEIMAP = "EXCHANGEIMAP"  # Exchange source: non-mail folders are skipped
    IMAP = "IMAP"  # any IMAP source: no Exchange exclusions


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"  # stopped by ``legacyflo-daemon cancel``; not resumed

    @property
    def finished(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)


@dataclass(frozen=True, slots=True)
class DateRange:
    """Inclusive received-date range; ``None`` means open on that side.

    since=2017-09-25, before=2018-09-24 means mail received 25 Sep 2017 00:00 through
    24 Sep 2018 23:59:59 (IMAP ``SINCE 25-Sep-2017 BEFORE 25-Sep-2018``).
    """

    since: dt.date | None = None
    before: dt.date | None = None


@dataclass(frozen=True, slots=True)
class Account:
    """One IMAP login. ``port`` is the CSV's, None when the CSV gives none (always for the
    destination): then ``imap.endpoint.port_for`` takes it from the config."""

    userid: str
    domain: str
    password: Secret
    server: str
    port: int | None = None

    @property
    def address(self) -> str:
        return f"{self.userid}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Request:
    """One good row of a request CSV: copy ``source`` into ``dest`` under ``dest_folder``."""

    row: int  # line number in the CSV file where the row starts (1-based, header included)
    jobtype: JobType
    title: str
    source: Account
    dest: Account
    dest_folder: str
    report_to: str | None
    dates: DateRange


@dataclass(frozen=True, slots=True)
class RowError:
    """A rejected row: ``field`` is the header name at fault (None for the row as a whole).

    ``message`` says what is wrong and how to fix it. ``title`` and ``report_to`` are kept
    (when they could be read and ``report_to`` is a valid address) so that the rejection can
    be reported to the requester.
    """

    row: int
    field: str | None
    message: str
    title: str = ""
    report_to: str | None = None


@dataclass(frozen=True, slots=True)
class ParseResult:
    """What ``csvfile.parse`` makes of one file: good rows, bad rows, file-level warnings."""

    requests: tuple[Request, ...]
    errors: tuple[RowError, ...]
    warnings: tuple[str, ...]
    encoding: str  # "utf-8" or "windows-1252"
    rows: int  # number of data rows seen (blank lines excluded)


@dataclass(frozen=True, slots=True)
class MessageFailure:
    """One message that could not be copied; the request ends ``partial``."""

    folder: str  # source folder, decoded (human-readable)
    uid: int
    date: str | None  # INTERNALDATE as ISO 8601, if known
    subject: str
    reason: str
    # "failed": not copied; "altered": stored, but the destination changed it (readback).
    kind: str = "failed"


@dataclass(frozen=True, slots=True)
class FolderResult:
    """Counts for one source folder. ``bytes`` counts bytes copied in this run."""

    source: str  # decoded source path, e.g. "INBOX/Projects/2018"
    destination: str  # decoded destination path, e.g. "INBOX.historical_data.Data.Inbox.Projects"
    in_range: int = 0
    copied: int = 0
    already_present: int = 0
    failed: int = 0
    bytes: int = 0
    deleted_dropped: int = 0  # messages whose \Deleted flag was not carried over
    note: str = ""  # e.g. "'.' in a name became '_'"
    altered: int = 0  # stored (so also in copied/already_present), but changed by the server
    error: str | None = None  # why this folder could not be copied (the others were)


@dataclass(frozen=True, slots=True)
class RequestResult:
    """The outcome of one request, rendered by ``report`` into JSON and a mail."""

    request_id: str
    status: Status
    started: dt.datetime | None
    finished: dt.datetime | None
    folders: tuple[FolderResult, ...] = ()
    failures: tuple[MessageFailure, ...] = ()
    error: str | None = None  # why the request failed/was rejected, for humans
    warnings: tuple[str, ...] = field(default=())
    # The request's destination folder as the user sees it, in the destination's own hierarchy
    # delimiter ("INBOX/historical_data/Data"); None when the copier never listed the server.
    destination_folder: str | None = None
    # Source folders not copied by design, with why: (decoded path, reason).
    skipped: tuple[tuple[str, str], ...] = ()
