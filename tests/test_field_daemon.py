"""The daemon, run as an administrator runs it, between Courier and Cyrus (issue 10).

A CSV is dropped into the spool of a ``run --once`` daemon whose config describes the servers
per direction (``[hosts."x".source]`` / ``.dest``): the source is Courier-IMAP (``INBOX.``
personal namespace, STARTTLS on a non-993 port), the destination a Cyrus IMAP with ``/`` as
separator and its default ``munge8bit``. Checked from the outside: the archive message by
message (stdlib imaplib), the result JSON (destination paths in the destination's own
separator, altered messages, ``partial``), the report mail, that no file holds a password, and
that a second CSV adds nothing and reports the altered message again.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from testkit.courier import CourierServer
from testkit.cyrus import CyrusServer
from testkit.imap import HOSTILE_PASSWORD, Security, ServerAccount
from testkit.imapmail import append_messages, read_mailbox
from testkit.maildir import MailSpec
from testkit.mailgen import make_message
from testkit.tlsca import TlsCa

from .e2ehelp import (
    DaemonProcess,
    Row,
    _table,
    drop_csv,
    files_containing,
    request_csv,
    results,
)

pytestmark = pytest.mark.timeout(120)


def _spec(label: str, subject: str, *, mid: bool = True) -> MailSpec:
    when = dt.datetime(2019, 5, 6 + len(label) % 20, 10, 0, tzinfo=dt.UTC)
    data = make_message(subject=subject, date=when,
                        message_id=f"<{label}@field.test>" if mid else None)  # fmt: skip
    return MailSpec(data=data, flags=frozenset({"\\Seen"}), internaldate=when, label=label)


MAILBOX = {
    "INBOX": [_spec("a", "plain"), _spec("b", "Grüße", mid=False)],
    "INBOX.Sent Items": [_spec("c", "sent")],
    "INBOX.Projects.2024": [_spec("d", "project")],
}


@pytest.fixture
def cyrus_slash(cyrus_factory: Callable[..., CyrusServer]) -> CyrusServer:
    return cyrus_factory(separator="/")


def _config(tmp: Path, spool: Path, source: CourierServer, dest: CyrusServer) -> Path:
    parts = [
        _table("daemon", {"spool": spool, "stable_seconds": 0.2, "rescan_seconds": 1.0}),
        _table("imap", {"retries": 2, "backoff_base": 0.2, "backoff_max": 0.5}),
        _table("log", {"format": "json"}),
        # One table per direction: the source over STARTTLS on the CSV's port, the
        # destination over implicit TLS on the port given here.
        _table(f'hosts."{source.host}"', {"ca_file": source.ca_file}),
        _table(f'hosts."{source.host}".source', {"tls": "starttls"}),
        _table(f'hosts."{dest.host}"', {"ca_file": dest.ca_file}),
        _table(f'hosts."{dest.host}".dest', {"tls": "implicit", "port": dest.port_tls}),
    ]
    path = tmp / "config.toml"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _run_once(tmp: Path, config: Path, spool: Path, name: str, rows: list[Row]) -> int:
    drop_csv(spool / "incoming", f"{name}.csv", request_csv(rows))
    with DaemonProcess(config, tmp, name=name, once=True) as daemon:
        return daemon.wait(90)


def test_courier_to_cyrus_with_slash_as_an_administrator_runs_it(
    courier_server: CourierServer, cyrus_slash: CyrusServer, tls_ca: TlsCa, tmp_path: Path
) -> None:
    source = courier_server.account(courier_server.new_user(HOSTILE_PASSWORD, "fd"))
    dest = cyrus_slash.account(cyrus_slash.new_user("dest pässword \"'", "fd"))
    with source.imap(Security.STARTTLS) as conn:
        for folder, specs in MAILBOX.items():
            append_messages(conn, folder, specs)
        before = read_mailbox(conn)
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True, mode=0o700)
    config = _config(tmp_path, spool, courier_server, cyrus_slash)
    row = Row(source, dest, "Data", source_port=courier_server.port_plain, jobtype="IMAP")

    assert _run_once(tmp_path, config, spool, "first", [row]) == 1  # partial is not success
    (doc,) = results(spool).values()
    assert doc["status"] == "partial", doc
    assert doc["destination_folder"] == "INBOX/historical_data/Data"
    assert {f["destination"] for f in doc["folders"]} == {
        "INBOX/historical_data/Data/Inbox",
        "INBOX/historical_data/Data/Sent Items",
        "INBOX/historical_data/Data/Projects/2024",  # Projects itself holds no mail on Courier
    }
    (altered,) = [f for f in doc["failures"] if f["kind"] == "altered"]
    assert altered["folder"] == "INBOX" and altered["subject"] == "Grüße"
    assert "munge8bit" in altered["reason"]
    assert doc["totals"]["copied"] == 4 and doc["totals"]["altered"] == 1
    assert doc["totals"]["failed"] == 0
    mail = email.message_from_bytes(
        (spool / "outbox" / f"{doc['request_id']}.eml").read_bytes(), policy=email.policy.default
    )
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Messages the destination stored altered (1)" in text
    assert "munge8bit" in text

    with source.imap(Security.STARTTLS) as conn:
        assert read_mailbox(conn) == before  # the source is never modified
    with dest.imap(Security.TLS) as conn:
        after = read_mailbox(conn)
    base = "INBOX/historical_data/Data/"
    got = {n[len(base) :]: sum(f.contents().values()) for n, f in after.folders.items()
           if n.startswith(base)}  # fmt: skip
    # Projects is created as the parent it is (Cyrus makes every name a mailbox): empty.
    assert got == {"Inbox": 2, "Sent Items": 1, "Projects": 0, "Projects/2024": 1}
    want = Counter(m.content for m in before.folders["INBOX.Sent Items"].messages)
    assert after.folders[base + "Sent Items"].contents() == want

    # The same row again: nothing added, the altered copy reported again.
    assert _run_once(tmp_path, config, spool, "second", [row]) == 1
    second = [d for d in results(spool).values() if d["request_id"] != doc["request_id"]]
    (again,) = second
    assert again["totals"]["copied"] == 0 and again["totals"]["already_present"] == 4
    assert [f["kind"] for f in again["failures"]] == ["altered"]
    with dest.imap(Security.TLS) as conn:
        assert read_mailbox(conn) == after

    leaks = files_containing(tmp_path, [source.password, dest.password])
    assert leaks == {}, leaks


def test_a_source_account_never_brings_other_peoples_folders(
    cyrus_server: CyrusServer,
    new_dest_account: Callable[..., ServerAccount],
    tmp_path: Path,
) -> None:
    """Cyrus lists other users' folders shared with the login and shared folders; the
    archive gets only the login's own mail."""
    cyrus = cyrus_server
    alice = cyrus.account(cyrus.new_user(HOSTILE_PASSWORD, "al"))
    bob = cyrus.new_user(HOSTILE_PASSWORD, "bo")
    with cyrus.connect(bob) as conn:
        append_messages(conn, "INBOX.Private", [_spec("bob", "bob's mail")])
    cyrus.share_folder(bob, "INBOX.Private", alice.user)
    shared = cyrus.create_shared_folder(f"Announce{alice.user}", {alice.user: "lr"})
    with alice.imap(Security.TLS) as conn:
        append_messages(conn, "INBOX", [_spec("alice", "alice's mail")])
        listed = {str(x) for x in conn.list('""', '"*"')[1]}
    assert any(f"user.{bob}.Private" in x for x in listed) and any(shared in x for x in listed)
    dest = new_dest_account()
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True, mode=0o700)
    parts = [
        _table("daemon", {"spool": spool, "stable_seconds": 0.2}),
        _table("log", {"format": "json"}),
        _table(f'hosts."{cyrus.host}"', {"ca_file": cyrus.ca_file, "tls": "implicit"}),
        _table(
            f'hosts."{dest.host}"',
            {"ca_file": dest.ca_file, "tls": "implicit", "port": dest.port_tls},
        ),
    ]
    config = tmp_path / "config.toml"
    config.write_text("\n".join(parts), encoding="utf-8")
    row = Row(alice, dest, "Alice", jobtype="IMAP")
    assert _run_once(tmp_path, config, spool, "one", [row]) == 0
    (doc,) = results(spool).values()
    assert [f["source"] for f in doc["folders"]] == ["INBOX"]
    skipped = {f["folder"]: f["reason"] for f in doc["skipped_folders"]}
    assert set(skipped) >= {f"user/{bob}/Private", shared}, skipped
    assert all("only the account's own mail" in r for r in skipped.values())
    mail = (spool / "outbox" / f"{doc['request_id']}.eml").read_text("utf-8", "replace")
    assert "Folders not copied, by design" in mail
    with dest.imap(Security.TLS) as conn:
        names = set(read_mailbox(conn).folders)
    archived = {n for n in names if n.startswith("INBOX.historical_data")}
    assert archived == {
        "INBOX.historical_data",
        "INBOX.historical_data.Alice",
        "INBOX.historical_data.Alice.Inbox",
    }
