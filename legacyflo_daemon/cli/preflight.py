"""``check --connect``: try both logins of every good row before submitting (docs/contract.md §7.1).

One login attempt per account (never retried: a lockout policy counts failures), at most
``CONCURRENCY`` at once, each logged out at once. Reports one line per account; nothing is
read or written on the servers beyond the login itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.errors import ImapError
from legacyflo_daemon.imap.endpoint import dest_endpoint, source_endpoint
from legacyflo_daemon.imap.session import Endpoint, connect
from legacyflo_daemon.model import Request

CONCURRENCY = 4


@dataclass(frozen=True, slots=True)
class LoginVerdict:
    row: int
    side: str  # "source" or "destination"
    account: str  # user@domain on host:port
    error: str | None  # None: logged in


async def _try(target: Endpoint | str, gate: asyncio.Semaphore) -> str | None:
    if isinstance(target, str):  # the endpoint could not even be built
        return target
    async with gate:
        try:
            session = await connect(target)
        except ImapError as exc:
            return str(exc)
        await session.logout()
        return None


async def check_logins(requests: Sequence[Request], cfg: Config) -> list[LoginVerdict]:
    """Both logins of each request, in row order (source first)."""
    gate = asyncio.Semaphore(CONCURRENCY)
    jobs: list[tuple[int, str, str, Endpoint | str]] = []
    for req in requests:
        for side, account, make in (
            ("source", req.source, source_endpoint),
            ("destination", req.dest, dest_endpoint),
        ):
            try:
                ep = make(req, cfg)
            except ImapError as exc:  # e.g. an unusable login_format
                jobs.append((req.row, side, f"{account.address} on {account.server}", str(exc)))
                continue
            jobs.append((req.row, side, f"{account.address} on {ep.host}:{ep.port}", ep))
    outcomes = await asyncio.gather(*(_try(target, gate) for *_, target in jobs))
    return [
        LoginVerdict(row, side, name, err)
        for (row, side, name, _), err in zip(jobs, outcomes, strict=True)
    ]


def render(verdicts: Sequence[LoginVerdict]) -> str:
    lines = ["", "Logins:"]
    for v in verdicts:
        status = "OK" if v.error is None else f"FAILED: {v.error}"
        lines.append(f"  row {v.row} {v.side:<11} {v.account}: {status}")
    bad = sum(v.error is not None for v in verdicts)
    lines.append(f"{len(verdicts)} login(s): {len(verdicts) - bad} OK, {bad} FAILED")
    return "\n".join(lines) + "\n"
