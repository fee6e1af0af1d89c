"""request.csvfile (with rows and tokens): docs/contract.md §3 rule by rule, redaction, and
round-trip properties."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import io
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legacyflo_daemon.errors import CsvFileError
from legacyflo_daemon.model import (
    REDACTED,
    Account,
    DateRange,
    JobType,
    ParseResult,
    Request,
    RowError,
    Secret,
)
from legacyflo_daemon.request import csvfile

FIXTURE = Path(__file__).parent / "fixtures" / "reference_sample.csv"
REFERENCE_DOC = Path("/work/shared/reference/legacyflo-exchange-imap.txt")
HEADER = list(csvfile.COLUMNS)
DEST_PW, SOURCE_PW = "Dest-S3cret,pw", 'Src-S3cret"pw'
GOOD = {
    "jobtype": "EXCHANGEIMAP",
    "jobtitle": "Upload Data John Smith",
    "destuserid": "john",
    "destdomain": "baya-com.vaultastic.com",
    "destuserpasswd": DEST_PW,
    "destserver": "baya-com.vaultastic.com",
    "destfolder": "Data27092018",
    "sendreportid": "postmaster@baya.com",
    "sourceuserid": "john",
    "sourcedomainname": "baya.com",
    "sourceuserpassword": SOURCE_PW,
    "sourceserver": "baya.com",
    "sourceserverport": "993",
    "since": "25-Sep-2017",
    "before": "24-Sep-2018",
}


def quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def line(values: list[str]) -> str:
    return ",".join(quote(value) for value in values)


def row(**changes: str) -> str:
    return line([{**GOOD, **changes}[name] for name in HEADER])


def csv_bytes(*rows: str, header: list[str] = HEADER, eol: str = "\n") -> bytes:
    return eol.join([line(header), *rows]).encode()


def only_error(result: ParseResult) -> RowError:
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


# ---------------------------------------------------------------- the reference document's sample


def test_fixture_is_the_reference_documents_sample_byte_for_byte() -> None:
    if not REFERENCE_DOC.exists():
        pytest.skip("the reference document is not on this machine")
    printed = REFERENCE_DOC.read_bytes().split(b"\n")[64:67]
    assert FIXTURE.read_bytes() == b"\n".join(printed)
    assert not FIXTURE.read_bytes().endswith(b"\n")  # the document has none after the row


def test_reference_sample_yields_exactly_its_request() -> None:
    result = csvfile.parse(FIXTURE.read_bytes())
    assert result.errors == ()
    assert result.rows == 1
    assert result.encoding == "utf-8"
    assert result.requests == (
        Request(
            row=3,
            jobtype=JobType.EXCHANGEIMAP,
            title="Upload Data John Smith",
            source=Account("john", "baya.com", Secret("password@123"), "baya.com", 993),
            dest=Account(
                "john",
                "baya-com.vaultastic.com",
                Secret("password@123"),
                "baya-com.vaultastic.com",
                None,
            ),
            dest_folder="Data27092018",
            report_to="postmaster@baya.com",
            dates=DateRange(dt.date(2017, 9, 25), dt.date(2018, 9, 24)),
        ),
    )
    assert len(result.warnings) == 1
    assert "Row 3" in result.warnings[0]
    assert "empty unquoted values were ignored" in result.warnings[0]


def test_reference_sample_redacted() -> None:
    data = FIXTURE.read_bytes()
    assert csvfile.redact(data) == data.replace(b'"password@123"', b'"********"')


# ---------------------------------------------------------------- one bad field: row rules

# (field, bad value, words of the fix the message must contain)
BAD_VALUES = [
    ("jobtype", "", "fill it in, e.g. EXCHANGEIMAP"),
    ("jobtype", "MIGRATE", "must be EXCHANGEIMAP"),
    ("jobtype", "EXCHANGE IMAP", "must be EXCHANGEIMAP"),
    ("destuserid", "", "fill it in, e.g. john"),
    ("destuserid", "john@baya.com", "write only the user part"),
    ("destuserid", "a@b@baya-com.vaultastic.com", "write only the user part"),
    ("destuserid", "jo\x01hn", "remove them"),
    ("sourceuserid", "john@other.com", "write only the user part"),
    ("sourceuserid", "@baya.com", "write only the user part"),
    ("sourceuserid", "   ", "fill it in"),
    ("destdomain", "", "fill it in, e.g. baya-com.vaultastic.com"),
    ("destdomain", "baya com", "must be a domain name"),
    ("sourcedomainname", "", "fill it in, e.g. baya.com"),
    ("sourcedomainname", "baya.com/x", "must be a domain name"),
    ("destuserpasswd", "", "fill in the account's password"),
    ("sourceuserpassword", "", "fill in the account's password"),
    ("destserver", "", "fill it in"),
    ("destserver", "vault host", "without spaces, slashes or a port"),
    ("destserver", "https://vault.example", "without spaces, slashes or a port"),
    ("sourceserver", "baya.com:993", "the port goes in sourceserverport"),
    ("sourceserver", "baya.com/owa", "without spaces, slashes or a port"),
    ("destfolder", "", "fill it in, e.g. Data27092018"),
    ("destfolder", "   ", "fill it in, e.g. Data27092018"),
    ("destfolder", "Data.2018", "one folder name without '.' or '/'"),
    ("destfolder", "Data/2018", "one folder name without '.' or '/'"),
    ("destfolder", "Data*", "must not contain '*' or '%'"),
    ("destfolder", "Da%ta", "must not contain '*' or '%'"),
    ("destfolder", "Da\tta", "control characters"),
    ("destfolder", "Da\nta", "control characters"),
    ("destfolder", "Trash", "reserved name"),
    ("destfolder", "drafts", "choose another name"),
    ("destfolder", "SPAM", "choose another name"),
    ("destfolder", "Chat", "choose another name"),
    ("destfolder", "quarantine", "choose another name"),
    ("destfolder", " Archive ", "choose another name"),
    ("sendreportid", "postmaster", "one e-mail address such as postmaster@baya.com"),
    ("sendreportid", "post master@baya.com", "one e-mail address"),
    ("sendreportid", "a@baya.com, b@baya.com", "one e-mail address"),
    ("sendreportid", "a@baya.com\r\nBcc: x@evil.com", "one e-mail address"),
    ("sendreportid", "Post <pm@baya.com>", "leave it empty for no report mail"),
    ("sendreportid", "pm\x01@baya.com", "one e-mail address"),
    ("sendreportid", "p\u00f6stmaster@baya.com", "only ASCII letters"),  # undeliverable
    ("sendreportid", "pm@bad\u00a0domain.com", "one e-mail address"),
    ("sendreportid", "p" * 65 + "@baya.com", "one e-mail address"),  # local part over 64
    ("sendreportid", "pm@" + ("a" * 62 + ".") * 4 + "com", "longer than 254 characters"),
    ("destuserpasswd", "pass\x00word", "contains a NUL byte"),
    ("sourceuserpassword", "\x00", "contains a NUL byte"),
    ("destuserid", "jo\x00hn", "contains a NUL byte"),
    ("sourcedomainname", "baya.com\x00", "contains a NUL byte"),
    ("destfolder", "Data\x00", "contains a NUL byte"),
    ("since", "2017-09-25\x00", "contains a NUL byte"),
    ("jobtype", "\x00EXCHANGEIMAP", "contains a NUL byte"),
    ("destuserid", "j" * 256, "longer than 255 characters (csv.max_userid_chars)"),
    ("sourceuserid", "j" * 10_000, "longer than 255 characters (csv.max_userid_chars)"),
    ("destuserpasswd", "p" * 1001, "longer than 1000 bytes as UTF-8 (csv.max_password_bytes)"),
    ("sourceuserpassword", "\u00e9" * 501, "longer than 1000 bytes as UTF-8"),  # 501 chars
    ("destfolder", "D" * 256, "longer than 255 characters (csv.max_folder_chars)"),
    ("destdomain", ("a" * 63 + ".") * 4, "longer than 253 characters (the longest DNS name)"),
    ("sourceserver", "b" * 254, "longer than 253 characters (the longest DNS name)"),
    ("sourceserverport", "0", "from 1 to 65535"),
    ("sourceserverport", "65536", "from 1 to 65535"),
    ("sourceserverport", "99999", "from 1 to 65535"),
    ("sourceserverport", "imaps", "leave it empty for 993"),
    ("sourceserverport", "+993", "from 1 to 65535"),
    ("sourceserverport", "9_93", "from 1 to 65535"),
    ("sourceserverport", "\uff19\uff19\uff13", "from 1 to 65535"),  # full-width 993
    ("since", "09/10/2017", "(2017-09-25) or DD-Mon-YYYY (25-Sep-2017)"),
    ("since", "2017-02-30", "not a real calendar day"),
    ("since", "25-Foo-2017", "leave it empty for no limit"),
    ("before", "tomorrow", "YYYY-MM-DD"),
    ("since", "2018-09-25", "since is after before; correct one of them"),
]


@pytest.mark.parametrize(("field", "value", "fix"), BAD_VALUES)
def test_bad_value_rejects_only_its_row(field: str, value: str, fix: str) -> None:
    data = csv_bytes(row(sourceuserid="a"), row(**{field: value}), row(sourceuserid="c"))
    result = csvfile.parse(data)
    error = only_error(result)
    assert (error.row, error.field) == (3, field)
    assert fix in error.message
    assert error.title == "Upload Data John Smith"
    expected_report = None if field == "sendreportid" else "postmaster@baya.com"
    assert error.report_to == expected_report
    breaks = value.count("\n") + value.count("\r") - value.count("\r\n")
    assert [r.row for r in result.requests] == [2, 4 + breaks]  # physical lines
    assert [r.source.userid for r in result.requests] == ["a", "c"]
    assert result.rows == 3
    for text in (error.message, *result.warnings):
        assert DEST_PW not in text and SOURCE_PW not in text


def test_messages_never_contain_cell_values() -> None:
    """With shifted columns any cell may hold a password: no message repeats a cell."""
    secret = "S3cr.et/pw*x y%"
    cells = {name: secret for name in HEADER}
    result = csvfile.parse(csv_bytes(line([cells[name] for name in HEADER])))
    error = only_error(result)
    assert error.field == "jobtype"
    for field in ("destfolder", "sendreportid", "sourceserverport", "since", "before"):
        assert f"{field} " in error.message
    assert "S3cr" not in error.message and "S3cr" not in str(result.warnings)


def test_several_bad_fields_in_one_row_are_reported_together() -> None:
    result = csvfile.parse(csv_bytes(row(destfolder="Trash", since="soon", sourceserverport="x")))
    error = only_error(result)
    assert error.field == "destfolder"
    assert "destfolder is a reserved name" in error.message
    assert "sourceserverport must be a number" in error.message
    assert "since is not a date" in error.message


# (field, accepted value, what comes out, attribute path)
GOOD_VALUES = [
    ("jobtype", "exchangeimap", JobType.EXCHANGEIMAP, "jobtype"),
    ("jobtype", " Imap ", JobType.IMAP, "jobtype"),
    ("destuserid", "john@BAYA-COM.vaultastic.com", "john", "dest.userid"),
    ("sourceuserid", "john@baya.com", "john", "source.userid"),
    ("sourceuserid", "BAYA\\john", "BAYA\\john", "source.userid"),
    ("sourceserverport", "", None, "source.port"),  # the config's port, else 993 (endpoint)
    ("sourceserverport", " 143 ", 143, "source.port"),
    ("sourceserverport", "65535", 65535, "source.port"),
    ("sourceserver", "[2001:db8::1]", "2001:db8::1", "source.server"),
    ("sourceserver", "192.0.2.7", "192.0.2.7", "source.server"),
    ("destserver", " imap.Vault.example ", "imap.Vault.example", "dest.server"),
    ("sendreportid", "", None, "report_to"),
    ("sendreportid", "admin@localhost", "admin@localhost", "report_to"),
    ("jobtitle", "Line 1\r\nBcc: evil@example.com", "Line 1  Bcc: evil@example.com", "title"),
    ("jobtitle", "", "", "title"),
    ("destfolder", " Data 2018 ", "Data 2018", "dest_folder"),
    ("destfolder", "Café & Co", "Café & Co", "dest_folder"),
    ("destfolder", "Archive2018", "Archive2018", "dest_folder"),
    ("since", "", None, "dates.since"),
    ("since", "2017-09-25", dt.date(2017, 9, 25), "dates.since"),
    ("since", "25-sep-2017", dt.date(2017, 9, 25), "dates.since"),
    ("before", "24-SEP-2018", dt.date(2018, 9, 24), "dates.before"),
    ("since", "2018-09-24", dt.date(2018, 9, 24), "dates.since"),  # since == before: one day
    ("destuserpasswd", ' a,b "c"\r\n%*{}\\ é ', Secret(' a,b "c"\r\n%*{}\\ é '), "dest.password"),
    # Passwords: any character but NUL (an IMAP literal carries CR, LF and the other controls).
    (
        "sourceuserpassword",
        "\x01\t\x1b\x7f\x85\u2028",
        Secret("\x01\t\x1b\x7f\x85\u2028"),
        "source.password",
    ),
    ("destuserpasswd", "p" * 1000, Secret("p" * 1000), "dest.password"),
    ("sourceuserpassword", "\u00e9" * 500, Secret("\u00e9" * 500), "source.password"),
    ("jobtitle", "t" * 200, "t" * 200, "title"),
    ("destuserid", "j" * 255, "j" * 255, "dest.userid"),
    ("destfolder", "D" * 255, "D" * 255, "dest_folder"),
    ("sourceserver", ("a" * 62 + ".") * 4 + "c", ("a" * 62 + ".") * 4 + "c", "source.server"),
    ("sendreportid", "pm@b\u00fccher.example", "pm@xn--bcher-kva.example", "report_to"),
    ("sendreportid", "p" * 64 + "@baya.com", "p" * 64 + "@baya.com", "report_to"),
]


@pytest.mark.parametrize(("field", "value", "expected", "path"), GOOD_VALUES)
def test_good_value(field: str, value: str, expected: object, path: str) -> None:
    result = csvfile.parse(csv_bytes(row(**{field: value})))
    assert result.errors == ()
    (request,) = result.requests
    got: object = request
    for attribute in path.split("."):
        got = getattr(got, attribute)
    assert got == expected


# ---------------------------------------------------------------- limits and NUL bytes


def test_a_10_mb_job_title_rejects_its_row_and_is_cut_in_the_rejection() -> None:
    data = csv_bytes(row(sourceuserid="a"), row(jobtitle="T" * 10_000_000))
    result = csvfile.parse(data)
    error = only_error(result)
    assert (error.row, error.field) == (3, "jobtitle")
    assert "jobtitle is longer than 200 characters (csv.max_title_chars); shorten it" in (
        error.message
    )
    assert error.title == "T" * 200 + "\u2026"  # the rejection's report mail still names it
    assert error.report_to == "postmaster@baya.com"
    assert len(error.message) < 300
    assert [r.source.userid for r in result.requests] == ["a"]


def test_limits_come_from_the_caller() -> None:
    limits = csvfile.Limits(max_title_chars=5, max_userid_chars=4, max_password_bytes=4)
    short = {"destuserpasswd": "pass", "sourceuserpassword": "pw"}
    data = csv_bytes(row(jobtitle="Title", sourceuserid="abcd", **short))
    assert csvfile.parse(data, limits).errors == ()
    long = {"destuserpasswd": "p\u00e4ss", "sourceuserpassword": "pw"}  # 4 characters, 5 bytes
    data = csv_bytes(row(jobtitle="Title!", sourceuserid="abcde", **long))
    error = only_error(csvfile.parse(data, limits))
    assert error.title == "Title\u2026"
    assert "jobtitle is longer than 5 characters (csv.max_title_chars)" in error.message
    assert "sourceuserid is longer than 4 characters (csv.max_userid_chars)" in error.message
    assert "destuserpasswd is longer than 4 bytes as UTF-8" in error.message
    assert "destuserid" not in error.message and "sourceuserpassword" not in error.message


def test_a_file_over_max_bytes_is_rejected_as_a_whole_naming_the_limit() -> None:
    data = csv_bytes(row())
    assert len(csvfile.parse(data, csvfile.Limits(max_bytes=len(data))).requests) == 1
    with pytest.raises(CsvFileError) as info:
        csvfile.parse(data, csvfile.Limits(max_bytes=len(data) - 1))
    assert str(info.value) == (
        f"the file is {len(data):,} bytes, more than the limit of {len(data) - 1:,} bytes"
        " (csv.max_bytes); split it into smaller files"
    )
    csvfile.check_size(64 * 1024 * 1024)
    with pytest.raises(CsvFileError, match=r"more than the limit of 67,108,864 bytes"):
        csvfile.check_size(64 * 1024 * 1024 + 1)  # the default: checked before reading


def test_a_file_over_max_rows_is_rejected_as_a_whole_naming_the_limit() -> None:
    rows = [row(sourceuserid=f"u{i}") for i in range(3)]
    data = csv_bytes(*rows[:2], "", ",,,", row(sourceuserid="u0", destfolder="Trash"))
    assert csvfile.parse(data, csvfile.Limits(max_rows=3)).rows == 3  # blank rows not counted
    with pytest.raises(CsvFileError) as info:
        csvfile.parse(csv_bytes(*rows), csvfile.Limits(max_rows=2))
    assert str(info.value) == (
        "the file has more than 2 request rows, the limit (csv.max_rows); split it into"
        " smaller files"
    )


def test_a_nul_byte_rejects_only_its_row() -> None:
    data = csv_bytes(row(sourceuserid="a"), row(jobtitle="Up\x00load"), row(sourceuserid="c"))
    result = csvfile.parse(data)
    error = only_error(result)
    assert (error.row, error.field) == (3, "jobtitle")
    assert "jobtitle contains a NUL byte (character 0)" in error.message
    assert [r.source.userid for r in result.requests] == ["a", "c"]


def test_a_nul_byte_in_an_unknown_column_rejects_its_row_naming_the_value() -> None:
    data = csv_bytes(line([*GOOD.values(), "x\x00"]), header=[*HEADER, "comment"])
    error = only_error(csvfile.parse(data))
    assert (error.row, error.field) == (2, None)
    assert error.message.startswith("value 16 contains a NUL byte")


def test_only_a_fields_first_problem_is_reported() -> None:
    error = only_error(csvfile.parse(csv_bytes(row(destfolder="\x00Trash"))))
    assert error.message.count("destfolder") == 1  # not also "control characters", "reserved"


def test_long_values_never_reach_messages_or_warnings() -> None:
    huge = "S3cret" * 200_000  # 1.2 MB in each of 17 values
    data = csv_bytes(line([huge] * 16), line([*GOOD.values(), huge]), header=[*HEADER, huge])
    result = csvfile.parse(data)
    assert len(result.errors) == 1 and len(result.requests) == 1
    texts = [*(e.message for e in result.errors), *result.warnings]
    assert all(len(text) < 2_000 for text in texts), [len(text) for text in texts]
    assert "s3cret" * 7 not in " ".join(texts).lower()  # an unknown column's name: cut
    assert any("s3c\u2026' ignored" in warning for warning in result.warnings)
    assert [len(e.title) for e in result.errors] == [201]  # 200 and "…"


def test_password_values_never_appear_in_messages() -> None:
    for password in ("sec\x00ret-pw", "sec-ret-pw" * 200):
        for field in csvfile.PASSWORD_COLUMNS:
            error = only_error(csvfile.parse(csv_bytes(row(**{field: password}))))
            assert error.field == field
            assert "sec" not in error.message.replace("second", "")


def _peak(run: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_proportional_to_the_file() -> None:
    """The reader keeps one record at a time, not every row's values: the peak is the result
    plus a little (it was 22 times the file's size for parse, 19 for redact)."""
    data = csv_bytes(*(row(sourceuserid=f"user{i}", jobtitle=f"Upload {i}") for i in range(2000)))
    assert _peak(lambda: csvfile.parse(data)) < 8 * len(data)
    assert _peak(lambda: csvfile.redact(data)) < 6 * len(data)


# ---------------------------------------------------------------- file structure


def test_bom_crlf_and_header_names_any_case_any_order() -> None:
    header = [name.upper() if i % 2 else f"  {name} " for i, name in enumerate(HEADER)]
    header[5] = "destServer"
    order = list(reversed(range(len(HEADER))))
    lines = [line([header[i] for i in order]), line([GOOD[HEADER[i]] for i in order])]
    result = csvfile.parse(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    assert result.errors == () and result.warnings == ()
    (request,) = result.requests
    assert (request.row, request.dest.server, request.dest_folder) == (
        2,
        "baya-com.vaultastic.com",
        "Data27092018",
    )


def test_blank_lines_are_skipped_and_row_numbers_are_physical_lines() -> None:
    title = 'Title, with "quotes"\nand a second line'
    text = "\n \n" + line(HEADER) + "\r\n\r\n\t\n" + row(jobtitle=title, sourceuserid="a")
    text += "\n,,,\n" + row(sourceuserid="b") + "\n  \n"
    result = csvfile.parse(text.encode())
    assert result.errors == ()
    assert [(r.row, r.source.userid) for r in result.requests] == [(6, "a"), (9, "b")]
    assert result.requests[0].title == 'Title, with "quotes" and a second line'
    assert result.rows == 2


def test_spaces_around_quoted_values_are_ignored() -> None:
    result = csvfile.parse(csv_bytes(" , ".join(quote(GOOD[name]) for name in HEADER)))
    assert result.errors == ()
    assert result.requests[0].dest.password == Secret(DEST_PW)


def test_unquoted_values_are_taken_as_written() -> None:
    values = {**GOOD, "destuserpasswd": ' pa"ss ', "sourceuserpassword": "x"}
    text = line(HEADER) + "\n" + ",".join(values[name] for name in HEADER)
    (request,) = csvfile.parse(text.encode()).requests
    assert request.dest.password == Secret(' pa"ss ')
    assert request.title == "Upload Data John Smith"


def test_unknown_and_unnamed_columns_are_warnings() -> None:
    header = [*HEADER, "Comment", ""]
    result = csvfile.parse(csv_bytes(line([*GOOD.values(), "hi", "x"]), header=header))
    assert len(result.requests) == 1 and result.errors == ()
    assert any("'comment'" in warning and "ignored" in warning for warning in result.warnings)
    assert any("without a name" in warning for warning in result.warnings)


def test_optional_columns_may_be_absent() -> None:
    header = [n for n in HEADER if n in csvfile.REQUIRED_COLUMNS]
    (request,) = csvfile.parse(csv_bytes(line([GOOD[n] for n in header]), header=header)).requests
    assert (request.title, request.report_to, request.source.port) == ("", None, None)
    assert request.dates == DateRange()


def test_windows_1252_is_decoded_with_a_warning() -> None:
    data = csv_bytes(row(jobtitle="Café \u201cÜnter\u201d \u2013 2018", destfolder="Müller"))
    result = csvfile.parse(data.decode().encode("windows-1252"))
    assert result.encoding == "windows-1252"
    (request,) = result.requests
    assert (request.title, request.dest_folder) == ("Café \u201cÜnter\u201d \u2013 2018", "Müller")
    assert any("Windows-1252" in warning for warning in result.warnings)


def test_bytes_windows_1252_leaves_undefined_are_not_an_error() -> None:
    data = csv_bytes(row(jobtitle="A_B", destfolder="D_E")).replace(b"_", b"\x81")
    result = csvfile.parse(data)
    assert result.encoding == "windows-1252"
    error = only_error(result)  # 0x81 decodes to the C1 control U+0081: no folder name
    assert (error.field, error.title) == ("destfolder", "A B")
    assert "control characters" in error.message


def test_old_mac_line_endings() -> None:
    result = csvfile.parse(csv_bytes(row(sourceuserid="a"), "", row(sourceuserid="b"), eol="\r"))
    assert [(r.row, r.source.userid) for r in result.requests] == [(2, "a"), (4, "b")]


def test_utf8_with_bom_has_no_encoding_warning() -> None:
    result = csvfile.parse(b"\xef\xbb\xbf" + csv_bytes(row(jobtitle="Café")))
    assert (result.encoding, result.warnings, result.requests[0].title) == ("utf-8", (), "Café")


# (raw text of the row, words of the fix)
BAD_STRUCTURE = [
    (line([*GOOD.values(), ""]), "give one value per column"),  # 16 values, one quoted empty
    (line(list(GOOD.values())[:-1]), "has 14 values but the header has 15 columns"),
    (row() + ",x", "has 16 values"),
    (row(since="").replace(',""', ",", 1) + ",,", "has 17 values"),  # 3 blank: 14 != 15
    (row() + ',"x', "opening double quote that is never closed"),
    (row().replace('"Data27092018"', '"Data"2018'), "text after its closing double quote"),
]


@pytest.mark.parametrize(("bad", "fix"), BAD_STRUCTURE)
def test_bad_row_structure_rejects_only_its_row(bad: str, fix: str) -> None:
    result = csvfile.parse(csv_bytes(row(sourceuserid="a"), bad, row(sourceuserid="c")))
    error = only_error(result)
    assert error.row == 3
    assert fix in error.message
    assert 'double quotes and write a double quote inside one as ""' in error.message
    assert [r.source.userid for r in result.requests] == ["a", "c"]


def test_text_after_closing_quote_names_the_field() -> None:
    bad = row().replace('"Data27092018"', '"Data"2018')
    error = only_error(csvfile.parse(csv_bytes(bad)))
    assert (error.field, error.title, error.report_to) == (
        "destfolder",
        "Upload Data John Smith",
        "postmaster@baya.com",
    )


def test_quote_left_open_in_a_row_spoils_only_that_row() -> None:
    same_line = row().replace('"Data27092018"', '"Data27092018')  # pairs with the next quote
    error = only_error(csvfile.parse(csv_bytes(same_line)))
    assert (error.row, error.field) == (2, None)
    assert "value 7 has text after its closing double quote" in error.message
    next_line = row(sourceuserid="b") + ',"x'  # pairs with the first quote of the next row
    result = csvfile.parse(csv_bytes(next_line, row(sourceuserid="c"), row(sourceuserid="d")))
    assert [(r.row, r.source.userid) for r in result.requests] == [(3, "c"), (4, "d")]
    assert "never closed" in only_error(result).message


def test_row_running_over_several_lines_gets_a_hint() -> None:
    bad = row().removesuffix('"') + '\nmore",x'  # the last quote closes on the next line
    result = csvfile.parse(csv_bytes(bad, row(sourceuserid="c")))
    error = only_error(result)
    assert error.row == 2 and error.field is None
    assert "it runs to line 3: is a double quote left open?" in error.message
    assert [r.row for r in result.requests] == [4]


def test_extra_empty_unquoted_values_are_dropped_only_when_counts_then_match() -> None:
    values = [quote(GOOD[name]) for name in HEADER]
    values[8:8] = ["", " "]  # the reference sample's layout, one of them a space
    result = csvfile.parse(csv_bytes(",".join(values)))
    assert result.errors == () and len(result.requests) == 1
    assert any("Row 2 had more values" in warning for warning in result.warnings)


@pytest.mark.parametrize(
    ("first", "second", "duplicate"),
    [
        ({}, {}, True),
        ({}, {"sourceuserid": "JOHN", "destfolder": "data27092018"}, True),
        ({}, {"sourceuserid": "john@BAYA.com", "sourceserver": "BAYA.COM"}, True),
        ({}, {"destuserid": "mary", "destuserpasswd": "other"}, True),  # same source + folder
        ({}, {"destfolder": "Data2019"}, False),
        ({}, {"sourceuserid": "mary"}, False),
        ({}, {"sourceserver": "mail.baya.com"}, False),
        ({"destfolder": "Trash"}, {}, False),  # the first was rejected: nothing runs twice
    ],
)
def test_duplicate_rows(first: dict[str, str], second: dict[str, str], duplicate: bool) -> None:
    result = csvfile.parse(csv_bytes(row(**first), "", row(**second)))
    if not duplicate:
        assert [r.row for r in result.requests] == ([4] if first else [2, 4])
        return
    assert [r.row for r in result.requests] == [2]
    error = only_error(result)
    assert (error.row, error.field) == (4, "destfolder")
    assert "duplicate of row 2" in error.message
    assert "give it another destfolder" in error.message
    assert error.report_to == "postmaster@baya.com"


def test_header_only_is_a_warning_not_an_error() -> None:
    result = csvfile.parse(line(HEADER).encode() + b"\n")
    assert (result.requests, result.errors, result.rows) == ((), (), 0)
    assert result.warnings == ("The file has a header but no request rows.",)


# ---------------------------------------------------------------- files unusable as a whole

MISSING = line([name for name in HEADER if name != "destfolder"])
FILE_ERRORS = [
    (b"", "empty (0 bytes)"),
    (b"\n \r\n\t\n", "only blank lines"),
    (b",,,\n,,\n", "only blank lines"),
    (line(HEADER).encode("utf-16"), "NUL bytes"),
    (b"PK\x03\x04\x14\x00\x06\x00", "NUL bytes"),
    ((MISSING + "\n" + row()).encode(), "lacks the required column(s) destfolder"),
    (row().encode(), "is not a header"),
    (b'"jobtype";"destuserid";"destfolder"\n', "';' or tabs"),
    ((line([*HEADER, "destFolder"]) + "\n").encode(), "destfolder more than once"),
    ((line(HEADER) + ',"x\n' + row()).encode(), "never closed"),
    (('"jobtype"x,' + line(HEADER) + "\n").encode(), "text after its closing double quote"),
]


@pytest.mark.parametrize(("data", "words"), FILE_ERRORS)
def test_file_errors(data: bytes, words: str) -> None:
    with pytest.raises(CsvFileError) as info:
        csvfile.parse(data)
    assert words in str(info.value)
    assert DEST_PW not in str(info.value) and "S3cret" not in str(info.value)


# ---------------------------------------------------------------- redaction


def test_redact_keeps_every_other_byte() -> None:
    head = b"\xef\xbb\xbf" + line(HEADER).encode() + b"\r\n\r\n"
    body = row(jobtitle="Caf\xe9").encode("windows-1252") + b"\r\n  \r\n"
    plain = {**GOOD, "destuserpasswd": "pl ain", "sourceuserid": "jo"}  # not a duplicate
    unquoted = ",".join(plain[name] for name in HEADER)
    data = head + body + unquoted.encode() + b"\r\n"
    expected = data.replace(quote(DEST_PW).encode(), b'"********"')
    expected = expected.replace(quote(SOURCE_PW).encode(), b'"********"')
    expected = expected.replace(b"pl ain", b"********").replace(b'Src-S3cret"pw', b"********")
    assert csvfile.redact(data) == expected
    assert csvfile.redact(expected) == expected


def test_redact_hides_every_value_of_a_row_it_cannot_map() -> None:
    bad = line([*GOOD.values(), "extra"])
    data = csv_bytes(row(sourceuserid="a"), bad, ',,"' + DEST_PW + '"', "")
    lines = csvfile.redact(data).decode().split("\n")
    assert lines[0] == line(HEADER)
    assert lines[1] == row(sourceuserid="a", destuserpasswd=REDACTED, sourceuserpassword=REDACTED)
    assert lines[2] == line([REDACTED] * 16)
    assert lines[3] == ',,"********"'


def test_redact_hides_every_value_when_the_header_is_not_usable() -> None:
    missing = csvfile.redact((MISSING + "\n" + row() + "\n").encode()).decode()
    assert missing == MISSING + "\n" + line([REDACTED] * 15) + "\n"
    headless = csvfile.redact((row() + "\n" + row()).encode()).decode()
    assert headless == line([REDACTED] * 15) + "\n" + line([REDACTED] * 15)


def test_redact_hides_every_value_of_a_row_with_shifted_columns() -> None:
    """An unquoted password with a comma in a row lacking a value: the count still matches,
    the columns are shifted, and the password's second half sits in destserver."""
    values = [{**GOOD, "destuserpasswd": "Abc,Xyz9"}[name] for name in HEADER[:-1]]
    shifted = ",".join(values)  # 14 values, 15 once the password is split
    data = csv_bytes(row(sourceuserid="a"), shifted)
    assert only_error(csvfile.parse(data)).row == 3
    redacted = csvfile.redact(data)
    assert b"Xyz9" not in redacted and b"Abc" not in redacted
    lines = redacted.decode().split("\n")
    assert lines[1] == row(sourceuserid="a", destuserpasswd=REDACTED, sourceuserpassword=REDACTED)
    assert lines[2] == ",".join([REDACTED] * 15)  # the row stays on its line


@pytest.mark.parametrize(
    "bad",
    [
        {"destfolder": "Trash"},
        {"jobtitle": "T" * 201},
        {"sendreportid": "p\u00f6stmaster@baya.com"},
        {"since": "2017-09-25\x00"},
        {"sourceuserid": "a"},  # a duplicate of row 2
    ],
)
def test_redact_hides_every_value_of_a_rejected_row(bad: dict[str, str]) -> None:
    data = csv_bytes(row(sourceuserid="a"), row(**bad))
    assert only_error(csvfile.parse(data)).row == 3
    lines = csvfile.redact(data).decode().split("\n")
    assert lines[1] == row(sourceuserid="a", destuserpasswd=REDACTED, sourceuserpassword=REDACTED)
    assert lines[2] == line([REDACTED] * 15)


def test_redact_uses_the_callers_limits() -> None:
    data = csv_bytes(row(jobtitle="Long title"))
    assert b"Long title" in csvfile.redact(data)
    assert b"Long title" not in csvfile.redact(data, csvfile.Limits(max_title_chars=4))
    assert csvfile.redact(data, csvfile.Limits(max_bytes=len(data) - 1)) == (
        csvfile.BINARY_REDACTED
    )


def test_redact_treats_columns_named_like_passwords_as_passwords() -> None:
    data = csv_bytes(line([*GOOD.values(), "old-secret"]), header=[*HEADER, "OldPassword"])
    assert b"old-secret" not in csvfile.redact(data)


def test_redact_malformed_quoting() -> None:
    data = csv_bytes(row().replace(quote(SOURCE_PW), '"abc"def'), row() + ',"open')
    redacted = csvfile.redact(data).decode().split("\n")
    assert redacted[1] == line([REDACTED] * 15)
    assert redacted[2] == line([REDACTED] * 15) + ',"********'


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b""),
        (b"\r\n \n", b"\r\n \n"),
        ("ab,c".encode("utf-16"), csvfile.BINARY_REDACTED),
        (b"a\x00b", csvfile.BINARY_REDACTED),
        # Quotes never closed, kept bare, paired up in a second redaction: found by Hypothesis.
        (b'"\ra"a,"', b'"********\r********,"********'),
        (b'"\r\x00"\x00,"', b'"********\r********,"********'),
    ],
)
def test_redact_degenerate_files(data: bytes, expected: bytes) -> None:
    assert csvfile.redact(data) == expected


@settings(max_examples=300)
@given(st.binary(max_size=400) | st.text(alphabet=',"\r\n ab\x00\t;', max_size=80).map(str.encode))
def test_redact_and_parse_never_fail_on_arbitrary_bytes(data: bytes) -> None:
    redacted = csvfile.redact(data)
    assert csvfile.redact(redacted) == redacted
    with contextlib.suppress(CsvFileError):
        csvfile.parse(data)


# ---------------------------------------------------------------- round trip through csv.writer

MARK = "\u2620"  # appears only inside passwords, so it must never survive redaction
NASTY = st.sampled_from(list("\",\r\n\\%*{}()' \t;@é€\u2028"))
SECRET_TEXT = st.text(
    alphabet=NASTY
    | st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00" + MARK),
    max_size=12,
)
PASSWORD = st.builds(lambda a, b: a + MARK + b, SECRET_TEXT, SECRET_TEXT)
LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
WORD = st.text(LOWER + "._-", max_size=10).map(lambda w: "j" + w)
LABEL = st.text(LOWER + "-", min_size=1, max_size=12)
DOMAIN = st.builds("{}.{}".format, LABEL, st.sampled_from(["com", "example.org", "de"]))
FOLDER = st.text(LOWER + "ABCXYZ éß&()+,'_-", max_size=15).map(lambda f: "D" + f.strip())
TITLE = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Zs"), blacklist_characters=MARK
    )
    | st.sampled_from(' ,"'),
    max_size=30,
).map(str.strip)
DAY = st.dates(min_value=dt.date(1990, 1, 1), max_value=dt.date(2040, 12, 31))


@st.composite
def requests(draw: st.DrawFn) -> Request:
    since, before = draw(st.none() | DAY), draw(st.none() | DAY)
    if since and before and since > before:
        since, before = before, since
    return Request(
        row=0,
        jobtype=draw(st.sampled_from(JobType)),
        title=draw(TITLE),
        source=Account(
            draw(WORD),
            draw(DOMAIN),
            Secret(draw(PASSWORD)),
            draw(DOMAIN),
            draw(st.none() | st.integers(1, 65535)),
        ),
        dest=Account(draw(WORD), draw(DOMAIN), Secret(draw(PASSWORD)), draw(DOMAIN)),
        dest_folder=draw(FOLDER),
        report_to=draw(st.none() | st.builds("{}@{}".format, WORD, DOMAIN)),
        dates=DateRange(since, before),
    )


MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def _cells(r: Request, day_style: bool) -> dict[str, str]:
    def day(d: dt.date | None) -> str:
        if d is None:
            return ""
        return f"{d.day}-{MONTHS[d.month - 1].upper()}-{d.year}" if day_style else d.isoformat()

    return {
        "jobtype": r.jobtype.value.lower() if day_style else r.jobtype.value,
        "jobtitle": r.title,
        "destuserid": r.dest.userid,
        "destdomain": r.dest.domain,
        "destuserpasswd": r.dest.password.reveal(),
        "destserver": r.dest.server,
        "destfolder": r.dest_folder,
        "sendreportid": r.report_to or "",
        "sourceuserid": r.source.address if day_style else r.source.userid,
        "sourcedomainname": r.source.domain,
        "sourceuserpassword": r.source.password.reveal(),
        "sourceserver": r.source.server,
        "sourceserverport": "" if r.source.port is None else str(r.source.port),
        "since": day(r.dates.since),
        "before": day(r.dates.before),
    }


def _key(r: Request) -> tuple[str, ...]:
    return (r.source.userid, r.source.domain, r.source.server, r.dest_folder.casefold())


@settings(max_examples=100, deadline=None)
@given(
    wanted=st.lists(requests(), min_size=1, max_size=5, unique_by=_key),
    order=st.permutations(HEADER),
    quoting=st.sampled_from([csv.QUOTE_ALL, csv.QUOTE_MINIMAL]),
    day_style=st.booleans(),
)
def test_written_by_csv_writer_parses_back_and_redacts(
    wanted: list[Request], order: list[str], quoting: int, day_style: bool
) -> None:
    out = io.StringIO()
    writer = csv.writer(out, quoting=quoting)
    writer.writerow([name.upper() if day_style else name for name in order])
    expected = []
    for request in wanted:
        text = out.getvalue()
        first_line = 1 + text.count("\n") + text.count("\r") - text.count("\r\n")
        expected.append(dataclasses.replace(request, row=first_line))
        cells = _cells(request, day_style)
        writer.writerow([cells[name] for name in order])
    data = out.getvalue().encode()

    result = csvfile.parse(data)
    assert result.errors == ()
    assert list(result.requests) == expected

    redacted = csvfile.redact(data)
    assert MARK not in redacted.decode()
    hidden = [
        dataclasses.replace(
            r,
            source=dataclasses.replace(r.source, password=Secret(REDACTED)),
            dest=dataclasses.replace(r.dest, password=Secret(REDACTED)),
        )
        for r in expected
    ]
    assert [dataclasses.replace(r, row=0) for r in csvfile.parse(redacted).requests] == [
        dataclasses.replace(r, row=0) for r in hidden
    ]
