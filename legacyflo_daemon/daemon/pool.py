"""Which queued request runs next: bounded concurrency, per-server and per-login caps, fairness.

Pure. The daemon asks ``Pool.pick`` whenever a slot frees or work arrives; the pool answers
with the requests that can start now without exceeding ``max_jobs`` requests at once,
``max_per_host`` requests against one server (or the host's own ``max_connections``), and the
per-login connection cap (Exchange allows 16 connections per login; several requests that log
in as the same admin all count against it). Each running request holds one connection to its
source and one to its destination, plus the extra pairs ``try_extend`` granted it (folders
copied side by side) while the caps left room; those go back as soon as its folders run out.

Several daemons sharing a state (a cluster): the caps hold for all of them together. The
scheduler hands the pool what the other nodes hold (``elsewhere``) and the allowances any node
learnt (``learn``) before each decision, under the cluster's admission lock; the pool counts
those connections as if they were its own, so one node's decision respects every cap.

Fairness: queued requests are taken round-robin across CSV files, FIFO within a file, so a
10,000-row CSV dropped first does not hold back a one-row CSV dropped after it. A request that
cannot start because its server is saturated does not block the ones behind it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from legacyflo_daemon.config.schema import DIRECTIONS, Config, HostConfig
from legacyflo_daemon.model import Request


@dataclass(frozen=True, slots=True)
class Slot:
    """What one running request occupies."""

    hosts: tuple[str, ...]  # lower-case server names (source, destination)
    logins: tuple[str, ...]  # "user@server", lower-case


def slot_for(req: Request) -> Slot:
    src, dst = req.source, req.dest
    return Slot(
        hosts=(src.server.lower(), dst.server.lower()),
        logins=(f"{src.userid}@{src.server}".lower(), f"{dst.userid}@{dst.server}".lower()),
    )


def fair_order(queued: Sequence[tuple[str, int]]) -> list[str]:
    """``queued`` is (request_id, csv_id) in FIFO order; returns ids round-robin across CSVs."""
    rank: Counter[int] = Counter()
    keyed = []
    for pos, (rid, csv_id) in enumerate(queued):
        keyed.append((rank[csv_id], pos, rid))
        rank[csv_id] += 1
    return [rid for _, _, rid in sorted(keyed)]


@dataclass(frozen=True, slots=True)
class Limits:
    max_jobs: int
    max_per_host: int
    max_per_login: int
    host_caps: dict[str, int] = field(default_factory=dict)  # per-host max_connections
    login_caps: dict[str, int] = field(default_factory=dict)  # per-host max_per_login

    @classmethod
    def from_config(cls, cfg: Config) -> Limits:
        """The limits of ``cfg``. A host's caps count every connection to that server, as a
        source and as a destination alike: when its ``source`` and ``dest`` sub-tables give
        different ``max_connections`` (or ``max_per_login``), the smaller one applies."""
        host_caps: dict[str, int] = {}
        login_caps: dict[str, int] = {}
        for name, host in cfg.hosts.items():
            if (cap := _smallest(host, "max_connections")) is not None:
                host_caps[name] = cap
            if (cap := _smallest(host, "max_per_login")) is not None:
                login_caps[name] = cap
        return cls(
            max_jobs=cfg.daemon.max_jobs,
            max_per_host=cfg.daemon.max_per_host,
            max_per_login=cfg.imap.max_per_login,
            host_caps=host_caps,
            login_caps=login_caps,
        )

    def host_cap(self, host: str) -> int:
        return self.host_caps.get(host, self.max_per_host)

    def login_cap(self, login: str) -> int:
        return self.login_caps.get(login.rpartition("@")[2], self.max_per_login)


@dataclass(frozen=True, slots=True)
class Lowered:
    """A connection allowance learnt from a refusal: ``key`` (host or login) now ``limit``."""

    key: str
    limit: int


def _smallest(host: HostConfig, key: str) -> int | None:
    """The smallest ``key`` (a cap) in effect for ``host`` in either direction; None if unset."""
    caps = [getattr(host.side(d), key) for d in DIRECTIONS]
    given = [cap for cap in caps if cap is not None]
    return min(given) if given else None


class Pool:
    """Bookkeeping of running requests. Single event loop; no I/O."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.running: dict[str, Slot] = {}
        self.extra: Counter[str] = Counter()  # extra connection pairs held per request
        # Allowances learnt from "too many connections" (ConnectionLimited), for the rest of
        # the run: a server's real limit may be below what the config says.
        self.learnt_hosts: dict[str, int] = {}
        self.learnt_logins: dict[str, int] = {}
        # Connections the other nodes of a cluster hold (hosts, logins), set by ``elsewhere``.
        self.others: tuple[Counter[str], Counter[str]] = (Counter(), Counter())

    def elsewhere(self, held: Iterable[tuple[Sequence[str], Sequence[str], int]]) -> None:
        """What the other nodes hold now: per request, its hosts, its logins and its pairs."""
        hosts: Counter[str] = Counter()
        logins: Counter[str] = Counter()
        for request_hosts, request_logins, pairs in held:
            for _ in range(max(1, pairs)):
                hosts.update(request_hosts)
                logins.update(request_logins)
        self.others = (hosts, logins)

    def learn(self, allowances: dict[str, int]) -> None:
        """Allowances learnt (by any node) from refusals: a key with "@" is a login, else a
        host; the lowest stands."""
        for key, limit in allowances.items():
            learnt = self.learnt_logins if "@" in key else self.learnt_hosts
            learnt[key] = min(limit, learnt.get(key, limit))

    def host_cap(self, host: str) -> int:
        return min(self.limits.host_cap(host), self.learnt_hosts.get(host, 1 << 30))

    def login_cap(self, login: str) -> int:
        return min(self.limits.login_cap(login), self.learnt_logins.get(login, 1 << 30))

    def limited(self, request_id: str, host: str) -> list[Lowered]:
        """``host`` refused a connection of ``request_id`` as one too many: from now on that
        host, and the request's login on it, are allowed the connections that were working
        (those in use minus the refused one; never below 1). Returns what was lowered."""
        slot = self.running.get(request_id)
        if slot is None:
            return []
        host = host.lower()
        hosts, logins = self._usage()
        lowered: list[Lowered] = []
        if host in slot.hosts:
            cap = max(1, min(self.host_cap(host), hosts[host] - 1))
            if cap < self.host_cap(host):
                self.learnt_hosts[host] = cap
                lowered.append(Lowered(host, cap))
        for login in {x for h, x in zip(slot.hosts, slot.logins, strict=True) if h == host}:
            cap = max(1, min(self.login_cap(login), logins[login] - 1))
            if cap < self.login_cap(login):
                self.learnt_logins[login] = cap
                lowered.append(Lowered(login, cap))
        return lowered

    def _usage(self, *, others: bool = True) -> tuple[Counter[str], Counter[str]]:
        """Connections per host and per login: this node's, plus the other nodes' (``others``)."""
        hosts: Counter[str] = Counter(self.others[0]) if others else Counter()
        logins: Counter[str] = Counter(self.others[1]) if others else Counter()
        for rid, slot in self.running.items():
            for _ in range(1 + self.extra[rid]):
                hosts.update(slot.hosts)
                logins.update(slot.logins)
        return hosts, logins

    def connections(self) -> dict[str, int]:
        """IMAP connections this node uses per server (each running request's pairs)."""
        return dict(self._usage(others=False)[0])

    def try_extend(self, request_id: str) -> bool:
        """Grant a running request one more connection pair if every cap still holds."""
        slot = self.running.get(request_id)
        if slot is None:
            return False
        hosts, logins = self._usage()
        need_h, need_l = Counter(slot.hosts), Counter(slot.logins)
        ok = all(hosts[h] + n <= self.host_cap(h) for h, n in need_h.items()) and all(
            logins[x] + n <= self.login_cap(x) for x, n in need_l.items()
        )
        if ok:
            self.extra[request_id] += 1
        return ok

    def shrink(self, request_id: str) -> None:
        """Return one extra pair of ``request_id``."""
        if self.extra[request_id] > 0:
            self.extra[request_id] -= 1

    def fits(self, slot: Slot, hosts: Counter[str], logins: Counter[str]) -> bool:
        """Whether ``slot`` fits beside the current usage. A request that alone needs more than
        a cap (source and destination on one server with a cap of 1) runs when that server is
        otherwise idle, rather than never."""
        need_h = Counter(slot.hosts)
        need_l = Counter(slot.logins)
        return all(
            hosts[h] == 0 or hosts[h] + n <= self.host_cap(h) for h, n in need_h.items()
        ) and all(logins[x] == 0 or logins[x] + n <= self.login_cap(x) for x, n in need_l.items())

    def pick(self, candidates: Iterable[tuple[str, Slot]]) -> list[str]:
        """The candidates (in the given order) that can start now; marks them running."""
        started: list[str] = []
        hosts, logins = self._usage()
        for rid, slot in candidates:
            if len(self.running) >= self.limits.max_jobs:
                break
            if rid in self.running or not self.fits(slot, hosts, logins):
                continue
            self.running[rid] = slot
            hosts.update(slot.hosts)
            logins.update(slot.logins)
            started.append(rid)
        return started

    def pairs(self, request_id: str) -> int:
        """Connection pairs ``request_id`` holds (0 when not running here)."""
        return 1 + self.extra[request_id] if request_id in self.running else 0

    def release(self, request_id: str) -> None:
        self.running.pop(request_id, None)
        self.extra.pop(request_id, None)
