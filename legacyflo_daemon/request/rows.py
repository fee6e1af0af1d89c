"""One row of the request CSV: its fields checked, a ``Request`` or a ``RowError`` out.

The rules are docs/contract.md §3.3 to §3.7.

Owns: the column names, which of them are required or passwords, the meaning and validation of
every field of a row, and the row's messages (what is wrong and how to fix it). The file as a
whole (header, duplicate rows, warnings, redaction) is ``csvfile``'s; byte-level splitting is
``tokens``', day formats are ``dates``'.
Must not: do I/O, log, or put any value of a row into a message: with shifted columns any field
may hold a password, so messages name the row, the field and the fix, never the content.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import ipaddress
import re
from dataclasses import dataclass

from legacyflo_daemon.model import Account, DateRange, JobType, Request, RowError, Secret
from legacyflo_daemon.request import dates, tokens

COLUMNS = (
    "jobtype", "jobtitle", "destuserid", "destdomain", "destuserpasswd", "destserver",
    "destfolder", "sendreportid", "sourceuserid", "sourcedomainname", "sourceuserpassword",
    "sourceserver", "sourceserverport", "since", "before",
)  # fmt: skip
REQUIRED_COLUMNS = (
    "jobtype", "destuserid", "destdomain", "destuserpasswd", "destserver", "destfolder",
    "sourceuserid", "sourcedomainname", "sourceuserpassword", "sourceserver",
)  # fmt: skip
PASSWORD_COLUMNS = ("destuserpasswd", "sourceuserpassword")
RESERVED_FOLDERS = ("Drafts", "Trash", "Spam", "Chat", "Quarantine", "Archive")
FIX_QUOTES = 'enclose every value in double quotes and write a double quote inside one as ""'

_RESERVED = frozenset(name.casefold() for name in RESERVED_FOLDERS)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HOST = re.compile(r"[\w-]+(?:\.[\w-]+)*\.?")
_ADDRESS_PART = r'[^\s\x00-\x1f\x7f@<>,;:"()\[\]\\]+'  # no spaces, controls, lists, comments
_ADDRESS = re.compile(f"{_ADDRESS_PART}@({_ADDRESS_PART})")
_PORT = re.compile(r"[0-9]{1,5}")

HOST_CHARS = 253  # the longest DNS name as text (255 octets on the wire)
ADDRESS_CHARS = 254  # the longest address in an SMTP path (256 octets with its < >)
LOCAL_PART_CHARS = 64  # RFC 5321 4.5.3.1.1
SHORTENED = 40  # characters of a name kept when a message must quote it (header warnings)
# Columns whose values usually repeat from row to row: one str object serves every row.
_SHARED = frozenset(
    ("destdomain", "destserver", "destfolder", "sendreportid", "sourcedomainname",
     "sourceserver")
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits on one request CSV: the ``[csv]`` table of the configuration (same names and
    defaults as ``config.schema.CsvConfig``), all inclusive maxima.

    ``max_bytes`` and ``max_rows`` reject the file as a whole (``csvfile``); the others reject
    the row whose value is longer. Host names (``HOST_CHARS``) and the report address
    (``ADDRESS_CHARS``) have fixed limits, the protocols'.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_rows: int = 100_000
    max_title_chars: int = 200
    max_userid_chars: int = 255
    max_password_bytes: int = 1000
    max_folder_chars: int = 255
    # (direction "source"/"dest", host name lower-cased) whose password cell may be empty: the
    # daemon logs in there without the row's password (``auth = "oauth2"`` or ``"admin"``;
    # ``config.schema.Config.passwordless`` gives them). Not a limit, but what the rows must
    # know of the configuration, passed in as a value so that this module stays pure.
    passwordless: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def of(cls, settings: object, passwordless: frozenset[tuple[str, str]] = frozenset()) -> Limits:
        """The limits read from the attributes of the same names of ``settings`` (the
        configuration's ``CsvConfig``), with ``passwordless``: ``Limits.of(config.csv,
        config.passwordless())``."""
        names = (f.name for f in dataclasses.fields(cls) if f.name != "passwordless")
        return cls(**{name: getattr(settings, name) for name in names}, passwordless=passwordless)


DEFAULT_LIMITS = Limits()


def row(
    record: tokens.Record,
    names: tuple[str, ...],
    encoding: str,
    dropped: list[int],
    limits: Limits = DEFAULT_LIMITS,
    shared: dict[str, str] | None = None,
) -> Request | RowError:
    """The ``Request`` of one data record, or the ``RowError`` saying what to fix in it.

    ``names`` are the header's normalised column names; a record whose surplus values were
    empty and unquoted (dropped, as in the reference sample) still counts and its line is
    appended to ``dropped``. A value longer than its limit in ``limits``, or holding a NUL
    byte, rejects the row (naming the field and the limit, never repeating the value); the
    ``RowError``'s title is then cut to ``limits.max_title_chars``. ``shared``, kept by the
    caller across the rows of one file, lets equal values of columns that usually repeat
    (domains, servers, folder, report address) be one object.
    """
    fields, was_dropped = tokens.align(record, len(names))
    caps = _caps(limits)
    values: dict[str, str] = {}
    early: list[tuple[str | None, str, str]] = []  # (field, fix, where): NUL bytes, lengths
    for index, (name, field) in enumerate(zip(names, fields or (), strict=False)):
        if b"\x00" in field.raw:
            early.append((name if name in COLUMNS else None, "nul", f"value {index + 1}"))
        if name in COLUMNS:
            text = tokens.decode(field.raw, encoding)
            text = text if name in PASSWORD_COLUMNS else text.strip()
            if shared is not None and name in _SHARED:
                text = shared.setdefault(text, text)
            values[name] = text
            cap = caps.get(name)
            if cap is not None and _longer(text, cap[0], name in PASSWORD_COLUMNS):
                early.append((name, "long", cap[1]))
    title = values.get("jobtitle", "")
    if len(title) > limits.max_title_chars:
        title = clean_title(title[: limits.max_title_chars]) + "\u2026"
    else:
        title = clean_title(title)
    report_to = _address(values.get("sendreportid", ""))
    if record.problem is not None:
        # Malformed quoting first: it is usually what also broke the count of values.
        bad = record.fields[record.problem_index or 0]
        at = next((i for i, field in enumerate(fields or ()) if field is bad), None)
        column = names[at] if at is not None and names[at] in COLUMNS else None
        where = column or f"value {(record.problem_index or 0) + 1}"
        message = f"{where} has {record.problem}; {FIX_QUOTES}"
        return RowError(record.line, column, message, title, report_to)
    if fields is None:
        span = ""
        if record.last_line > record.line:
            span = f" (it runs to line {record.last_line}: is a double quote left open?)"
        message = (
            f"this row has {len(record.fields)} values but the header has {len(names)} columns"
            f'{span}; give one value per column: {FIX_QUOTES} (an empty one as "")'
        )
        return RowError(record.line, None, message)
    if was_dropped:
        dropped.append(record.line)
    check = _Check(values, limits.passwordless)
    for field_name, fix, where in early:
        check.fail(field_name, fix, where)
    request = check.request(record.line, title, report_to)
    if check.problems:
        message = " ".join(f"{problem}." for _, problem in check.problems)
        return RowError(record.line, check.problems[0][0], message, title, report_to)
    return request


def clean_title(text: str) -> str:
    """``jobtitle`` made safe for a mail header: control characters and line breaks → spaces."""
    return _CONTROL.sub(" ", text).strip()


def _address(value: str) -> str | None:
    """``value`` as an address the report mail can be sent to, else None.

    Report mail goes out without SMTPUTF8, so the local part must be ASCII (at most 64
    characters); a non-ASCII (IDN) domain is given in its ASCII form (``xn--``, IDNA 2003 as
    Python's ``idna`` codec does it). The address is at most ``ADDRESS_CHARS`` long.
    """
    match = _ADDRESS.fullmatch(value)
    if match is None or len(value) > ADDRESS_CHARS:
        return None
    local, domain = value[: match.start(1) - 1], match[1]
    if not local.isascii() or len(local) > LOCAL_PART_CHARS:
        return None
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
        value = f"{local}@{domain}"
        if len(value) > ADDRESS_CHARS:
            return None
    return value if _host(domain) is not None else None


def _host(text: str) -> str | None:
    """A host or domain name, or an IP address (IPv6 without brackets); None if invalid."""
    if _HOST.fullmatch(text) and len(text) <= 253:
        return text
    try:
        return str(ipaddress.IPv6Address(text.removeprefix("[").removesuffix("]")))
    except ValueError:
        return None


_FIXES = {
    "empty": "{field} is empty; fill it in, e.g. {example}",
    "password": "{field} is empty; fill in the account's password (any characters are allowed"
    " inside double quotes)",
    "jobtype": "jobtype must be EXCHANGEIMAP (or IMAP for a non-Exchange source); correct it",
    "domain": "{field} must be a domain name such as {example}, without spaces or '@'; correct it",
    "server": "{field} must be a host name or IP address such as {example}, without spaces,"
    " slashes or a port (the port goes {where})",
    "userid": "{field} must not contain a domain other than {where}; write only the user part,"
    " e.g. {example}",
    "control": "{field} contains control characters (tab, line break); remove them, e.g. {example}",
    "level": "{field} must be one folder name without '.' or '/' (they separate folder levels);"
    " remove them, e.g. {example}",
    "wildcard": "{field} must not contain '*' or '%'; remove them, e.g. {example}",
    "reserved": "{field} is a reserved name (" + ", ".join(RESERVED_FOLDERS) + ");"
    " choose another name, e.g. {example}",
    "address": "{field} must be one e-mail address such as {example}, with only ASCII letters,"
    " digits and punctuation before the '@' (report mail cannot carry others); correct it, or"
    " leave it empty for no report mail",
    "nul": "{field} contains a NUL byte (character 0), which no mail server accepts; remove it"
    " (or is the file partly UTF-16?)",
    "long": "{field} is longer than {where}; shorten it",
    "port": "{field} must be a number from 1 to 65535 (993 for SSL/TLS, 143 otherwise); correct"
    " it, or leave it empty for 993 (or the port the daemon's configuration gives that server)",
    "date": "{field} is {where}, or leave it empty for no limit",
    "order": "{field} is after before; correct one of them (both days are included), e.g."
    " since {example} and before 2018-09-24",
}
_EXAMPLES = {
    "jobtype": "EXCHANGEIMAP", "destdomain": "baya-com.vaultastic.com",
    "destserver": "baya-com.vaultastic.com", "destfolder": "Data27092018",
    "sendreportid": "postmaster@baya.com", "sourcedomainname": "baya.com",
    "sourceserver": "baya.com", "since": "2017-09-25",
}  # fmt: skip


@functools.lru_cache(maxsize=8)
def _caps(limits: Limits) -> dict[str, tuple[int, str]]:
    """Column -> (the most it may hold, how the message names that limit); passwords in bytes as
    UTF-8, the others in characters. Columns a format check bounds anyway (jobtype, the port,
    the dates) have none."""
    password = (limits.max_password_bytes, "bytes as UTF-8 (csv.max_password_bytes)")
    host = (HOST_CHARS, "characters (the longest DNS name)")
    caps = {
        "jobtitle": (limits.max_title_chars, "characters (csv.max_title_chars)"),
        "destuserid": (limits.max_userid_chars, "characters (csv.max_userid_chars)"),
        "sourceuserid": (limits.max_userid_chars, "characters (csv.max_userid_chars)"),
        "destfolder": (limits.max_folder_chars, "characters (csv.max_folder_chars)"),
        "sendreportid": (ADDRESS_CHARS, "characters (the longest address SMTP allows)"),
        **dict.fromkeys(PASSWORD_COLUMNS, password),
        **dict.fromkeys(("destdomain", "sourcedomainname", "destserver", "sourceserver"), host),
    }
    return {name: (most, f"{most} {unit}") for name, (most, unit) in caps.items()}


def _longer(text: str, most: int, in_bytes: bool) -> bool:
    """Whether ``text`` is longer than ``most`` characters, or bytes as UTF-8 if ``in_bytes``."""
    if len(text) > most:
        return True
    # A character takes at most 4 bytes: only a value that may be over is encoded.
    return in_bytes and len(text) * 4 > most and len(text.encode()) > most


class _Check:
    """Validates the values of one row; ``problems`` collects (field, message) in column order."""

    def __init__(
        self, values: dict[str, str], passwordless: frozenset[tuple[str, str]] = frozenset()
    ) -> None:
        self.values = values
        self.passwordless = passwordless
        self.problems: list[tuple[str | None, str]] = []

    def fail(self, field: str | None, fix: str, where: str = "") -> None:
        """Record a problem of ``field`` (None: a value of an unknown column, ``where`` names
        it). Only a field's first problem counts: the checks after a NUL byte or an over-long
        value would only describe the same value again."""
        if field is not None and any(field == known for known, _ in self.problems):
            return
        example = _EXAMPLES.get(field or "", "john")
        text = _FIXES[fix].format(field=field or where, example=example, where=where)
        self.problems.append((field, text))

    def required(self, field: str) -> str:
        value = self.values.get(field, "")
        if not value:
            self.fail(field, "password" if field in PASSWORD_COLUMNS else "empty")
        return value

    def request(self, line: int, title: str, report_to: str | None) -> Request:
        jobtype = self.required("jobtype").upper()
        if jobtype and jobtype not in JobType.__members__:
            self.fail("jobtype", "jobtype")
        kind = JobType(jobtype) if jobtype in JobType.__members__ else JobType.IMAP
        dest = self.account("dest", "destdomain", "destuserpasswd")
        folder = self.folder()
        if self.values.get("sendreportid") and report_to is None:
            self.fail("sendreportid", "address")
        source = self.account("source", "sourcedomainname", "sourceuserpassword")
        since, before = self.day("since"), self.day("before")
        if since and before and since > before:
            self.fail("since", "order")
        return Request(line, kind, title, source, dest, folder, report_to, DateRange(since, before))

    def account(self, side: str, domain_field: str, password_field: str) -> Account:
        domain = self.required(domain_field)
        if domain and _HOST.fullmatch(domain) is None:
            self.fail(domain_field, "domain")
        userid = self.required(f"{side}userid")
        if "@" in userid:
            local, _, suffix = userid.rpartition("@")
            if local and "@" not in local and suffix.casefold() == domain.casefold():
                userid = local
            else:
                self.fail(f"{side}userid", "userid", domain_field)
        if _CONTROL.search(userid):
            self.fail(f"{side}userid", "control")
        named = self.values.get(f"{side}server", "").lower()
        if (side, named) in self.passwordless:  # the daemon logs in there without it
            password = self.values.get(password_field, "")
        else:
            password = self.required(password_field)
        server = self.required(f"{side}server")
        host = _host(server)
        if server and host is None:
            where = "in sourceserverport" if side == "source" else "in the daemon's configuration"
            self.fail(f"{side}server", "server", where)
        port = self.port() if side == "source" else None
        return Account(userid, domain, Secret(password), host or "", port)

    def folder(self) -> str:
        value = self.required("destfolder")
        if _CONTROL.search(value):
            self.fail("destfolder", "control")
        elif "." in value or "/" in value:
            self.fail("destfolder", "level")
        elif "*" in value or "%" in value:
            self.fail("destfolder", "wildcard")
        elif value.casefold() in _RESERVED:
            self.fail("destfolder", "reserved")
        return value

    def port(self) -> int | None:
        """The ``sourceserverport`` cell; None when empty (``imap.endpoint.port_for`` then
        takes the host's configured port, else 993)."""
        value = self.values.get("sourceserverport", "")
        if _PORT.fullmatch(value) and 1 <= int(value) <= 65535:
            return int(value)
        if value:
            self.fail("sourceserverport", "port")
        return None

    def day(self, field: str) -> dt.date | None:
        value = self.values.get(field, "")
        try:
            return dates.parse_day(value) if value else None
        except ValueError as exc:
            self.fail(field, "date", str(exc))
            return None
