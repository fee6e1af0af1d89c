"""dates: the CSV's day formats, IMAP SEARCH criteria, the INTERNALDATE filter, the words."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legacyflo_daemon.model import DateRange
from legacyflo_daemon.request import dates

D = dt.date


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2017-09-25", D(2017, 9, 25)),
        ("25-Sep-2017", D(2017, 9, 25)),
        ("25-sep-2017", D(2017, 9, 25)),
        ("25-SEP-2017", D(2017, 9, 25)),
        (" 2018-09-24 ", D(2018, 9, 24)),
        ("2017-9-5", D(2017, 9, 5)),
        ("5-May-2017", D(2017, 5, 5)),
        ("29-Feb-2020", D(2020, 2, 29)),
        ("2018-12-31", D(2018, 12, 31)),
    ],
)
def test_parse_day_accepts(text: str, expected: dt.date) -> None:
    assert dates.parse_day(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "09/10/2017",
        "2017/09/25",
        "25 Sep 2017",
        "25-September-2017",
        "25-Foo-2017",
        "2017-02-30",
        "29-Feb-2019",
        "2017-13-01",
        "0000-01-01",
        "20170925",
        "\uff12\uff10\uff11\uff17-09-25",  # full-width digits: int() would take them, we do not
        "",
        "tomorrow",
    ],
)
def test_parse_day_rejects_and_lists_formats(text: str) -> None:
    with pytest.raises(ValueError, match="2017-09-25") as info:
        dates.parse_day(text)
    assert "25-Sep-2017" in str(info.value)
    assert "YYYY-MM-DD" in str(info.value)
    if text.strip():
        assert text not in str(info.value)  # the cell could be a shifted password


@pytest.mark.parametrize(
    ("since", "before", "criteria"),
    [
        (D(2017, 9, 25), D(2018, 9, 24), ["SINCE", "25-Sep-2017", "BEFORE", "25-Sep-2018"]),
        (D(2017, 9, 25), None, ["SINCE", "25-Sep-2017"]),
        (None, D(2018, 9, 24), ["BEFORE", "25-Sep-2018"]),
        (None, None, ["ALL"]),
        (None, D(2018, 12, 31), ["BEFORE", "01-Jan-2019"]),
        (None, D(2020, 2, 28), ["BEFORE", "29-Feb-2020"]),
        (D(2018, 3, 1), D(2018, 3, 1), ["SINCE", "01-Mar-2018", "BEFORE", "02-Mar-2018"]),
        (None, dt.date.max, ["ALL"]),  # no day after date.max: nothing to exclude
        (D(1, 1, 1), None, ["SINCE", "01-Jan-0001"]),
    ],
)
def test_imap_criteria(since: D | None, before: D | None, criteria: list[str]) -> None:
    assert dates.imap_criteria(DateRange(since, before)) == criteria


def test_month_names_are_english_whatever_the_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    # strftime("%b") would follow LC_TIME; make it lie to prove it is not used.
    class Lying(dt.date):
        def strftime(self, fmt: str) -> str:
            return "Septembre"

    day = Lying(2017, 9, 25)
    assert dates.imap_day(day) == "25-Sep-2017"
    months = [dates.imap_day(D(2017, m, 1))[3:6] for m in range(1, 13)]
    assert " ".join(months) == "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec"


@pytest.mark.parametrize(
    ("name", "number"), [("Jan", 1), ("sep", 9), ("DEC", 12), ("Sept", None), ("", None)]
)
def test_month_number(name: str, number: int | None) -> None:
    assert dates.month_number(name) == number


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("26-Nov-2025 17:30:22 +0000", dt.datetime(2025, 11, 26, 17, 30, 22, tzinfo=dt.UTC)),
        ('"26-Nov-2025 17:30:22 +0000"', dt.datetime(2025, 11, 26, 17, 30, 22, tzinfo=dt.UTC)),
        (" 6-Jan-2015 09:30:00 -0700", dt.datetime(2015, 1, 6, 16, 30, tzinfo=dt.UTC)),
        ("24-sep-2018 23:59:59 +0530", dt.datetime(2018, 9, 24, 18, 29, 59, tzinfo=dt.UTC)),
    ],
)
def test_parse_date_time(raw: str, expected: dt.datetime) -> None:
    parsed = dates.parse_date_time(raw)
    assert parsed == expected
    assert parsed.utcoffset() is not None


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "26-Nov-2025",
        "32-Foo-2025 17:30:22 +0000",
        "2025-11-26",
        "31-Feb-2025 17:30:22 +0000",  # no such day
        "26-Nov-2025 17:30:22 +9900",  # no such offset
        "26-Nov-2025 17:30:22 +0000 ",
    ],
)
def test_parse_date_time_refuses(raw: str) -> None:
    with pytest.raises(ValueError):
        dates.parse_date_time(raw)


def _at(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%d-%b-%Y %H:%M:%S %z")


RANGE = DateRange(D(2017, 9, 25), D(2018, 9, 24))


@pytest.mark.parametrize(
    ("r", "internaldate", "inside"),
    [
        (RANGE, "25-Sep-2017 00:00:00 +0000", True),
        (RANGE, "24-Sep-2017 23:59:59 +0000", False),
        (RANGE, "24-Sep-2018 23:59:59 +0000", True),
        (RANGE, "25-Sep-2018 00:00:00 +0000", False),
        # The INTERNALDATE's own day counts, not the UTC one (RFC 3501 ignores the zone):
        (RANGE, "24-Sep-2018 23:30:00 -0700", True),  # 25 Sep in UTC
        (RANGE, "25-Sep-2017 00:30:00 +0200", True),  # 24 Sep in UTC
        (RANGE, "24-Sep-2017 22:30:00 -0300", False),  # 25 Sep in UTC
        (DateRange(), "01-Jan-1970 00:00:00 +0000", True),
        (DateRange(since=D(2017, 9, 25)), "01-Jan-2099 00:00:00 +0000", True),
        (DateRange(since=D(2017, 9, 25)), "24-Sep-2017 12:00:00 +0000", False),
        (DateRange(before=D(2018, 9, 24)), "01-Jan-1990 00:00:00 +0000", True),
        (DateRange(before=D(2018, 9, 24)), "25-Sep-2018 00:00:01 +1400", False),
    ],
)
def test_in_range(r: DateRange, internaldate: str, inside: bool) -> None:
    assert dates.in_range(r, _at(internaldate)) is inside


def test_in_range_naive_datetime_uses_its_day() -> None:
    assert dates.in_range(RANGE, dt.datetime(2018, 9, 24, 23, 59))
    assert not dates.in_range(RANGE, dt.datetime(2018, 9, 25, 0, 0))


@given(
    since=st.none() | st.dates(max_value=D(9000, 1, 1)),
    length=st.integers(0, 800),
    day=st.dates(max_value=D(9000, 12, 31)),
    open_end=st.booleans(),
)
def test_in_range_agrees_with_the_imap_criteria(
    since: D | None, length: int, day: D, open_end: bool
) -> None:
    """The client-side filter and the SEARCH criteria select the same days."""
    before = None if open_end else (since or D(2000, 1, 1)) + dt.timedelta(days=length)
    r = DateRange(since, before)
    criteria = dates.imap_criteria(r)
    search_since = criteria[criteria.index("SINCE") + 1] if "SINCE" in criteria else None
    search_before = criteria[criteria.index("BEFORE") + 1] if "BEFORE" in criteria else None
    by_search = (search_since is None or day >= dates.parse_day(search_since)) and (
        search_before is None or day < dates.parse_day(search_before)
    )
    when = dt.datetime.combine(day, dt.time(12), dt.timezone(dt.timedelta(hours=-11)))
    assert dates.in_range(r, when) is by_search


@pytest.mark.parametrize(
    ("r", "words"),
    [
        (RANGE, "received 25 Sep 2017 through 24 Sep 2018, inclusive"),
        (DateRange(since=D(2017, 9, 25)), "received on or after 25 Sep 2017"),
        (DateRange(before=D(2018, 9, 24)), "received on or before 24 Sep 2018"),
        (DateRange(), "all mail regardless of date"),
        (
            DateRange(D(2018, 3, 1), D(2018, 3, 1)),
            "received 1 Mar 2018 through 1 Mar 2018, inclusive",
        ),
    ],
)
def test_describe(r: DateRange, words: str) -> None:
    assert dates.describe(r) == words
