"""The benchmark's world: two private Dovecot servers, the loaded corpora, the delaying proxies.

Owns: starting and removing the servers (``testkit``: Exchange-like source, Vaultastic-
like destination, throwaway CA), loading the one big mailbox and the many small ones (each
checked once with doveadm against its corpus, which also builds Dovecot's index and warms the
page cache so that the first measured run is not penalised), fresh destination users, and the
25 ms proxies. Must not: run or measure a copier.

The destination stores mail as sdbox by default, not as the test servers' maildir: see
``DEST_STORAGE`` for why (``--dest-storage maildir`` measures with the test layout).

Both sides go through their own delaying proxy in the latency scenario (``FaultProxy.latency``:
every chunk is delayed by 25 ms each way and nothing else is limited), so every IMAP connection
sees a 50 ms round trip. The proxies listen on 127.0.0.2 (source) and 127.0.0.5 (destination):
names the test certificate covers, distinct from the direct ones so that per-host settings and
limits never mix the two up.
"""

from __future__ import annotations

import compileall
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from bench.bench_corpus import CorpusSpec, Expected, load_mailbox
from bench.bench_verify import verify_source
from testkit.dovecot import DovecotServer
from testkit.dovecot_conf import ServerKind
from testkit.proxy import FaultProxy
from testkit.tlsca import make_tls_ca

SOURCE_PASSWORD = "bench-source-pw"
DEST_PASSWORD = "bench-dest-pw"
# The destination's mail storage. Dovecot's maildir re-reads the folder's whole dovecot-uidlist
# on every APPEND (measured with strace: 250 KB of pread per APPEND at 5,000 messages), so one
# APPEND costs 2 ms into an empty folder and 6 ms into one of 7,000: in a 20,000-message run the
# server, not the copier, would set the pace of both copiers and hide their difference. sdbox
# (one file per message, like maildir, plus an index) appends in ~0.5 ms at any folder size.
DEST_STORAGE = {"sdbox": "mail_location = sdbox:~/sdbox\n", "maildir": ""}
LATENCY = 0.025  # seconds added each way by the proxies
# (source side, destination side) of the proxies, per latency: one pair per latency, so that
# per-host settings and limits of the daemon never mix two scenarios up.
PROXY_HOSTS = {0.025: ("127.0.0.2", "127.0.0.5"), 0.050: ("127.0.0.3", "127.0.0.6")}
SMALL_MESSAGES = 3_000  # the typical mailbox of issue 14: ~145 MB in 14 folders


def precompile() -> None:
    """Byte-compile the daemon and the benchmark (the reference copier) before anything is
    measured, as installing a wheel does. Without it every measured start of an editable
    install under ``PYTHONDONTWRITEBYTECODE=1`` (set on this project's machines) compiled
    ~80 modules again: ~0.1 s of CPU per daemon run that no installed daemon spends."""
    root = Path(__file__).resolve().parent.parent
    for package in ("legacyflo_daemon", "bench"):
        compileall.compile_dir(root / package, quiet=1)


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big the corpora are. ``scale`` 1 is the issue's size: one mailbox of 20,000 messages
    (~1 GB), 50 mailboxes of 400."""

    messages: int
    mailboxes: int
    per_mailbox: int
    small: int = SMALL_MESSAGES  # messages of the small mailbox (the WAN scenarios of issue 14)

    @classmethod
    def from_scale(cls, scale: float, mailboxes: int | None = None) -> Sizes:
        return cls(
            messages=max(10, round(20_000 * scale)),
            mailboxes=mailboxes if mailboxes is not None else max(2, round(50 * scale)),
            per_mailbox=400,
        )


@dataclass(frozen=True, slots=True)
class Mailbox:
    user: str
    expected: Expected


@dataclass(frozen=True, slots=True)
class Address:
    """Where a copier connects: a server's STARTTLS port, or a proxy in front of it."""

    host: str
    port: int


class BenchEnv:
    def __init__(self, sizes: Sizes, *, dest_storage: str = "sdbox", progress: bool = True) -> None:
        if dest_storage not in DEST_STORAGE:
            raise ValueError(f"dest_storage must be one of {sorted(DEST_STORAGE)}")
        self.sizes = sizes
        self.progress = progress
        self.root = Path(tempfile.mkdtemp(prefix="lf-bench-"))
        self.tls = make_tls_ca(self.root / "tls")
        self.source = DovecotServer(ServerKind.SOURCE, self.tls)
        self.dest = DovecotServer(ServerKind.DEST, self.tls, extra_conf=DEST_STORAGE[dest_storage])
        self.single: Mailbox | None = None
        self.small: Mailbox | None = None
        self.many: list[Mailbox] = []
        self._proxies: dict[float, tuple[FaultProxy, FaultProxy]] = {}

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, flush=True)

    def start(self, *, single: bool = True, many: bool = True, small: bool = False) -> Self:
        precompile()
        self.source.start()
        self.dest.start()
        if small:
            spec = CorpusSpec(self.sizes.small, 0, seed=2)  # no 5-25 MB attachment: ~145 MB
            self._say(f"loading the small mailbox: {spec.messages} messages, {spec.big} big")
            self.small = self._load(spec)
            self._say(f"  {self.small.expected.bytes / 1e6:.0f} MB")
        if single:
            spec = CorpusSpec.sized(self.sizes.messages, seed=1)
            self._say(f"loading the single mailbox: {spec.messages} messages, {spec.big} big")
            self.single = self._load(spec)
            self._say(f"  {self.single.expected.bytes / 1e6:.0f} MB")
        if many:
            self._say(f"loading {self.sizes.mailboxes} mailboxes of {self.sizes.per_mailbox}")
            for i in range(self.sizes.mailboxes):
                big = 1 if i % 10 == 0 else 0  # a few 5-25 MB attachments among them too
                self.many.append(self._load(CorpusSpec(self.sizes.per_mailbox, big, 100 + i)))
            total = sum(m.expected.bytes for m in self.many)
            self._say(f"  {total / 1e6:.0f} MB")
        return self

    def _load(self, spec: CorpusSpec) -> Mailbox:
        user = self.source.new_user(SOURCE_PASSWORD, "src")
        expected = load_mailbox(self.source, user, spec)
        problems = verify_source(self.source, user, expected)
        if problems:
            raise RuntimeError(f"corpus of {user} not loaded as planned: {problems[:5]}")
        return Mailbox(user, expected)

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_file

    def addresses(self, latency: float = 0.0) -> tuple[Address, Address]:
        """(source, destination) for a copier: the servers themselves (``latency`` 0), or
        proxies adding ``latency`` seconds each way (one of ``PROXY_HOSTS``), started on first
        use."""
        if not latency:
            return (
                Address(self.source.host, self.source.port_plain),
                Address(self.dest.host, self.dest.port_plain),
            )
        if latency not in self._proxies:
            pair = []
            hosts = PROXY_HOSTS[latency]
            for server, host in zip((self.source, self.dest), hosts, strict=True):
                proxy = FaultProxy(server.host, server.port_plain, listen_host=host)
                proxy.latency = latency
                pair.append(proxy.start())
            self._proxies[latency] = (pair[0], pair[1])
        return tuple(Address(p.host, p.port) for p in self._proxies[latency])  # type: ignore[return-value]

    def new_dest_user(self) -> str:
        return self.dest.new_user(DEST_PASSWORD, "dst")

    def drop_dest_user(self, user: str) -> None:
        """Delete a verified destination mailbox (the disk would fill up over many runs)."""
        shutil.rmtree(self.dest.home(user), ignore_errors=True)

    def close(self) -> None:
        for pair in self._proxies.values():
            for proxy in pair:
                proxy.stop()
        for server in (self.source, self.dest):
            server.remove()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
