"""Shared helpers of the copier's acceptance tests (``test_copier*.py``) on the real servers.

Owns: building a request and a config that point the product at the test servers, running a
``Copier`` with its state store, and the independent checks of what arrived: the destination
read back over IMAP with the stdlib (``BODY.PEEK[]`` hashed) or with ``doveadm`` snapshots, and
the expected destination names of the Exchange corpus. Must not: use the product's IMAP layer
for checking (the checks must not share the code under test), or change a source mailbox.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import imaplib
import json
import re
import resource
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legacyflo_daemon.config.schema import Config, HostConfig, ImapConfig
from legacyflo_daemon.model import Account, DateRange, JobType, Request, RequestResult, Secret
from legacyflo_daemon.state.store import StateStore
from legacyflo_daemon.transfer.copier import Copier, Progress
from legacyflo_daemon.transfer.limits import ByteBudget
from testkit.corpus import Manifest
from testkit.dovecot import DovecotServer
from testkit.imap import ServerAccount
from testkit.maildir import LoadedMessage
from testkit.snapshot import Content, MailboxSnapshot, snapshot_mailbox

DEST_FOLDER = "Data"
ROOT = "INBOX.historical_data"
BASE = f"{ROOT}.{DEST_FOLDER}"  # every copied folder lands below this one
NOT_COPIED = frozenset({"\\Recent", "\\Deleted"})

# Where each mail folder of the Exchange corpus lands below BASE: decoded and as on the wire.
# '.' is the destination's delimiter, so "Mr. Smith" becomes "Mr_ Smith" (folders.plan_folders).
CORPUS_DEST: dict[str, tuple[str, str]] = {
    "INBOX": ("Inbox", "Inbox"),
    "INBOX/Projects/2018": ("Inbox.Projects.2018", "Inbox.Projects.2018"),
    "Sent Items": ("Sent Items", "Sent Items"),
    "Deleted Items": ("Deleted Items", "Deleted Items"),
    "Junk Email": ("Junk Email", "Junk Email"),
    "Drafts": ("Drafts", "Drafts"),
    "Mr. Smith": ("Mr_ Smith", "Mr_ Smith"),
    "Café & Réunions": ("Café & Réunions", "Caf&AOk- &- R&AOk-unions"),
    "Empty": ("Empty", "Empty"),
}
# The complete destination tree after copying the corpus (wire names, LIST "" "*").
CORPUS_DEST_TREE = frozenset(
    {"INBOX", ROOT, BASE, f"{BASE}.Inbox.Projects"}
    | {f"{BASE}.{wire}" for _decoded, wire in CORPUS_DEST.values()}
)


def host_config(server: DovecotServer, *, tls: str = "implicit", **kw: Any) -> HostConfig:
    """Overrides for a test server: its CA, and ``tls`` ("implicit", "starttls", "auto")."""
    return HostConfig(ca_file=server.ca_file, tls=tls, **kw)


def make_config(hosts: dict[str, HostConfig], *, dest_port: int, **imap: Any) -> Config:
    """A config with ``hosts`` (keys lower-cased), tiny retry backoff and short timeouts."""
    settings: dict[str, Any] = {
        "dest_port": dest_port,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "timeout": 15.0,
        "connect_timeout": 5.0,
    }
    settings.update(imap)
    return Config(imap=ImapConfig(**settings), hosts={k.lower(): v for k, v in hosts.items()})


@dataclass(frozen=True)
class Login:
    """Who to log in as and where; ``server`` is the name written in the request."""

    user: str
    password: str = field(repr=False)
    server: str
    port: int | None = None
    domain: str = "example.test"

    def account(self) -> Account:
        return Account(self.user, self.domain, Secret(self.password), self.server, self.port)


def make_request(
    source: Login,
    dest: Login,
    *,
    since: dt.date | None = None,
    before: dt.date | None = None,
    jobtype: JobType = JobType.EXCHANGEIMAP,
    dest_folder: str = DEST_FOLDER,
) -> Request:
    return Request(
        row=2,
        jobtype=jobtype,
        title="copier acceptance test",
        source=source.account(),
        dest=dest.account(),
        dest_folder=dest_folder,
        report_to=None,
        dates=DateRange(since, before),
    )


@dataclass
class CopyRun:
    """One request recorded in a state store, ready to be copied (again and again)."""

    state: StateStore
    request: Request
    config: Config
    request_id: str = "req-1"
    budget: ByteBudget = field(default_factory=lambda: ByteBudget(64 * 1024 * 1024))

    @classmethod
    def create(
        cls,
        state: StateStore | Path,
        request: Request,
        config: Config,
        request_id: str = "req-1",
    ) -> CopyRun:
        """Record ``request`` as a new CSV of one row in ``state`` (a store, or a directory for
        a new one), as the daemon does before copying."""
        if isinstance(state, Path):
            state = StateStore(state / "state.sqlite3")
        csv = f"{request_id}.csv"
        state.add_csv(csv, csv, dt.datetime.now(dt.UTC), [(request_id, request)])
        return cls(state, request, config, request_id)

    def copier(
        self,
        *,
        stop: asyncio.Event | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Copier:
        kw: dict[str, Any] = {}
        if stop is not None:
            kw["stop"] = stop
        if on_progress is not None:
            kw["on_progress"] = on_progress
        return Copier(self.request_id, self.request, self.config, self.state, self.budget, **kw)

    async def run(self) -> RequestResult:
        return await self.copier().run()


def direct_run(
    where: StateStore | Path,
    source: ServerAccount,
    dest: ServerAccount,
    *,
    tls: str = "implicit",
    since: dt.date | None = None,
    before: dt.date | None = None,
    jobtype: JobType = JobType.EXCHANGEIMAP,
    request_id: str = "req-1",
    source_password: str | None = None,
    dest_password: str | None = None,
    **imap: Any,
) -> CopyRun:
    """A run from ``source`` to ``dest`` straight to the servers: implicit TLS on their 993-like
    ports, or with ``tls="starttls"``/``"auto"`` STARTTLS on their 143-like ports. The
    passwords are the accounts' own unless given."""
    implicit = tls == "implicit"
    src_port = source.port_tls if implicit else source.port_plain
    dst_port = dest.port_tls if implicit else dest.port_plain
    config = make_config(
        {
            source.host: host_config(source.server, tls=tls),
            dest.host: host_config(dest.server, tls=tls, port=dst_port),
        },
        dest_port=dest.port_tls,
        **imap,
    )
    request = make_request(
        Login(source.user, _given(source_password, source.password), source.host, src_port),
        Login(dest.user, _given(dest_password, dest.password), dest.host),
        since=since,
        before=before,
        jobtype=jobtype,
    )
    return CopyRun.create(where, request, config, request_id)


def _given(value: str | None, default: str) -> str:
    return default if value is None else value


# -- reading the destination back ------------------------------------------------------------

_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_DATE = re.compile(rb'INTERNALDATE "([^"]+)"')


def imap_list(conn: imaplib.IMAP4) -> set[str]:
    """Every folder name (wire form) that ``LIST "" "*"`` shows."""
    typ, data = conn.list('""', "*")
    assert typ == "OK", data
    names = set()
    for line in data:
        assert isinstance(line, bytes), line
        m = re.fullmatch(rb'\((?:[^)]*)\) (?:"[^"]*"|NIL) (.*)', line)
        assert m is not None, line
        name = m.group(1)
        if name.startswith(b'"'):
            name = name[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
        names.add(name.decode("ascii"))
    return names


def imap_contents(conn: imaplib.IMAP4, folder: str) -> Counter[Content]:
    """``folder`` (wire name) read read-only with ``BODY.PEEK[]``: the multiset of
    (sha256 of the bytes, flags without \\Recent, INTERNALDATE epoch)."""
    typ, data = conn.select(_quote(folder), readonly=True)
    assert typ == "OK", data
    if int(data[0] or b"0") == 0:
        return Counter()
    typ, items = conn.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
    assert typ == "OK", items
    out: Counter[Content] = Counter()
    for item in items:
        if not isinstance(item, tuple):
            continue  # the b")" closing each message
        head, body = item
        flags_m, date_m = _FLAGS.search(head), _DATE.search(head)
        assert flags_m is not None and date_m is not None, head
        flags = frozenset(flags_m.group(1).decode().split()) - {"\\Recent"}
        when = dt.datetime.strptime(date_m.group(1).decode(), "%d-%b-%Y %H:%M:%S %z")
        out[(hashlib.sha256(body).hexdigest(), flags, int(when.timestamp()))] += 1
    return out


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def expected(messages: Iterable[LoadedMessage]) -> Counter[Content]:
    """What ``messages`` must look like at the destination: same bytes and INTERNALDATE,
    flags without \\Recent and \\Deleted."""
    return Counter(
        (m.sha256, m.flags - NOT_COPIED, int(m.internaldate.timestamp())) for m in messages
    )


def dest_contents(snapshot: MailboxSnapshot) -> dict[str, Counter[Content]]:
    """The snapshot's folders below ``BASE`` (decoded names relative to it) with their contents."""
    return {
        name.removeprefix(BASE + "."): state.contents()
        for name, state in snapshot.folders.items()
        if name.startswith(BASE + ".")
    }


def dest_snapshot(server: DovecotServer, user: str) -> dict[str, Counter[Content]]:
    return dest_contents(snapshot_mailbox(server, user))


def all_hashes(contents: dict[str, Counter[Content]]) -> Counter[str]:
    return Counter(
        sha for c in contents.values() for (sha, _f, _d), n in c.items() for _ in range(n)
    )


def counts(result: RequestResult) -> dict[str, tuple[int, int, int, int]]:
    """Per source folder: (in_range, copied, already_present, failed)."""
    return {f.source: (f.in_range, f.copied, f.already_present, f.failed) for f in result.folders}


def expected_tree(
    folders: dict[str, tuple[LoadedMessage, ...]],
    mapping: dict[str, str],
    parents: Iterable[str] = (),
) -> dict[str, Counter[Content]]:
    """The destination below ``BASE`` (decoded names relative to it) that copying ``folders``
    must give: each source folder in ``mapping`` at its mapped name, ``parents`` empty."""
    tree: dict[str, Counter[Content]] = {p: Counter() for p in parents}
    for source, dest in mapping.items():
        tree[dest] = expected(folders[source])
    return tree


def corpus_tree(manifest: Manifest) -> dict[str, Counter[Content]]:
    """``expected_tree`` for the Exchange corpus (only its mail folders; its \\Noselect
    ``INBOX/Projects`` arrives as an empty parent)."""
    return expected_tree(
        manifest.folders,
        {source: decoded for source, (decoded, _wire) in CORPUS_DEST.items()},
        parents=["Inbox.Projects"],
    )


# -- a copy in a fresh process (peak memory) ---------------------------------------------------


def subprocess_copy() -> None:
    """Entry point of a child process: copy one request, write the outcome and the process's
    peak RSS as JSON. Reads from stdin ``source``/``dest`` as ``[user, host, port]``,
    ``secrets`` (their passwords), ``ca_file``, ``state_dir`` and ``out`` (the JSON to write).
    Run as ``python -c "from tests.copyhelp import subprocess_copy; subprocess_copy()"`` so that
    the peak belongs to this copy alone, not to whatever a test process did before."""
    params = json.load(sys.stdin)
    (s_user, s_host, s_port), (d_user, d_host, d_port) = params["source"], params["dest"]
    ca = Path(params["ca_file"])
    config = make_config(
        {
            s_host: HostConfig(ca_file=ca, tls="implicit"),
            d_host: HostConfig(ca_file=ca, tls="implicit"),
        },
        dest_port=d_port,
    )
    request = make_request(
        Login(s_user, params["secrets"]["source"], s_host, s_port),
        Login(d_user, params["secrets"]["dest"], d_host),
    )
    run = CopyRun.create(Path(params["state_dir"]), request, config)
    run.budget = ByteBudget(config.daemon.byte_budget_mb * 1024 * 1024)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = asyncio.run(run.run())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    Path(params["out"]).write_text(
        json.dumps(
            {
                "status": result.status.value,
                "error": result.error,
                "copied": sum(f.copied for f in result.folders),
                "peak_rss": peak,
                "baseline_rss": baseline,
            }
        )
    )
