"""The ``legacyflo-daemon`` command line: ``run``, ``check``, ``submit``, ``status``,
``cancel``, ``retry``.

Owns: argument parsing, exit codes, and the human output of ``check``/``submit``.
Exit codes: 0 all good; 1 a CSV has bad rows; 2 the command could not do its job (bad config,
unreadable file, a CSV rejected as a whole, no spool) — always one line on stderr, never a
traceback. Argument errors are argparse's (exit 2).
Must not: hold daemon logic. ``run`` and ``status`` hand over to ``daemon.app`` and
``cli.status``, imported only when used (``check`` starts fast and needs neither).
``example-config`` and ``example-unit`` print the files a production install starts from
(``cli.examples``); they need no config, so none is loaded for them.

``submit`` drops the file (``cli.drop``: readable by the daemon, or refused) even when some
rows are bad (the daemon rejects those rows and reports
each to its requester, exactly as for a file copied into ``incoming/`` by hand); it refuses, and
writes nothing, only a file the daemon would reject as a whole or one without any request row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from legacyflo_daemon import __version__
from legacyflo_daemon.cli import cafiles, describe, drop, examples
from legacyflo_daemon.config.load import load_config
from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.errors import CsvFileError, LegacyfloError, StateUnusable
from legacyflo_daemon.model import DateRange, ParseResult, Request
from legacyflo_daemon.request import csvfile, dates
from legacyflo_daemon.runtime import files
from legacyflo_daemon.spool.directory import Spool, ends_complete

PROG = "legacyflo-daemon"
CONFIG_ENV = "LEGACYFLO_CONFIG"
OK, BAD_ROWS, FAILED = 0, 1, 2
STOPPED_ON_FAILURE = 1  # run: the daemon stopped because it cannot go on (its state store)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_EN_DASH = "\u2013"


class _Fail(Exception):
    """A command cannot do its job: print the message as one line, exit 2."""


# -- check / submit output (pure) -------------------------------------------------------------


def date_span(r: DateRange) -> str:
    """``25 Sep 2017 - 24 Sep 2018`` (en dash; inclusive days), ``from …``, ``up to …``."""
    if r.since is not None and r.before is not None:
        return f"{dates.day_words(r.since)} {_EN_DASH} {dates.day_words(r.before)}"
    if r.since is not None:
        return f"from {dates.day_words(r.since)}"
    if r.before is not None:
        return f"up to {dates.day_words(r.before)}"
    return "any date"


def describe_request(req: Request) -> str:
    """One line: ``john@baya.com → john@dest.example folder Data2018, 25 Sep 2017 - …``."""
    text = (
        f"{req.source.address} → {req.dest.address} folder {req.dest_folder}, "
        f"{date_span(req.dates)}"
    )
    return _CONTROL.sub("?", text)


def render_check(result: ParseResult) -> str:
    """The per-row verdicts as an aligned table, then warnings and a count line."""
    rows: list[tuple[int, str, str, str]] = [
        (r.row, "OK", "", describe_request(r)) for r in result.requests
    ]
    rows += [(e.row, "BAD", e.field or "(row)", e.message) for e in result.errors]
    rows.sort(key=lambda row: (row[0], row[1] == "BAD"))
    table = [("ROW", "VERDICT", "FIELD", "DETAILS")]
    table += [(str(n), verdict, field, _CONTROL.sub(" ", text)) for n, verdict, field, text in rows]
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    lines = [
        f"{n:>{widths[0]}}  {v:<{widths[1]}}  {f:<{widths[2]}}  {d}".rstrip()
        for n, v, f, d in table
    ]
    if result.warnings:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in result.warnings]
    good, bad = len(result.requests), len(result.errors)
    lines += ["", f"{good + bad} request row(s): {good} OK, {bad} BAD"]
    return "\n".join(lines) + "\n"


def drop_name(source_name: str) -> str:
    """The name a submitted file gets in ``incoming/``: ``<stem>.csv``, never a temp name.

    A long name is shortened (``files.short_name``) so that every name the daemon derives from
    it fits; any name is accepted."""
    stem = Path(source_name).name
    if stem.lower().endswith(".csv"):
        stem = stem[:-4]
    stem = _CONTROL.sub("_", stem).lstrip(".")  # a dot-name would be ignored by the daemon
    return files.short_name(f"{stem or 'request'}.csv", files.UNIQUE_NAME_BYTES)


# -- commands ---------------------------------------------------------------------------------


# What to do about a CSV that cannot be read, by errno (read_regular's refusals included).
_READ_HINTS = {
    errno.ENOENT: "check the file name",
    errno.EACCES: "you may not read it: ls -l shows its owner and mode",
    errno.EISDIR: "give a file, not a directory",
    errno.EINVAL: "give a regular file (not a directory, FIFO or device)",
    errno.ELOOP: "a symbolic link is refused: give the file it points to",
}


def _read_csv(path: str) -> tuple[bytes, str]:
    """The bytes of ``path`` (``-``: stdin) and the name to show in messages."""
    if path == "-":
        return sys.stdin.buffer.read(), "<stdin>"
    try:
        return files.read_regular(Path(path)), path
    except OSError as exc:
        hint = _READ_HINTS.get(exc.errno or 0, "check the path and its permissions")
        raise _Fail(f"{path}: cannot read: {exc.strerror or exc}; {hint}") from None


def _parse(data: bytes, name: str, config: Config) -> ParseResult:
    """``data`` parsed with the config's ``[csv]`` limits, as the daemon will parse it."""
    try:
        return csvfile.parse(data, csvfile.Limits.of(config.csv, config.passwordless()))
    except CsvFileError as exc:
        raise _Fail(f"{name}: rejected as a whole: {exc}") from None


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    data, name = _read_csv(args.file)
    result = _parse(data, name, config)
    try:
        cafiles.check_ca_files(result.requests, config)
    except cafiles.CaFileError as exc:
        raise _Fail(str(exc)) from None
    sys.stdout.write(render_check(result))
    sys.stdout.write(describe.render_details(result.requests, config))
    failed = False
    if (args.connect or args.sizes) and result.requests:
        from legacyflo_daemon.cli import dryrun, preflight

        verdicts, surveys = asyncio.run(
            preflight.check_requests(result.requests, config, sizes=args.sizes)
        )
        sys.stdout.write(preflight.render(verdicts))
        failed = any(v.error is not None for v in verdicts)
        if args.sizes:
            sys.stdout.write(dryrun.render(surveys, args.rate, config.daemon.max_jobs))
            failed = failed or any(
                s.error is not None or any(f.error is not None for f in s.folders) for s in surveys
            )
    return BAD_ROWS if result.errors or failed else OK


def cmd_submit(args: argparse.Namespace, config: Config) -> int:
    data, name = _read_csv(args.file)
    result = _parse(data, name, config)
    sys.stdout.write(render_check(result))
    if not result.requests and not result.errors:
        raise _Fail(f"{name}: nothing submitted: the file has no request rows")
    spool = Spool(config.daemon.spool)
    try:
        is_dir = spool.incoming.is_dir()
    except OSError as exc:  # EACCES on the way: pathlib's is_dir() swallows only "missing"
        raise _Fail(
            f"{spool.incoming}: cannot enter: {exc.strerror or exc}; "
            f"{drop.cannot_write_hint(spool.incoming, exc)}"
        ) from None
    if not is_dir:
        raise _Fail(
            f"{spool.incoming}: no such directory: the spool is created by the daemon's first "
            "start (legacyflo-daemon run), or create it; is this the daemon's spool? (give "
            "the daemon's config with --config)"
        )
    try:
        name_in_spool = drop_name("request.csv" if args.file == "-" else args.file)
        if not ends_complete(data):
            # The daemon takes a drop only once its last line looks finished (docs/contract.md
            # §2.2), and this one is whole: a line break at its end changes no row.
            data += b"\r\n"
        target = drop.drop(spool.incoming, name_in_spool, data)
    except drop.DropRefused as exc:
        raise _Fail(str(exc)) from None
    except OSError as exc:
        raise _Fail(
            f"{spool.incoming}: cannot write: {exc.strerror or exc}; "
            f"{drop.cannot_write_hint(spool.incoming, exc)}"
        ) from None
    print(f"Submitted as {target}")
    if result.errors:
        print(
            f"{PROG}: {len(result.errors)} bad row(s) will be rejected and reported by the daemon",
            file=sys.stderr,
        )
        return BAD_ROWS
    return OK


def cmd_example_config(args: argparse.Namespace, config: Config | None) -> int:
    sys.stdout.write(examples.example_config(production=args.production))
    return OK


def cmd_example_unit(args: argparse.Namespace, config: Config | None) -> int:
    sys.stdout.write(examples.example_unit(args.kind))
    return OK


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from legacyflo_daemon.runtime.log import configure_logging

    try:
        configure_logging(config.log)
    except OSError as exc:
        raise _Fail(f"{config.log.file}: cannot open the log file: {exc.strerror}") from None
    from legacyflo_daemon.daemon import app

    try:
        return app.main(config, once=args.once)
    except StateUnusable as exc:  # damaged, disk full: the operator must act; systemd retries
        print(f"{PROG}: {exc}", file=sys.stderr)
        return STOPPED_ON_FAILURE


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from legacyflo_daemon.cli import status

    return status.main(
        config,
        watch=args.watch,
        as_json=args.json,
        request_id=args.request_id,
        csv=args.csv,
        state=args.state,
    )


# -- parser -----------------------------------------------------------------------------------

# cli.dryrun.ASSUMED_MB_PER_SECOND; repeated so that `check` without --sizes does not import the
# IMAP code (a test checks they are equal).
DEFAULT_RATE = 5.0


def _positive_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of MB/s, got {text!r}")
    return value


def cmd_cancel(args: argparse.Namespace, config: Config) -> int:
    from legacyflo_daemon.cli import control

    return control.main_cancel(config, args.target)


def cmd_retry(args: argparse.Namespace, config: Config) -> int:
    from legacyflo_daemon.cli import control

    stem = drop_name(args.file).removesuffix(".csv")
    return control.main_retry(config, args.file, f"{stem}-retry.csv")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"TOML configuration file (default: ${CONFIG_ENV} if set, else built-in defaults "
        "with the spool in ./spool); see config.example.toml",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Migrate mail from Exchange or any IMAP server into an IMAP archive, "
        "driven by request CSV files dropped into a spool directory.",
        epilog="Exit codes: 0 success, 1 a CSV has bad rows, 2 error (one line on stderr).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the daemon",
        description="Run the daemon in the foreground: recover unfinished work, then copy "
        "every request CSV dropped into <spool>/incoming/. Stops cleanly on SIGTERM.",
    )
    run.add_argument(
        "--once", action="store_true", help="process what is there now, finish it, then exit"
    )
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser(
        "check",
        parents=[common],
        help="validate a request CSV offline",
        description="Validate a request CSV: one verdict per row (OK with a summary, or BAD "
        "with the field and the fix), the warnings, then every value the daemon will use for "
        "each good row (servers, ports, TLS, folder, dates; passwords masked). Offline unless "
        "--connect or --sizes is given.",
        epilog="Exit codes: 0 every row is OK, 1 some row is BAD (or, with --connect, a login "
        "failed; with --sizes, something could not be read), 2 the file cannot be used.",
    )
    check.add_argument("file", metavar="FILE.csv", help="the CSV file ('-' reads stdin)")
    check.add_argument(
        "--connect",
        action="store_true",
        help="also log in once to every source and destination account (pre-flight); "
        "exit 1 if a login fails",
    )
    check.add_argument(
        "--sizes",
        action="store_true",
        help="the dry run (implies --connect): per account, the source folders that would be "
        "copied with their messages and bytes in the date range, the folders skipped and why, "
        "and an estimated duration; reads the source read-only (EXAMINE) and writes nothing; "
        "exit 1 if something could not be read",
    )
    check.add_argument(
        "--rate",
        metavar="MB/S",
        type=_positive_rate,
        default=DEFAULT_RATE,
        help=f"copy rate per request assumed by --sizes for the estimate (default {DEFAULT_RATE:g}"
        "; MB = 10^6 bytes)",
    )
    check.set_defaults(handler=cmd_check)

    submit = sub.add_parser(
        "submit",
        parents=[common],
        help="check a request CSV and drop it into the spool",
        description="Check a request CSV like 'check', then drop it atomically into "
        "<spool>/incoming/ as <name>.csv (made unique if the name is taken), readable by the "
        "daemon: mode 0600 for the daemon's user (root hands it over), 0640 in the spool's "
        "group for another member of that group; refused when the daemon could not read it. "
        "A file with some "
        "bad rows is submitted (those rows are rejected and reported by the daemon); a file "
        "rejected as a whole is not.",
        epilog="Exit codes: 0 submitted, 1 submitted but some rows are BAD, 2 not submitted.",
    )
    submit.add_argument("file", metavar="FILE.csv", help="the CSV file ('-' reads stdin)")
    submit.set_defaults(handler=cmd_submit)

    example = sub.add_parser(
        "example-config",
        parents=[common],
        help="print the example configuration",
        description="Print config.example.toml (every key with its default and meaning). "
        "With --production the spool is /var/spool/legacyflo, the directory the systemd files "
        "set up: the default 'spool' is relative to the config's directory, which /etc is not "
        "a place for.",
        epilog="e.g. legacyflo-daemon example-config --production > /etc/legacyflo/config.toml",
    )
    example.add_argument(
        "--production", action="store_true", help="with the production spool /var/spool/legacyflo"
    )
    example.set_defaults(handler=cmd_example_config, needs_config=False)

    unit = sub.add_parser(
        "example-unit",
        parents=[common],
        help="print a systemd file (service, sysusers, tmpfiles)",
        description="Print one of the systemd files shipped with the program:\n"
        "  service   the unit (Type=notify, watchdog, sandbox, user legacyflo)\n"
        "  sysusers  the sysusers.d file: system user and group legacyflo\n"
        "  tmpfiles  the tmpfiles.d file: the spool and /etc/legacyflo",
        epilog="Install as:\n"
        + "\n".join(
            f"  legacyflo-daemon example-unit {kind} > {target}"
            for kind, target in examples.UNIT_TARGETS.items()
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    unit.add_argument(
        "kind",
        nargs="?",
        default="service",
        choices=sorted(examples.UNIT_TARGETS),
        help="which file (default: service)",
    )
    unit.set_defaults(handler=cmd_example_unit, needs_config=False)

    status = sub.add_parser(
        "status",
        parents=[common],
        help="show whether the daemon runs and what each request is doing",
        description="Show whether the daemon runs and each request's state, phase and "
        "progress (messages, bytes, rate, ETA), failures first; with a request id, that "
        "request's folders and failures.",
    )
    status.add_argument("request_id", nargs="?", help="show this request in detail")
    status.add_argument("--json", action="store_true",
                        help="print JSON (legacyflo_daemon/status.schema.json)")  # fmt: skip
    status.add_argument("--csv", metavar="NAME", help="only the requests of this CSV file")
    status.add_argument(
        "--state",
        choices=("queued", "running", "interrupted", "succeeded", "partial", "failed",
                 "rejected", "cancelled"),
        help="only requests in this state",
    )  # fmt: skip
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    status.set_defaults(handler=cmd_status)
    cancel = sub.add_parser(
        "cancel",
        parents=[common],
        help="stop a request, or every unfinished request of a CSV",
        description="Stop a request (by id) or every unfinished request of a CSV (by the name "
        "it was dropped as). A running request stops at its next batch boundary and ends "
        "'cancelled' with what it copied; a queued one ends 'cancelled' at once.",
    )
    cancel.add_argument("target", help="a request id, or a CSV file name")
    cancel.set_defaults(handler=cmd_cancel)
    retry = sub.add_parser(
        "retry",
        parents=[common],
        help="run again only the rows of a CSV that did not succeed",
        description="Give the batch's CSV again (its passwords were erased from the state): "
        "the rows whose last request succeeded are left out, the others are dropped into "
        "incoming/ as <name>-retry.csv. Succeeded rows are neither copied nor mailed again.",
    )
    retry.add_argument("file", help="the CSV file as it was submitted")
    retry.set_defaults(handler=cmd_retry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``--help`` and usage errors included)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else FAILED
    _tolerate_unencodable_output()
    # Everything a command creates (the spool, the state store with its -wal/-shm, the log
    # file, a submitted drop) holds or may hold passwords: private whatever the caller's umask.
    old_umask = os.umask(0o077)
    try:
        config: Config | None = None
        if getattr(args, "needs_config", True):  # the example-* commands print files only
            config_path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or None
            config = load_config(Path(config_path) if config_path else None)
        code: int = args.handler(args, config)
        return code
    except (_Fail, LegacyfloError) as exc:  # ConfigError, StateError, SpoolError, ...
        print(f"{PROG}: {exc}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        os.umask(old_umask)  # main() is also called in-process (tests, embedding)


def _tolerate_unencodable_output() -> None:
    """Print '?' instead of failing where stdout cannot encode an arrow or a dash (ASCII locale)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="replace")


if __name__ == "__main__":
    sys.exit(main())
