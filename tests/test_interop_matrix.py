"""One realistic mailbox copied between every pair of real servers, checked message by message.

Sources and destinations: Dovecot (``/`` without prefix as a source, ``.`` with ``INBOX.`` as a
destination), Cyrus IMAP 3.6 with ``.`` and with ``/`` (``INBOX.``/``INBOX/`` personal
namespace, other users' and shared namespaces, ``munge8bit`` on: it rewrites raw 8-bit header
bytes) and Courier-IMAP 5.0 (``INBOX.``, STARTTLS). The mailbox has nested folders, ``Mr.
Smith``, non-ASCII names, a name Cyrus refuses (``50% Off``), raw 8-bit headers, mail without a
Message-ID, byte-identical duplicates, flags, keywords and old dates; a Cyrus source also sees
another user's folder and a shared folder, which must never be copied.

Checked independently of the product's code (stdlib imaplib, testkit): the source is unchanged;
the destination tree is exactly the expected one (personal prefix stripped, names mapped,
refused names under the safe mapping); every folder holds exactly the source's messages (bytes,
flags, INTERNALDATE), except messages with raw 8-bit headers on a destination that rewrites
them, which must be stored once, reported as altered, and make the request ``partial``; and a
second run adds nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import imaplib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from legacyflo_daemon.config.schema import HostConfig
from legacyflo_daemon.model import JobType, Status
from testkit.cyrus import CyrusServer, missing_cyrus
from testkit.imap import HOSTILE_PASSWORD, Security, ServerAccount
from testkit.imapmail import append_messages, create_folder, quote, read_mailbox
from testkit.maildir import MailSpec, encode_mutf7
from testkit.mailgen import make_message
from testkit.snapshot import Content, MailboxSnapshot
from testkit.tlsca import TlsCa

from .copyhelp import CopyRun, Login, make_config, make_request

pytestmark = pytest.mark.timeout(120)

ROOT = ("INBOX", "historical_data")
DEST_FOLDER = "Data"
PASSWORD = HOSTILE_PASSWORD


def _date(year: int, month: int, day: int) -> dt.datetime:
    return dt.datetime(year, month, day, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def _msg(label: str, year: int, *, subject: str | None = None, mid: bool = True,
         flags: frozenset[str] = frozenset()) -> MailSpec:  # fmt: skip
    when = _date(year, 3, 4 + len(label) % 20)
    data = make_message(
        subject=subject or f"Message {label}",
        date=when,
        message_id=f"<{label}.{year}@matrix.test>" if mid else None,
        body=f"Body of {label}.\n",
        boundary_seed=label,
    )
    return MailSpec(data=data, flags=flags, internaldate=when, label=label)


# The mailbox, by folder path (segments below the personal namespace; () is INBOX).
DUP = _msg("dup", 2015)
MAILBOX: dict[tuple[str, ...], list[MailSpec]] = {
    (): [
        _msg("plain", 2016, flags=frozenset({"\\Seen"})),
        _msg("flagged", 2017, flags=frozenset({"\\Seen", "\\Flagged", "$Label1"})),
        _msg("eightbit", 2018, subject="Réunion à Zürich"),  # raw UTF-8 in the header
        _msg("nomid8", 2019, subject="Grüße ohne ID", mid=False),  # no Message-ID, 8-bit
        _msg("nomid", 2014, subject="no id, ascii", mid=False),
        DUP,
        DUP,  # a genuine byte-identical duplicate: both must arrive
    ],
    ("Sent Items",): [_msg("sent1", 2012, flags=frozenset({"\\Seen", "\\Answered"}))],
    ("Projects",): [_msg("proj", 2011)],
    ("Projects", "2024"): [_msg("p2024", 2024, flags=frozenset({"\\Draft"}))],
    ("Café & Réunions",): [_msg("cafe", 2010, subject="café")],
    ("50% Off",): [_msg("offer", 2009)],
}
SLASH_ONLY = {("Mr. Smith",): [_msg("smith", 2008)]}  # a '.' in a name: sources with '/'


@dataclass
class Side:
    """One server of the matrix as the test sees it."""

    kind: str
    server: Any  # DovecotServer | CyrusServer | CourierServer
    security: Security

    @property
    def sep(self) -> str:
        return str(self.server.separator)

    @property
    def prefix(self) -> str:
        return str(self.server.prefix)

    @property
    def port(self) -> int:
        return int(
            self.server.port_tls if self.security is Security.TLS else self.server.port_plain
        )

    def new_account(self) -> ServerAccount:
        return ServerAccount(self.server, self.server.new_user(PASSWORD, "mx"), PASSWORD)

    def host_config(self) -> HostConfig:
        tls = "implicit" if self.security is Security.TLS else "starttls"
        return HostConfig(ca_file=Path(self.server.ca_file), tls=tls, port=self.port)

    def wire(self, path: tuple[str, ...]) -> str:
        """The full wire name of a personal folder ``path`` on this server."""
        if not path:
            return "INBOX"
        return self.prefix + self.sep.join(encode_mutf7(s) for s in path)


@pytest.fixture(scope="module")
def cyrus_slash(tls_ca: TlsCa) -> Iterator[CyrusServer]:
    reason = missing_cyrus()
    if reason is not None:
        pytest.skip(reason)
    server = CyrusServer(tls_ca, host="127.0.0.2", separator="/")
    try:
        yield server.start()
    finally:
        server.remove()


KINDS = ("dovecot", "cyrus", "cyrus-slash", "courier")


@pytest.fixture
def side(request: pytest.FixtureRequest) -> Callable[[str, str], Side]:
    def make(kind: str, role: str) -> Side:
        if kind == "dovecot":
            name = "source_server" if role == "source" else "dest_server"
            server: Any = request.getfixturevalue(name)
            return Side(kind, server, Security.TLS)
        if kind == "cyrus":
            return Side(kind, request.getfixturevalue("cyrus_server"), Security.TLS)
        if kind == "cyrus-slash":
            return Side(kind, request.getfixturevalue("cyrus_slash"), Security.TLS)
        return Side(kind, request.getfixturevalue("courier_server"), Security.STARTTLS)

    return make


def _load_source(src: Side, account: ServerAccount) -> dict[tuple[str, ...], list[MailSpec]]:
    """Load the mailbox; returns what the source really holds (a name it refuses is left out)."""
    wanted = dict(MAILBOX)
    if src.sep == "/":
        wanted.update(SLASH_ONLY)
    loaded: dict[tuple[str, ...], list[MailSpec]] = {}
    with account.imap(src.security) as conn:
        for path, specs in wanted.items():
            name = src.wire(path)
            try:
                append_messages(conn, name, specs)
            except Exception as exc:  # the source itself refuses the name (Cyrus: '%')
                if path and "50%" in path[0] and isinstance(src.server, CyrusServer):
                    continue
                raise AssertionError(f"loading {name!r} on {src.kind}: {exc}") from exc
            loaded[path] = specs
    return loaded


def _foreign_folders(src: Side, account: ServerAccount) -> None:
    """On Cyrus: another user's folder shared with ``account`` and a shared top-level folder,
    each holding a message; they are the user's to read, never to archive."""
    server: CyrusServer = src.server
    other = server.new_user(PASSWORD, "bob")
    with server.connect(other) as conn:
        append_messages(conn, src.wire(("Private",)), [_msg("bobs", 2013)])
    server.share_folder(other, src.wire(("Private",)), account.user)
    shared = server.create_shared_folder(f"Announcements{account.user}", {account.user: "lrip"})
    with account.imap(src.security) as conn:
        spec = _msg("announce", 2013)
        date = imaplib.Time2Internaldate(spec.internaldate)
        assert conn.append(quote(shared), "()", date, spec.data)[0] == "OK"


def _safe(segment: str) -> str:
    """docs/contract.md §4's safe mapping, written out again here on purpose."""
    out = "".join(c if c.isalnum() or c in " -_()" else "_" for c in segment).strip()
    return out or "_"


def _refuses(dst: Side, segment: str) -> bool:
    return isinstance(dst.server, CyrusServer) and any(c in segment for c in '%"\\')


def _expected_dest(dst: Side, path: tuple[str, ...]) -> str:
    """The destination wire name of the source folder ``path`` (prefix already stripped)."""
    mapped = ["Inbox"] if not path else [s.replace(dst.sep, "_") for s in path]
    mapped = [_safe(s) if _refuses(dst, s) else s for s in mapped]
    return dst.sep.join(encode_mutf7(s) for s in (*ROOT, DEST_FOLDER, *mapped))


def _eight_bit_header(spec: MailSpec) -> bool:
    header = spec.data.split(b"\r\n\r\n", 1)[0]
    return any(c >= 0x80 for c in header)


def _state(snapshot: MailboxSnapshot, name: str) -> object:
    """A folder's messages and UIDVALIDITY; an empty folder's UIDVALIDITY is left out: Courier
    makes up a new one for an empty Maildir folder on every SELECT (it stores none)."""
    folder = snapshot.folders.get(name)
    if folder is None or not folder.messages:
        return folder is not None
    return folder


def _contents(snapshot: MailboxSnapshot, name: str) -> Counter[Content]:
    assert name in snapshot.folders, f"{name!r} missing; have {sorted(snapshot.folders)}"
    return snapshot.folders[name].contents()


@pytest.mark.parametrize("dst_kind", KINDS)
@pytest.mark.parametrize("src_kind", KINDS)
def test_mailbox_copied_faithfully_between_every_pair_of_servers(
    src_kind: str, dst_kind: str, side: Callable[[str, str], Side], tmp_path: Path
) -> None:
    src, dst = side(src_kind, "source"), side(dst_kind, "dest")
    src_account, dst_account = src.new_account(), dst.new_account()
    loaded = _load_source(src, src_account)
    if isinstance(src.server, CyrusServer):
        _foreign_folders(src, src_account)
    with dst_account.imap(dst.security) as conn:  # an unrelated folder that must stay as it is
        create_folder(conn, dst.wire(("Keep",)))
    with src_account.imap(src.security) as conn:
        before = read_mailbox(conn)

    # One host name may serve both directions (two Cyrus users, or two Cyrus on one address):
    # the source port then comes from the request, the destination's from the host's table.
    hosts = {src.server.host: src.host_config(), dst.server.host: dst.host_config()}
    config = make_config(hosts, dest_port=dst.port)
    request = make_request(
        Login(src_account.user, PASSWORD, src.server.host, src.port),
        Login(dst_account.user, PASSWORD, dst.server.host),
        jobtype=JobType.IMAP,
    )
    run = CopyRun.create(tmp_path, request, config, "req-1")
    result = asyncio.run(run.run())

    with src_account.imap(src.security) as conn:
        assert read_mailbox(conn) == before, "the source mailbox changed"
    with dst_account.imap(dst.security) as conn:
        after = read_mailbox(conn)

    # The tree: exactly the personal folders, mapped; nothing of bob's or the shared folder.
    expected_names = {_expected_dest(dst, path): path for path in loaded}
    base = dst.sep.join((*ROOT, DEST_FOLDER))
    copied_names = {n for n in after.folders if n.startswith(base + dst.sep)}
    assert copied_names == set(expected_names), result
    assert dst.wire(("Keep",)) in after.folders

    # Message by message: the same bytes, flags and dates, except what the destination altered.
    src_contents = before.contents()
    altered_expected = 0
    for name, path in expected_names.items():
        want = src_contents[src.wire(path)]
        got = _contents(after, name)
        assert sum(got.values()) == sum(want.values()), (name, got, want)
        rewrites = isinstance(dst.server, CyrusServer) and not isinstance(src.server, CyrusServer)
        eight_bit = [s for s in loaded[path] if _eight_bit_header(s)] if rewrites else []
        altered_expected += len(eight_bit)
        assert sum((want - got).values()) == len(eight_bit), (name, want - got)

    altered = [f for f in result.failures if f.kind == "altered"]
    assert len(altered) == altered_expected, result.failures
    assert all("munge8bit" in f.reason for f in altered), altered
    assert [f for f in result.failures if f.kind == "failed"] == []
    assert result.status is (Status.PARTIAL if altered_expected else Status.SUCCEEDED), result
    total = sum(len(v) for v in loaded.values())
    assert sum(f.copied for f in result.folders) == total
    assert sum(f.altered for f in result.folders) == altered_expected
    top = dst.sep.join((*ROOT, DEST_FOLDER))  # shown in the destination's own separator
    assert result.destination_folder == top
    for folder in result.folders:
        assert folder.destination.startswith(top + dst.sep), folder

    # A second request for the same mailbox adds nothing, altered messages included.
    again = asyncio.run(CopyRun.create(run.state, request, config, "req-2").run())
    with dst_account.imap(dst.security) as conn:
        second = read_mailbox(conn)
    changed = {
        name: (after.folders.get(name), second.folders.get(name))
        for name in set(after.folders) | set(second.folders)
        if _state(after, name) != _state(second, name)
    }
    assert not changed, f"the second run changed the destination: {changed}"
    assert sum(f.copied for f in again.folders) == 0, again
    assert sum(f.already_present for f in again.folders) == total, again
    assert len([f for f in again.failures if f.kind == "altered"]) == altered_expected


def test_without_read_back_an_altered_copy_passes_unseen_and_is_appended_again(
    side: Callable[[str, str], Side], tmp_path: Path
) -> None:
    """``imap.read_back = false`` (for measuring its cost) gives up exactly what the config
    example says: Cyrus's munged copy counts as faithful, and the next run appends it again."""
    src, dst = side("dovecot", "source"), side("cyrus", "dest")
    src_account, dst_account = src.new_account(), dst.new_account()
    with src_account.imap(src.security) as conn:
        append_messages(conn, "INBOX", [_msg("nomid8", 2019, subject="Grüße", mid=False)])
    hosts = {src.server.host: src.host_config(), dst.server.host: dst.host_config()}
    config = make_config(hosts, dest_port=dst.port, read_back=False)
    request = make_request(
        Login(src_account.user, PASSWORD, src.server.host, src.port),
        Login(dst_account.user, PASSWORD, dst.server.host),
        jobtype=JobType.IMAP,
    )
    run = CopyRun.create(tmp_path, request, config, "req-1")
    first = asyncio.run(run.run())
    second = asyncio.run(CopyRun.create(run.state, request, config, "req-2").run())
    assert first.status is Status.SUCCEEDED and first.failures == ()
    assert second.status is Status.SUCCEEDED and sum(f.copied for f in second.folders) == 1
    with dst_account.imap(dst.security) as conn:
        inbox = read_mailbox(conn).folders[_expected_dest(dst, ())]
    assert len(inbox.messages) == 2


def test_an_altered_copy_not_read_back_before_a_cut_is_not_appended_again(
    side: Callable[[str, str], Side], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops right after the APPEND, before the read-back: the retry's fresh
    pass finds Cyrus's munged copy (8-bit bytes turned to X), records it as altered, and the
    destination holds one copy, not two."""
    from legacyflo_daemon.errors import TransientError
    from legacyflo_daemon.imap.session import Session

    src, dst = side("dovecot", "source"), side("cyrus", "dest")
    src_account, dst_account = src.new_account(), dst.new_account()
    with src_account.imap(src.security) as conn:
        append_messages(conn, "INBOX", [_msg("nomid8", 2019, subject="Grüße", mid=False),
                                        _msg("plain", 2018)])  # fmt: skip
    real = Session.fetch_sizes_from
    cuts: list[int] = []

    async def cut_once(self: Session, first_uid: int) -> list[object]:
        if not cuts:
            cuts.append(first_uid)
            raise TransientError("connection lost (test)")
        return await real(self, first_uid)  # type: ignore[return-value]

    monkeypatch.setattr(Session, "fetch_sizes_from", cut_once)
    hosts = {src.server.host: src.host_config(), dst.server.host: dst.host_config()}
    request = make_request(
        Login(src_account.user, PASSWORD, src.server.host, src.port),
        Login(dst_account.user, PASSWORD, dst.server.host),
        jobtype=JobType.IMAP,
    )
    result = asyncio.run(CopyRun.create(tmp_path, request, make_config(hosts, dest_port=dst.port),
                                        "req-1").run())  # fmt: skip
    assert cuts, "the read-back was never cut"
    assert result.status is Status.PARTIAL, result
    (altered,) = [f for f in result.failures if f.kind == "altered"]
    assert "found after an interruption" in altered.reason
    with dst_account.imap(dst.security) as conn:
        inbox = read_mailbox(conn).folders[_expected_dest(dst, ())]
    assert len(inbox.messages) == 2  # each source message once
