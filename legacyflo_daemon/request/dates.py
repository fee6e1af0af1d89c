"""Dates as text: the CSV's day formats, RFC 3501 dates and date-times, ranges in words.

Owns the meaning of ``model.DateRange``: both ``since`` and ``before`` are *inclusive* days, as
the reference document's examples say (since=2017-09-25, before=2018-09-24 copies mail received
25 Sep 2017 through 24 Sep 2018). IMAP's ``BEFORE`` is exclusive, so the criteria say
``BEFORE 25-Sep-2018``.

Also owns the one table of month names (``MONTHS``) and the RFC 3501 ``date-time`` grammar
(INTERNALDATE, ``26-Nov-2025 17:30:22 +0000``), which ``imap.syntax`` uses to read what servers
send and to check what it sends back. It lives here, in the lowest layer that needs it, so that
the CSV reader and the IMAP code share it.

Pure: no clock, no I/O, no locale. Month names are spelled out here because ``strftime("%b")``
follows the process locale and IMAP requires English.
"""

from __future__ import annotations

import datetime as dt
import functools
import re

from legacyflo_daemon.model import DateRange

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
ACCEPTED_FORMATS = "YYYY-MM-DD (2017-09-25) or DD-Mon-YYYY (25-Sep-2017)"

_MONTH_NUMBER = {name.lower(): number for number, name in enumerate(MONTHS, start=1)}
# [0-9], not \d: \d also matches other scripts' digits, which int() would then accept.
_ISO_DAY = re.compile(r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})")
_IMAP_DAY = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
# RFC 3501 date-time: date-day-fixed (" 6" or "06"; "6" is tolerated) "-" month "-" year SP
# time SP zone.
_IMAP_DATE_TIME = re.compile(
    r" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"
)


def month_number(name: str) -> int | None:
    """1 to 12 for an English three-letter month name in any case (``Sep``, ``SEP``), else None."""
    return _MONTH_NUMBER.get(name.lower())


def parse_day(text: str) -> dt.date:
    """``2017-09-25`` or ``25-Sep-2017`` (month in any case, surrounding spaces ignored).

    Raises ``ValueError`` whose message lists the accepted formats. The message never repeats
    ``text``: a CSV row with shifted columns could put a password here.
    """
    value = text.strip()
    if match := _ISO_DAY.fullmatch(value):
        year, month, day = (int(part) for part in match.groups())
    elif (match := _IMAP_DAY.fullmatch(value)) and (number := month_number(match[2])):
        year, month, day = int(match[3]), number, int(match[1])
    else:
        raise ValueError(f"not a date in an accepted format: write {ACCEPTED_FORMATS}")
    try:
        return dt.date(year, month, day)
    except ValueError:
        raise ValueError(
            f"not a real calendar day (check the day and the month): write {ACCEPTED_FORMATS}"
        ) from None


def imap_day(day: dt.date) -> str:
    """RFC 3501 ``date`` text, e.g. ``25-Sep-2017`` (English month whatever the locale)."""
    return f"{day.day:02d}-{MONTHS[day.month - 1]}-{day.year:04d}"


@functools.lru_cache(maxsize=256)
def _zone(sign: str, hours: str, minutes: str) -> dt.timezone:
    """The fixed zone of an offset (cached: a mailbox has a few, each message names one)."""
    offset = dt.timedelta(hours=int(hours), minutes=int(minutes))
    return dt.timezone(-offset if sign == "-" else offset)


def parse_date_time(raw: str) -> dt.datetime:
    """An RFC 3501 date-time (``"26-Nov-2025 17:30:22 +0000"``, quotes optional), timezone-aware.

    Raises ``ValueError`` for anything else, including a day or an offset that does not exist
    (``31-Feb-2025``, ``+9900``).
    """
    # Called for every message of every folder read (twice per message in a delta pass):
    # one ``groups()`` instead of nine group lookups.
    m = _IMAP_DATE_TIME.fullmatch(raw.strip('"'))
    if m is None:
        raise ValueError(f"not an IMAP date-time: {raw!r}")
    day, name, year, hour, minute, second, sign, zh, zm = m.groups()
    month = _MONTH_NUMBER.get(name.lower())
    if month is None:
        raise ValueError(f"not an IMAP date-time: {raw!r}")
    try:
        tz = _zone(sign, zh, zm)
        return dt.datetime(
            int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=tz
        )
    except ValueError:
        raise ValueError(f"not a real IMAP date-time: {raw!r}") from None


def imap_criteria(r: DateRange) -> list[str]:
    """SEARCH criteria for ``r``: ``["SINCE", "25-Sep-2017", "BEFORE", "25-Sep-2018"]``.

    ``["ALL"]`` when the range is open on both sides. ``before`` is inclusive here and
    exclusive in IMAP, hence the day added; on ``date.max`` there is no later day, so no
    ``BEFORE`` is needed.
    """
    criteria: list[str] = []
    if r.since is not None:
        criteria += ["SINCE", imap_day(r.since)]
    if r.before is not None and r.before < dt.date.max:
        criteria += ["BEFORE", imap_day(r.before + dt.timedelta(days=1))]
    return criteria or ["ALL"]


def in_range(r: DateRange, internaldate: dt.datetime) -> bool:
    """Whether a message with this INTERNALDATE matches ``r`` as the server's SEARCH does.

    RFC 3501: SINCE/BEFORE compare dates "disregarding time and timezone", i.e. the calendar
    day of the INTERNALDATE as written, in its own offset (``"24-Sep-2018 23:30:00 -0700"`` is
    the 24th even though it is the 25th in UTC).
    """
    day = internaldate.date()
    if r.since is not None and day < r.since:
        return False
    return r.before is None or day <= r.before


def day_words(day: dt.date) -> str:
    """``25 Sep 2017`` (English month names whatever the locale)."""
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def describe(r: DateRange) -> str:
    """The range for humans, e.g. ``received 25 Sep 2017 through 24 Sep 2018, inclusive``."""
    if r.since is not None and r.before is not None:
        return f"received {day_words(r.since)} through {day_words(r.before)}, inclusive"
    if r.since is not None:
        return f"received on or after {day_words(r.since)}"
    if r.before is not None:
        return f"received on or before {day_words(r.before)}"
    return "all mail regardless of date"
