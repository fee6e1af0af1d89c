"""``check --connect``: try both logins of every good row before submitting (docs/contract.md §7.1).

One login attempt per account (never retried: a lockout policy counts failures), at most
``CONCURRENCY`` connections at once, each logged out at once. Reports one line per account;
nothing is read or written on the servers beyond the login itself, except with ``--sizes``
(the dry run, ``cli.dryrun``), which reads the source read-only on the same sessions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from legacyflo_daemon.cli import dryrun
from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.errors import ImapError
from legacyflo_daemon.imap.endpoint import Bearer, Impersonation, dest_endpoint, source_endpoint
from legacyflo_daemon.imap.session import Endpoint, Session, connect
from legacyflo_daemon.model import Request

CONCURRENCY = 4


@dataclass(frozen=True, slots=True)
class LoginVerdict:
    row: int
    side: str  # "source" or "destination"
    account: str  # user@domain on host:port
    error: str | None  # None: logged in


async def _open(target: Endpoint | str) -> Session | str:
    """A logged-in session, or why not (one attempt)."""
    if isinstance(target, str):  # the endpoint could not even be built
        return target
    try:
        return await connect(target)
    except ImapError as exc:
        return str(exc)


def _targets(req: Request, cfg: Config) -> list[tuple[str, str, Endpoint | str]]:
    """(side, account shown, endpoint or why there is none) for the source, then the dest."""
    out: list[tuple[str, str, Endpoint | str]] = []
    for side, account, make in (
        ("source", req.source, source_endpoint),
        ("destination", req.dest, dest_endpoint),
    ):
        try:
            ep = make(req, cfg)
        except ImapError as exc:  # e.g. an unusable login_format
            out.append((side, f"{account.address} on {account.server}", str(exc)))
            continue
        out.append((side, f"{account.address} on {ep.host}:{ep.port}{_how(ep)}", ep))
    return out


def _how(ep: Endpoint) -> str:
    """How the login authenticates, when not with the row's password."""
    if isinstance(ep.auth, Bearer):
        return f" with an OAuth 2.0 token of application {ep.auth.provider.app.client_id}"
    if isinstance(ep.auth, Impersonation):
        how = "SASL PLAIN authzid" if ep.auth.sasl else f"login {ep.user}"
        return f" as administrator {ep.auth.admin} ({how})"
    return ""


async def _row(
    req: Request, cfg: Config, gate: asyncio.Semaphore, sizes: bool
) -> tuple[list[LoginVerdict], dryrun.Survey | None]:
    """Both logins of ``req`` at once; with ``sizes`` and both logged in, its survey on those
    very sessions (so each account is logged in to once); both logged out at the end."""
    targets = _targets(req, cfg)
    found: dryrun.Survey | None = None
    async with gate:
        opened = await asyncio.gather(*(_open(target) for *_, target in targets))
        try:
            src, dst = opened
            if sizes and isinstance(src, Session) and isinstance(dst, Session):
                found = await dryrun.survey(req, cfg, src, dst)
        finally:
            await asyncio.gather(*(s.logout() for s in opened if isinstance(s, Session)))
    verdicts = [
        LoginVerdict(req.row, side, name, None if isinstance(got, Session) else got)
        for (side, name, _), got in zip(targets, opened, strict=True)
    ]
    return verdicts, found


async def check_requests(
    requests: Sequence[Request], cfg: Config, *, sizes: bool = False
) -> tuple[list[LoginVerdict], list[dryrun.Survey]]:
    """Both logins of each request, in row order (source first); with ``sizes``, the dry-run
    survey of each request whose two logins succeeded, in row order. At most ``CONCURRENCY``
    connections at once (two per request)."""
    gate = asyncio.Semaphore(max(1, CONCURRENCY // 2))
    rows = await asyncio.gather(*(_row(req, cfg, gate, sizes) for req in requests))
    verdicts = [v for row_verdicts, _ in rows for v in row_verdicts]
    return verdicts, [found for _, found in rows if found is not None]


async def check_logins(requests: Sequence[Request], cfg: Config) -> list[LoginVerdict]:
    """Both logins of each request, in row order (source first)."""
    verdicts, _ = await check_requests(requests, cfg)
    return verdicts


def render(verdicts: Sequence[LoginVerdict]) -> str:
    lines = ["", "Logins:"]
    for v in verdicts:
        status = "OK" if v.error is None else f"FAILED: {v.error}"
        lines.append(f"  row {v.row} {v.side:<11} {v.account}: {status}")
    bad = sum(v.error is not None for v in verdicts)
    lines.append(f"{len(verdicts)} login(s): {len(verdicts) - bad} OK, {bad} FAILED")
    return "\n".join(lines) + "\n"
