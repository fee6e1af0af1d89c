"""End-to-end acceptance tests of the report mails (issue 5), the daemon as a subprocess.

The daemon runs against the real Dovecot test servers and a real aiosmtpd SMTP server. Checked:
the listing attached to a report names every message under the destination folder tree,
including mail of earlier requests, and agrees with what the destination server holds; a report
waits in ``outbox/`` while SMTP is down and is delivered exactly once when it is back (after a
restart, or by a daemon that keeps running); a rejected row gets a report naming the field and
why, without a listing; a per-message failure (Exchange's substitute message) makes the request
``partial`` and is listed in the result and the mail. Every result validates against
``result.schema.json``, every mail is well formed, and no password is in any file or mail.
"""

from __future__ import annotations

import datetime as dt
import gzip
import html
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest

from testkit.dovecot import DovecotServer
from testkit.imap import ServerAccount
from testkit.maildir import MailSpec, load_messages
from testkit.mailgen import make_message, utc
from testkit.snapshot import snapshot_mailbox
from tests.e2ehelp import (
    DEST_ROOT,
    Row,
    Work,
    drop_csv,
    free_port,
    mailbox_specs,
    request_csv,
    results,
    summary,
    wait_until,
)
from tests.reporthelp import (
    FROM_ADDRESS,
    SmtpServer,
    account_files,
    attachment_names,
    body_text,
    configure,
    expected_listing,
    listed,
    listed_messages,
    listing_rows,
    mail_problems,
    only_request,
    outbox_problems,
    parse_mail,
    run_once,
    schema_errors,
    source_with_mail,
    tree_counts,
    tree_messages,
)

NewAccount = Callable[..., ServerAccount]
DEST_PASSWORD = 'rep "dest", \\ pw ö'


@pytest.fixture
def work(tmp_path: Path, source_server: DovecotServer, dest_server: DovecotServer) -> Work:
    return Work(tmp_path, source_server, dest_server)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer(free_port()) as server:
        yield server


# -- the checks themselves (no servers) --------------------------------------------------------


def _mail(*, to: str | None, html_part: bool = True, listing: bytes | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = FROM_ADDRESS
    if to:
        msg["To"] = to
    msg["Subject"] = "report"
    msg["Date"] = format_datetime(dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    msg["Message-ID"] = make_msgid(domain="archive.example")
    msg.set_content("text\n")
    if html_part:
        msg.add_alternative("<p>text</p>\n", subtype="html")
    if listing is not None:
        msg.add_attachment(listing, maintype="application", subtype="gzip",
                           filename="listing.csv.gz")  # fmt: skip
    return msg.as_bytes()


def test_the_mail_check_accepts_a_good_report_and_names_each_fault() -> None:
    csv_text = (
        "\ufefffolder,received,from,subject,size,message_id\r\n"
        "F,2020-01-01T00:00:00+00:00,a,s,1,<m@x>\r\n"
    )
    good = parse_mail(_mail(to="owner@example.com", listing=gzip.compress(csv_text.encode())))
    assert mail_problems(good, to="owner@example.com") == []
    assert listing_rows(good) == [
        {"folder": "F", "received": "2020-01-01T00:00:00+00:00", "from": "a", "subject": "s",
         "size": "1", "message_id": "<m@x>"}
    ]  # fmt: skip
    bad = parse_mail(_mail(to=None, html_part=False))
    assert listing_rows(bad) is None
    problems = mail_problems(bad, to="owner@example.com")
    assert len(problems) == 2, problems
    assert problems[0].startswith("To: []") and "multipart/alternative" in problems[1]


def test_the_schema_check_names_what_is_wrong() -> None:
    assert schema_errors({"version": 1})  # a result without its required keys
    errors = schema_errors({"version": 2, "request_id": ""})
    assert any(e.startswith("version:") for e in errors), errors


# -- 1. the listing of a folder that two requests filled ---------------------------------------


def test_the_second_report_into_a_folder_lists_the_mail_of_both_requests(
    work: Work, smtp: SmtpServer, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    first, first_specs = source_with_mail(new_source_account, "lst1", {"INBOX": 3, "Sent Items": 2})
    second, second_specs = source_with_mail(
        new_source_account, "lst2", {"INBOX": 2, "INBOX/Projekt Café": 2}, seed=10
    )
    dest = new_dest_account(DEST_PASSWORD)
    configure(work, smtp_port=smtp.port)
    owners = ("first-owner@example.com", "second-owner@example.com")
    rids = []
    for n, (src, owner) in enumerate(zip((first, second), owners, strict=True), start=1):
        data = request_csv([Row(src, dest, "Shared", report_to=owner)])
        drop_csv(work.spool / "incoming", f"part{n}.csv", data)
        run_once(work, f"run{n}", 0)
        rids.append(only_request(work, f"part{n}.csv"))
        # --once delivers before it exits: the mail is there already, exactly once.
        assert len(smtp.mails) == n, smtp.mails
    assert len(set(rids)) == 2

    found = results(work.spool)
    for rid, specs in zip(rids, (first_specs, second_specs), strict=True):
        doc = found[rid]
        assert doc["status"] == "succeeded"
        assert doc["destination_folder"] == f"{DEST_ROOT}.Shared"
        assert doc["totals"]["copied"] == sum(len(s) for s in specs.values())
        assert doc["totals"]["already_present"] == 0 and doc["failures"] == []
    assert sorted(account_files(work, "outbox/sent")) == sorted(f"{rid}.eml" for rid in rids)

    mails = []
    for (sender, rcpts, data), rid, owner in zip(smtp.mails, rids, owners, strict=True):
        assert (sender, rcpts) == (FROM_ADDRESS, (owner,))
        assert data == (work.spool / "outbox" / "sent" / f"{rid}.eml").read_bytes()
        mails.append(parse_mail(data))

    # The first report listed only the first request's mail (all there was then).
    first_rows = listing_rows(mails[0])
    assert first_rows is not None
    assert listed(first_rows) == expected_listing(first_specs, "Shared")

    # The second lists both, and agrees with the destination server message for message.
    rows = listing_rows(mails[1])
    assert rows is not None
    both = expected_listing(first_specs, "Shared") + expected_listing(second_specs, "Shared")
    assert listed(rows) == both
    snap = snapshot_mailbox(dest.server, dest.user)
    counts = tree_counts(snap, "Shared")
    assert Counter(r["folder"] for r in rows) == counts
    assert len(rows) == sum(counts.values()) == sum(both.values())
    assert listed_messages(rows) == tree_messages(snap, "Shared")
    assert all("alice@example.com" in r["from"] for r in rows)
    assert attachment_names(mails[1]) == ["listing.csv"]

    secrets = [first.password, second.password, dest.password]
    assert outbox_problems(work, secrets, [d for _s, _r, d in smtp.mails]) == []


# -- 2. SMTP down when the report is ready -----------------------------------------------------


def test_a_report_waits_while_smtp_is_down_and_a_restart_sends_it_exactly_once(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    src, specs = source_with_mail(new_source_account, "down", {"INBOX": 2, "Sent Items": 1})
    dest = new_dest_account(DEST_PASSWORD)
    owner = "waiting-owner@example.com"
    port = free_port()  # nothing listens there yet
    configure(work, smtp_port=port, compress_kb=0)  # 0: the listing goes out as .csv.gz
    drop_csv(work.spool / "incoming", "down.csv",
             request_csv([Row(src, dest, "Waiting", report_to=owner)]))  # fmt: skip

    events = run_once(work, "smtp-down", 0)  # the copy succeeded: mail trouble is not failure
    rid = only_request(work, "down.csv")
    assert results(work.spool)[rid]["status"] == "succeeded"
    failed = [e for e in events if e["event"] == "report_send_failed"]
    failed = [e for e in failed if not str(e["request_id"]).endswith(".batch")]  # its own
    assert failed and all(e["request_id"] == rid for e in failed), failed
    assert f"{rid}.eml" in account_files(work, "outbox")
    assert account_files(work, "outbox/sent") == []
    pending = (work.spool / "outbox" / f"{rid}.eml").read_bytes()
    result = (work.spool / "outbox" / f"{rid}.json").read_bytes()

    with SmtpServer(port) as smtp:
        events = run_once(work, "smtp-up", 0)
        assert len(smtp.mails) == 1, smtp.mails
        sent = [e["request_id"] for e in events if e["event"] == "report_sent"]
        assert [r for r in sent if not str(r).endswith(".batch")] == [rid]
        assert f"{rid}.eml" not in account_files(work, "outbox")
        assert account_files(work, "outbox/sent") == [f"{rid}.eml"]

        events = run_once(work, "third", 0)
        assert len(smtp.mails) == 1, "a delivered report was sent again"
        assert not [e for e in events if e["event"] in ("report_sent", "request_started")]
        mails = smtp.mails

    sender, rcpts, data = mails[0]
    assert (sender, rcpts, data) == (FROM_ADDRESS, (owner,), pending)
    assert (work.spool / "outbox" / "sent" / f"{rid}.eml").read_bytes() == pending
    assert (work.spool / "outbox" / f"{rid}.json").read_bytes() == result  # not re-run
    msg = parse_mail(data)
    assert attachment_names(msg) == ["listing.csv.gz"]
    rows = listing_rows(msg)
    assert rows is not None and listed(rows) == expected_listing(specs, "Waiting")
    assert outbox_problems(work, [src.password, dest.password], [data]) == []


@pytest.mark.slow
def test_a_running_daemon_delivers_a_waiting_report_once_smtp_comes_up(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    # MailSender's backoff is not configurable: the first retry comes 30 s after the failure
    # (backoff_base=30 s, doubling, at most 1 h; a pass every 60 s), so this test takes ~35 s.
    src, specs = source_with_mail(new_source_account, "live", {"INBOX": 2})
    dest = new_dest_account(DEST_PASSWORD)
    owner = "live-owner@example.com"
    port = free_port()
    configure(work, smtp_port=port)
    with work.daemon("live") as daemon:
        drop_csv(work.spool / "incoming", "live.csv",
                 request_csv([Row(src, dest, "Live", report_to=owner)]))  # fmt: skip
        failed = daemon.wait_for(lambda e: e.get("event") == "report_send_failed", 30,
                                 "a failed delivery")  # fmt: skip
        rid = only_request(work, "live.csv")
        assert failed["request_id"] == rid
        assert account_files(work, "outbox/sent") == [] and f"{rid}.eml" in account_files(
            work, "outbox"
        )
        pending = (work.spool / "outbox" / f"{rid}.eml").read_bytes()
        retry_in = float(failed["retry_in"])
        with SmtpServer(port) as smtp:
            wait_until(lambda: account_files(work, "outbox/sent") or None, retry_in + 15,
                       "the report in outbox/sent/", daemon)  # fmt: skip
            # No window "for a duplicate to show up": once the daemon has exited nothing more
            # can be sent, so what the server holds then is everything it was ever sent.
            daemon.send(signal.SIGTERM)
            assert daemon.wait(15) == 0, daemon.describe()
            mails = smtp.mails
    assert mails == [(FROM_ADDRESS, (owner,), pending)]
    assert account_files(work, "outbox/sent") == [f"{rid}.eml"]
    assert f"{rid}.eml" not in account_files(work, "outbox")
    sent = [e for e in daemon.events() if e["event"] == "report_sent"]
    assert [e["request_id"] for e in sent if not str(e["request_id"]).endswith(".batch")] == [rid]
    rows = listing_rows(parse_mail(pending))
    assert rows is not None and listed(rows) == expected_listing(specs, "Live")
    assert outbox_problems(work, [src.password, dest.password], [pending]) == []


# -- 3. a rejected row's report ----------------------------------------------------------------

# (row changes, field at fault, words the reason must contain)
REJECTIONS: list[tuple[dict[str, str], str, list[str]]] = [
    ({"since": "09/10/2017"}, "since", ["2017-09-25", "25-Sep-2017"]),  # lists the formats
    ({"since": "2018-01-02", "before": "2017-01-01"}, "since", ["before"]),
    ({"folder": "Trash"}, "destfolder", ["reserved"]),
]


def test_a_rejected_row_gets_a_report_naming_the_field_and_why_without_a_listing(
    work: Work, smtp: SmtpServer, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    src = new_source_account('rej p@ss"w,\\%*{} é')
    dest = new_dest_account(DEST_PASSWORD)
    rows = []
    for n, (changes, _field, _words) in enumerate(REJECTIONS):
        values = {"folder": f"Rejected{n}", "since": "", "before": ""} | changes
        rows.append(Row(src, dest, values["folder"], report_to=f"rej{n}@example.com",
                        since=values["since"], before=values["before"]))  # fmt: skip
    configure(work, smtp_port=smtp.port)
    drop_csv(work.spool / "incoming", "rejected.csv", request_csv(rows))
    run_once(work, "rejected", 1)

    doc = summary(work.spool, "rejected.csv")
    assert doc is not None and doc["counts"] == {"rejected": len(REJECTIONS)}
    found = results(work.spool)
    by_line = {r["row"]: found[r["request_id"]] for r in doc["rows"]}
    received = {rcpts: data for _sender, rcpts, data in smtp.mails}
    assert len(smtp.mails) == len(REJECTIONS) == len(received)
    for n, (_changes, field, words) in enumerate(REJECTIONS):
        case = f"case {n} ({field})"
        result = by_line[n + 2]
        assert result["status"] == "rejected", case
        assert result["report_to"] == f"rej{n}@example.com", case
        assert result["rejection"]["field"] == field, case
        reason = result["rejection"]["message"]
        assert all(w in reason for w in words), (case, reason)
        msg = parse_mail(received[(f"rej{n}@example.com",)])
        assert "rejected" in str(msg["Subject"]), case
        for body in (body_text(msg, "plain"), html.unescape(body_text(msg, "html"))):
            # The line giving the reason names the field too, besides the reason's own words.
            line = next((ln for ln in body.splitlines() if reason in ln), "")
            assert field in line.replace(reason, ""), (case, body)
        assert attachment_names(msg) == [], case
        assert listing_rows(msg) is None, case
    assert snapshot_mailbox(dest.server, dest.user).under(f"{DEST_ROOT}.") == {}
    secrets = [src.password, dest.password]
    assert outbox_problems(work, secrets, [d for _s, _r, d in smtp.mails]) == []


# -- 4. a per-message failure: partial ---------------------------------------------------------

SUBSTITUTE_SUBJECT = "Retrieval using the IMAP4 protocol failed for the following message: 205"


def test_an_exchange_substitute_message_makes_the_request_partial_and_is_reported(
    work: Work, smtp: SmtpServer, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    src = new_source_account('part p@ss"w,\\%*{} é')
    specs = mailbox_specs(src.user, {"INBOX": 3, "Sent Items": 2}, seed=20)
    when = utc(2019, 5, 6, 7, 8, 9)
    substitute = MailSpec(
        make_message(
            subject=SUBSTITUTE_SUBJECT,
            date=when,
            message_id="<substitute-205@exchange.example>",
            sender="Microsoft Exchange Server <postmaster@exchange.example>",
            body="The server couldn't retrieve the following message:\n\nSubject: lost\n",
        ),
        frozenset({"\\Seen"}),
        when,
        label="substitute",
    )
    # UIDs follow load order: INBOX 1, 2, then the substitute as UID 3, then one more.
    load_messages(src.server, src.user, "INBOX", specs["INBOX"][:2])
    load_messages(src.server, src.user, "INBOX", [substitute])
    load_messages(src.server, src.user, "INBOX", specs["INBOX"][2:])
    load_messages(src.server, src.user, "Sent Items", specs["Sent Items"])
    dest = new_dest_account(DEST_PASSWORD)
    owner = "partial-owner@example.com"
    configure(work, smtp_port=smtp.port)
    drop_csv(work.spool / "incoming", "partial.csv",
             request_csv([Row(src, dest, "Partial", report_to=owner)]))  # fmt: skip
    run_once(work, "partial", 1)

    rid = only_request(work, "partial.csv")
    doc = results(work.spool)[rid]
    assert doc["status"] == "partial"
    assert doc["totals"]["failed"] == 1 and doc["totals"]["copied"] == 5
    (failure,) = doc["failures"]
    assert (failure["folder"], failure["uid"], failure["subject"]) == (
        "INBOX",
        3,
        SUBSTITUTE_SUBJECT,
    )
    assert dt.datetime.fromisoformat(failure["date"]) == when
    assert "Retrieval using IMAP4 failed" in failure["reason"]
    inbox = next(f for f in doc["folders"] if f["source"] == "INBOX")
    assert (inbox["in_range"], inbox["copied"], inbox["failed"]) == (4, 3, 1)

    # The other messages all arrived, exactly once; the substitute did not.
    source = snapshot_mailbox(src.server, src.user).contents()
    bad = next(c for c in source["INBOX"] if c[2] == int(when.timestamp()))
    source["INBOX"] -= Counter({bad: 1})
    got = {n: f.contents() for n, f in snapshot_mailbox(dest.server, dest.user).folders.items()}
    for folder, contents in source.items():
        name = f"{DEST_ROOT}.Partial.{'Inbox' if folder == 'INBOX' else folder}"
        assert got.get(name) == contents, folder

    # The mail says partial and lists the failure; its listing has the five copies.
    (sender, rcpts, data), = smtp.mails  # fmt: skip
    assert (sender, rcpts) == (FROM_ADDRESS, (owner,))
    msg = parse_mail(data)
    assert "partial" in str(msg["Subject"])
    text, page = body_text(msg, "plain"), body_text(msg, "html")
    for part in (text, html.unescape(page)):
        line = next((ln for ln in part.splitlines() if "UID 3" in ln), "")
        assert "INBOX" in line and SUBSTITUTE_SUBJECT in line, part
        assert failure["date"] in line and failure["reason"] in line, part
    rows = listing_rows(msg)
    assert rows is not None and listed(rows) == expected_listing(specs, "Partial")
    assert outbox_problems(work, [src.password, dest.password], [data]) == []
