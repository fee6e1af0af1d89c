"""report.result, report.mail and report.listing: result JSON, report mail, listing CSV."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from legacyflo_daemon.model import (
    Account,
    DateRange,
    FolderResult,
    JobType,
    MessageFailure,
    Request,
    RequestResult,
    RowError,
    Secret,
    Status,
)
from legacyflo_daemon.report import result as report
from legacyflo_daemon.report.mail import build_mail, header_text, human_size, subject
from legacyflo_daemon.transfer.listing_csv import COLUMNS, neutralise
from legacyflo_daemon.transfer.recorder import ListingEntry

SRC_PW = "src-S3cr3t=\"é'pw"
DST_PW = "dst-P@ss,word\r\n1"
UTC = dt.UTC
NOW = dt.datetime(2018, 9, 27, 10, 30, tzinfo=UTC)
FROM = "legacyflo-daemon@reports.example.com"
DEST_PATH = "INBOX.historical_data.Data27092018"

SCHEMA = json.loads(files("legacyflo_daemon").joinpath("result.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def make_request(title: str = "Upload Data John Smith", row: int = 2) -> Request:
    return Request(
        row=row,
        jobtype=JobType.EXCHANGEIMAP,
        title=title,
        source=Account("john", "baya.com", Secret(SRC_PW), "baya.com", 993),
        dest=Account("john", "baya-com.vaultastic.com", Secret(DST_PW), "baya-com.vaultastic.com"),
        dest_folder="Data27092018",
        report_to="postmaster@baya.com",
        dates=DateRange(dt.date(2017, 9, 25), dt.date(2018, 9, 24)),
    )


FOLDERS = (
    FolderResult("INBOX", DEST_PATH + ".Inbox", 1000, 990, 10, 0, 5_000_000, 2),
    FolderResult("Sent Items", DEST_PATH + ".Sent Items", 234, 234, 0, 0, 1_000_000, 0, "note"),
)
FAILURES = (
    MessageFailure("INBOX", 17, "2018-01-02T03:04:05+00:00", "=cmd|' /C calc'!A0", "too big"),
    MessageFailure("Sent Items", 99, None, "<b>Hi</b> & bye", "Retrieval using IMAP4 failed"),
)


def make_result(status: Status, **kw: Any) -> RequestResult:
    started = dt.datetime(2018, 9, 27, 9, 0, tzinfo=UTC)
    base: dict[str, Any] = {"started": started, "finished": NOW, "folders": FOLDERS}
    if status is Status.PARTIAL:
        base["failures"] = FAILURES
        base["folders"] = (FOLDERS[0], FolderResult("Sent Items", "x", 236, 234, 0, 2, 10, 0))
    if status is Status.FAILED:
        base["error"] = "baya.com: authentication failed"
        base["folders"] = ()
    if status is Status.REJECTED:
        base = {"started": None, "finished": NOW, "error": "since: bad date"}
    base.update(kw)
    return RequestResult("req-1", status, **base)


ROW_ERROR = RowError(
    3,
    "since",
    "'09/10/2017' is not a date; use 2017-09-25 or 25-Sep-2017",
    "Bad Row",
    "pm@baya.com",
)


def make_json(status: Status, request: Request | None = None) -> dict[str, Any]:
    if status is Status.REJECTED:
        return report.result_json(
            "req-1", None, ROW_ERROR, make_result(status), csv_name="b.csv", dest_folder_path=""
        )
    return report.result_json(
        "req-1",
        request or make_request(),
        None,
        make_result(status),
        csv_name="b.csv",
        dest_folder_path=DEST_PATH,
    )


def entries(n: int) -> Iterator[ListingEntry]:
    base = dt.datetime(2017, 9, 25, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    for i in range(n):
        yield ListingEntry(
            folder=f"{DEST_PATH}.Folder {i % 20}",
            received=base + dt.timedelta(minutes=i),
            sender=f"User {i % 500} <user{i % 500}@example.com>",
            subject=f"Subject {i} about project {i % 97}",
            size=1000 + i,
            message_id=f"<{i}.{i * 7919 % 100003}@example.com>",
        )


def mail(result: dict[str, Any], tmp_path: Path, **kw: Any) -> EmailMessage:
    args: dict[str, Any] = {
        "from_addr": FROM,
        "to_addr": "postmaster@baya.com",
        "now": NOW,
        "compress_above": 1 << 20,
        "tmpdir": tmp_path,
    }
    args.update(kw)
    listing = args.pop("listing", entries(3))
    raw = build_mail(result, listing, **args)
    parsed = message_from_bytes(raw, policy=default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def bodies(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def attachment(msg: EmailMessage) -> tuple[str, list[list[str]]]:
    (part,) = list(msg.iter_attachments())
    assert isinstance(part, EmailMessage)
    name = part.get_filename()
    assert name is not None
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    return name, list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))


# --- result JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status", [Status.SUCCEEDED, Status.PARTIAL, Status.FAILED, Status.REJECTED]
)
def test_every_result_matches_the_schema_and_hides_passwords(status: Status) -> None:
    doc = make_json(status)
    VALIDATOR.validate(doc)
    text = json.dumps(doc, ensure_ascii=False)
    assert SRC_PW not in text and DST_PW not in text
    assert "S3cr3t" not in text and "P@ss" not in text
    assert doc["status"] == str(status)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(password="x"),
        lambda d: d["source"].update(password="x"),
        lambda d: d["folders"][0].update(extra=1),
        lambda d: d["totals"].pop("copied"),
        lambda d: d.update(status="done"),
        lambda d: d.update(rejection={"field": None, "message": "x"}),  # not rejected
        lambda d: d.update(started="yesterday"),
    ],
)
def test_schema_is_strict(mutate: Callable[[dict[str, Any]], object]) -> None:
    doc = make_json(Status.SUCCEEDED)
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(doc)


def test_result_fields() -> None:
    doc = make_json(Status.SUCCEEDED)
    assert doc["csv"] == {"name": "b.csv", "row": 2}
    assert doc["source"] == {
        "userid": "john",
        "domain": "baya.com",
        "server": "baya.com",
        "port": 993,
    }
    assert doc["destination"]["port"] is None
    assert doc["destination_folder"] == DEST_PATH
    assert doc["date_range"]["since"] == "2017-09-25"
    assert doc["date_range"]["before"] == "2018-09-24"
    assert "25 Sep 2017" in doc["date_range"]["description"]
    assert "24 Sep 2018" in doc["date_range"]["description"]
    assert doc["started"] == "2018-09-27T09:00:00Z"
    assert doc["totals"] == {
        "folders": 2,
        "in_range": 1234,
        "copied": 1224,
        "already_present": 10,
        "failed": 0,
        "bytes": 6_000_000,
        "deleted_dropped": 2,
        "altered": 0,
        "folders_failed": 0,
    }
    assert doc["folders"][1]["note"] == "note"
    assert doc["rejection"] is None


def test_partial_result_lists_every_failure() -> None:
    doc = make_json(Status.PARTIAL)
    assert [(f["folder"], f["uid"], f["reason"]) for f in doc["failures"]] == [
        ("INBOX", 17, "too big"),
        ("Sent Items", 99, "Retrieval using IMAP4 failed"),
    ]
    assert doc["totals"]["failed"] == 2


def test_rejected_result_names_the_field() -> None:
    doc = make_json(Status.REJECTED)
    assert doc["rejection"] == {"field": "since", "message": ROW_ERROR.message}
    assert doc["source"] is None and doc["jobtype"] is None and doc["destination_folder"] is None
    assert doc["jobtitle"] == "Bad Row" and doc["report_to"] == "pm@baya.com"


@pytest.mark.parametrize(
    ("request_", "row_error", "status"),
    [
        (None, None, Status.REJECTED),
        (make_request(), ROW_ERROR, Status.REJECTED),
        (None, ROW_ERROR, Status.FAILED),
        (make_request(), None, Status.REJECTED),
    ],
)
def test_inconsistent_arguments_are_refused(
    request_: Request | None, row_error: RowError | None, status: Status
) -> None:
    with pytest.raises(ValueError):
        report.result_json(
            "r", request_, row_error, make_result(status), csv_name="b", dest_folder_path=""
        )


def test_naive_timestamps_are_refused() -> None:
    result = make_result(Status.SUCCEEDED, started=dt.datetime(2018, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        report.result_json("r", make_request(), None, result, csv_name="b", dest_folder_path="x")


def test_undecodable_text_still_encodes_as_utf8() -> None:
    failure = MessageFailure("INBOX", 1, None, "bad \udcff byte", "x")
    result = make_result(Status.PARTIAL, failures=(failure,))
    doc = report.result_json("r", make_request(), None, result, csv_name="b", dest_folder_path="x")
    json.dumps(doc, ensure_ascii=False).encode("utf-8")  # must not raise
    assert doc["failures"][0]["subject"].startswith("bad ")


# --- listing CSV ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=SUM(A1)", "'=SUM(A1)"),
        ("+1", "'+1"),
        ("-2", "'-2"),
        ("@cmd", "'@cmd"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=b", "a=b"),
        ("", ""),
        ("Re: hello", "Re: hello"),
        ("nul\0here", "nul\ufffdhere"),
    ],
)
def test_neutralise(value: str, expected: str) -> None:
    assert neutralise(value) == expected


@given(st.text())
@example("'\x00")  # a quote of the user's own, then a NUL: only the NUL changes
@example("=\x00")
def test_neutralised_cells_never_start_a_formula(value: str) -> None:
    out = neutralise(value)
    assert not out.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert "\0" not in out
    cleaned = value.replace("\0", "\ufffd")
    assert out in (cleaned, "'" + cleaned)


# --- report mail ------------------------------------------------------------------------------


def test_mail_structure_and_headers(tmp_path: Path) -> None:
    raw = build_mail(
        make_json(Status.SUCCEEDED),
        entries(3),
        from_addr=FROM,
        to_addr="postmaster@baya.com",
        now=NOW,
        compress_above=1 << 20,
        tmpdir=tmp_path,
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    msg = message_from_bytes(raw, policy=default)
    assert isinstance(msg, EmailMessage)
    assert msg.get_content_type() == "multipart/mixed"
    first = msg.get_payload(0)
    assert isinstance(first, EmailMessage)
    assert first.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in first.iter_parts()] == ["text/plain", "text/html"]
    assert msg["Subject"] == "[legacyflo] Upload Data John Smith: succeeded (1,234 messages)"
    assert msg["From"] == FROM and msg["To"] == "postmaster@baya.com"
    assert msg["Date"].datetime == NOW
    assert msg["Message-ID"].endswith("@reports.example.com>")
    text, html = bodies(msg)
    assert "john@baya.com on baya.com:993" in text
    assert f"john@baya-com.vaultastic.com on baya-com.vaultastic.com, folder {DEST_PATH}" in text
    assert "25 Sep 2017" in text and "SUCCEEDED" in text
    assert "Sent Items" in text and "1,000" in text and "Sent Items" in html
    assert "3 messages now in 3 folders" in text
    name, rows = attachment(msg)
    assert name == "listing.csv"
    assert rows[0] == list(COLUMNS)
    assert rows[1] == [
        f"{DEST_PATH}.Folder 0",
        "2017-09-25T00:00:00+05:30",
        "User 0 <user0@example.com>",
        "Subject 0 about project 0",
        "1000",
        "<0.0@example.com>",
    ]
    assert len(rows) == 4
    assert tmp_path.exists() and list(tmp_path.iterdir()) == []  # temp files removed


def test_recipient_with_line_break_cannot_add_headers(tmp_path: Path) -> None:
    msg = mail(make_json(Status.SUCCEEDED), tmp_path, to_addr="a@example.com\r\nBcc: b@example.com")
    assert msg["Bcc"] is None and "\n" not in msg["To"]


def test_mail_without_recipient_has_no_to_header(tmp_path: Path) -> None:
    msg = mail(make_json(Status.SUCCEEDED), tmp_path, to_addr=None)
    assert msg["To"] is None


def test_listing_cells_are_neutralised_in_the_attachment(tmp_path: Path) -> None:
    nasty = ListingEntry("-INBOX", NOW, "@attacker", '=HYPERLINK("http://x")', 5, "+1")
    msg = mail(make_json(Status.SUCCEEDED), tmp_path, listing=iter([nasty]))
    _, rows = attachment(msg)
    assert rows[1] == [
        "'-INBOX",
        NOW.isoformat(),
        "'@attacker",
        '\'=HYPERLINK("http://x")',
        "5",
        "'+1",
    ]


@pytest.mark.parametrize(
    "title",
    [
        "Evil\r\nBcc: victim@example.com",
        "Evil\nBcc: victim@example.com",
        "Evil\rBcc: victim@example.com",
        "Evil\x85Bcc: victim@example.com",
        "Evil\u2028Bcc: victim@example.com",
        "Evil\r\n\r\nbody injected",
        "Evil\r\n Bcc: folded@example.com",
    ],
)
def test_header_injection_is_impossible(title: str, tmp_path: Path) -> None:
    msg = mail(make_json(Status.SUCCEEDED, make_request(title=title)), tmp_path)
    keys = {k.lower() for k in msg}
    assert keys == {
        "subject", "from", "to", "date", "message-id", "x-legacyflo-request-id",
        "content-type", "mime-version",
    }  # fmt: skip
    assert "\n" not in msg["Subject"] and "\r" not in msg["Subject"]
    assert msg["Subject"].startswith("[legacyflo] Evil ")
    assert msg.get_content_type() == "multipart/mixed"


@given(st.text())
def test_header_text_is_one_clean_line(value: str) -> None:
    out = header_text(value)
    assert not any(c in out for c in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
    assert out == out.strip() and len(out) <= 200


def test_html_is_escaped(tmp_path: Path) -> None:
    request = make_request(title="<script>alert(1)</script>")
    result = report.result_json(
        "req-1", request, None, make_result(Status.PARTIAL), csv_name="b.csv",
        dest_folder_path=DEST_PATH,
    )  # fmt: skip
    _, html = bodies(mail(result, tmp_path))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>Hi</b>" not in html and "&lt;b&gt;Hi&lt;/b&gt; &amp; bye" in html


def test_partial_mail_lists_each_failed_message(tmp_path: Path) -> None:
    msg = mail(make_json(Status.PARTIAL), tmp_path)
    assert (
        msg["Subject"] == "[legacyflo] Upload Data John Smith: partial (1,234 messages, 2 failed)"
    )
    text, html = bodies(msg)
    for body in (text, html):
        assert "UID 17" in body and "too big" in body
        assert "UID 99" in body and "Retrieval using IMAP4 failed" in body
    assert "2018-01-02T03:04:05+00:00" in text and "date unknown" in text


def test_failed_mail_gives_the_error(tmp_path: Path) -> None:
    msg = mail(make_json(Status.FAILED), tmp_path)
    assert msg["Subject"] == "[legacyflo] Upload Data John Smith: failed"
    text, _ = bodies(msg)
    assert "Error: baya.com: authentication failed" in text


def test_rejected_mail_names_the_field_and_why(tmp_path: Path) -> None:
    def must_not_be_read() -> Iterator[ListingEntry]:
        raise AssertionError("listing read for a rejected row")
        yield  # pragma: no cover

    msg = mail(make_json(Status.REJECTED), tmp_path, listing=must_not_be_read())
    assert msg["Subject"] == "[legacyflo] Bad Row: rejected (row 3, field since)"
    assert msg.get_content_type() == "multipart/mixed"
    assert list(msg.iter_attachments()) == []
    text, html = bodies(msg)
    for body in (text, html):
        assert "Row 3 of b.csv was rejected" in body
        assert "field &#x27;since&#x27;" in body or "field 'since'" in body
        assert "is not a date; use 2017-09-25 or 25-Sep-2017" in body


@pytest.mark.parametrize(
    "status", [Status.SUCCEEDED, Status.PARTIAL, Status.FAILED, Status.REJECTED]
)
def test_no_password_in_any_mail(status: Status, tmp_path: Path) -> None:
    raw = build_mail(
        make_json(status), entries(2), from_addr=FROM, to_addr="a@b.example", now=NOW,
        compress_above=0, tmpdir=tmp_path,
    )  # fmt: skip
    msg = message_from_bytes(raw, policy=default)
    assert isinstance(msg, EmailMessage)
    decoded = raw.decode("ascii") + "".join(bodies(msg))
    for secret in (SRC_PW, DST_PW, "S3cr3t", "P@ss"):
        assert secret not in decoded


def test_non_ascii_title_survives(tmp_path: Path) -> None:
    msg = mail(make_json(Status.SUCCEEDED, make_request(title="Données Zoë 数据")), tmp_path)
    assert msg["Subject"] == "[legacyflo] Données Zoë 数据: succeeded (1,234 messages)"
    text, _ = bodies(msg)
    assert "Données Zoë 数据" in text


def build_large(tmp_path: Path, count: int) -> bytes:
    return build_mail(
        make_json(Status.SUCCEEDED), entries(count), from_addr=FROM, to_addr=None, now=NOW,
        compress_above=1 << 20, tmpdir=tmp_path,
    )  # fmt: skip


def test_large_listing_is_built_quickly_and_compressed(tmp_path: Path) -> None:
    count = 100_000
    started = time.perf_counter()
    raw = build_large(tmp_path, count)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"took {elapsed:.1f} s"  # about 3 s on an idle 2-core machine
    assert len(raw) < 8 * 1024 * 1024
    msg = message_from_bytes(raw, policy=default)
    assert isinstance(msg, EmailMessage)
    name, rows = attachment(msg)
    assert name == "listing.csv.gz"
    assert len(rows) == count + 1
    assert rows[-1][0] == f"{DEST_PATH}.Folder {(count - 1) % 20}"
    assert "100,000 messages now in 20 folders" in bodies(msg)[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # tracemalloc makes it ~8 s
def test_large_listing_memory_is_bounded(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        raw = build_large(tmp_path, 100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Measured: the CSV is 16 MB uncompressed, the entries take 49 MB if all kept, the mail is
    # 3.4 MB and the peak ~14 MB (the mail's bytes and its base64 copies).
    assert peak < 50 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert peak < 6 * len(raw), f"peak {peak / 1e6:.1f} MB for a {len(raw) / 1e6:.1f} MB mail"


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1_234_567, "1.2 MB"),
        (5 * 10**12, "5000.0 GB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


@given(st.text(max_size=200))
@example("=?utf-8?b?Zm9v?= x =?iso-8859-1?q?caf=E9?=")
@example("a\r\nBcc: x@example.com")
def test_any_title_round_trips_into_the_subject(title: str) -> None:
    doc = dict(make_json(Status.REJECTED))
    doc["jobtitle"] = title
    raw = build_mail(
        doc,
        iter(()),
        from_addr=FROM,
        to_addr=None,
        now=NOW,
        compress_above=0,
        tmpdir=Path("/nonexistent"),
    )
    msg = message_from_bytes(raw, policy=default)
    assert msg["Subject"] == subject(doc)
    assert {k.lower() for k in msg} == {
        "subject", "from", "date", "message-id", "x-legacyflo-request-id", "content-type",
        "mime-version",
    }  # fmt: skip


@pytest.mark.parametrize("title", ["=?utf-8?q?forged?=", "x" * 70, "y" * 66, "Zoë " * 40])
def test_subject_folding_keeps_the_exact_text(title: str, tmp_path: Path) -> None:
    doc = make_json(Status.SUCCEEDED, make_request(title=title))
    msg = mail(doc, tmp_path)
    assert msg["Subject"] == subject(doc)
    assert msg["Subject"].startswith("[legacyflo] ")


def test_a_mail_with_an_empty_listing_has_no_attachment_and_says_what_next(
    tmp_path: Path,
) -> None:
    msg = mail(make_json(Status.FAILED), tmp_path, listing=iter(()))
    assert msg.get_content_type() == "multipart/mixed"
    assert list(msg.iter_attachments()) == []
    text, html = bodies(msg)
    assert "Next step:" in text and "check the user id and password" in text
    assert "legacyflo-daemon retry b.csv" in text and "Next step" in html
    ok = mail(make_json(Status.SUCCEEDED), tmp_path)
    text, _ = bodies(ok)
    assert "Next step:" in text and "nothing" in text
    assert "Duration:" in text


def test_the_text_body_fits_78_columns_with_a_block_per_folder(tmp_path: Path) -> None:
    doc = make_json(Status.SUCCEEDED)
    doc["folders"][0]["note"] = "a long note " * 12
    text, _ = bodies(mail(doc, tmp_path))
    lines = text[text.index("Folders:") :].splitlines()
    folder_lines = lines[: lines.index("")]  # up to the blank line that ends the section
    folder_part = "\n".join(folder_lines)
    assert all(len(line) <= 78 for line in folder_lines), folder_part
    assert "  INBOX\n    -> " in folder_part
    assert "1,000 in range: 990 copied, 10 already present, 0 failed" in folder_part
