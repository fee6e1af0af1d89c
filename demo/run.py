"""``make demo``: a whole migration on this machine, in well under a minute.

Starts two private IMAP servers (an Exchange-like source with a small sample mailbox and an
archive-like destination) and an SMTP server, writes a daemon config, submits a request CSV in
the reference document's format, runs ``legacyflo-daemon run --once`` and shows what happened:
the log as it goes, ``status``, the result JSON, the destination's folder tree and the report
mail. Then it checks the outcome (source untouched, every message in range on the archive
byte for byte, report received, no password in any file) and exits non-zero if anything failed.

Everything lands in ``./demo-run/`` (``$LEGACYFLO_DEMO_DIR`` overrides it), wiped at start; the
servers always stop, also on Ctrl-C. Must not: work around a daemon failure: it reports the
command, its exit code and its log lines instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from demo import mailbox, show
from demo.checks import Checks, archive_problems, files_containing
from demo.env import DemoError, DemoServers, run_cli, stream_cli
from legacyflo_daemon.spool.directory import Spool
from testkit.maildir import load_messages
from testkit.snapshot import snapshot_mailbox

DIR_ENV = "LEGACYFLO_DEMO_DIR"
MARKER = ".legacyflo-demo"  # only a directory holding this file is ever wiped
DEST_ROOT = "INBOX.historical_data"
DAEMON_TIMEOUT = 45.0


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (as the user typed it)."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def prepare_workdir(workdir: Path) -> None:
    """Wipe and recreate ``workdir``; refuse a non-empty directory the demo did not make."""
    if workdir.exists():
        if not workdir.is_dir():
            raise DemoError(f"{workdir} exists and is not a directory")
        if any(workdir.iterdir()) and not (workdir / MARKER).exists():
            raise DemoError(f"{workdir} is not empty and was not made by the demo; not wiping it")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("made by `make demo`; wiped by the next run\n")


class Demo:
    def __init__(self, workdir: Path, env: DemoServers) -> None:
        self.workdir = workdir
        self.env = env
        self.accounts = mailbox.DemoAccounts()
        self.spool = workdir / "spool"
        self.config = workdir / "config.toml"
        self.checks = Checks()

    def cli(self, command: str, *args: str) -> list[str]:
        """``command`` with its options, then ``--config``, then the positional arguments."""
        options = [a for a in args if a.startswith("--")]
        rest = [a for a in args if not a.startswith("--")]
        return [command, *options, "--config", str(self.config), *rest]

    def run(self) -> None:
        source, dest = self.env.running
        a = self.accounts
        print(show.heading("1. Two local IMAP servers and an SMTP server"))
        source.add_user(a.source_user, a.source_password)
        dest.add_user(a.dest_user, a.dest_password)
        # Not port 993, so the daemon uses STARTTLS on both (docs/contract.md §3.5: only 993 is
        # implicit TLS).
        for label, server, user in (("source (Exchange-like)", source, a.source_user),
                                    ("destination (archive)", dest, a.dest_user)):  # fmt: skip
            print(f"  {label:<23} {server.host}:{server.port_plain}  STARTTLS, user {user}")
        print(f"  report mail (SMTP)      127.0.0.1:{self.env.smtp_port}")
        print(f"  throwaway CA            {shown(self.workdir / 'tls' / 'ca.pem')}")
        print('  passwords with " , % { } \\ é : ( ) * in them (never shown, never stored)')

        print(show.heading("2. The sample mailbox on the source"))
        print(
            f"  (the request will ask for mail received {a.since:%d %b %Y} - {a.before:%d %b %Y})"
        )
        for folder, specs in mailbox.sample_mailbox(a).items():
            load_messages(source, a.source_user, folder, specs)
            days = [s.internaldate.date() for s in specs]
            in_range = sum(1 for d in days if a.since <= d <= a.before)
            note = f"{in_range:>2} in range"
            if not mailbox.is_mail_folder(folder):
                note = "not mail: an EXCHANGEIMAP request skips it"
            years = f"{min(days).year}-{max(days).year}"
            print(f"  {folder:<18} {len(specs):>3} messages {years}, {note}")
        self.source_before = snapshot_mailbox(source, a.source_user)

        print(show.heading("3. The daemon's configuration"))
        Spool(self.spool).ensure()
        self.config.write_text(
            mailbox.config_toml(
                spool=self.spool,
                ca_file=self.workdir / "tls" / "ca.pem",
                dest_port=dest.port_plain,
                smtp_port=self.env.smtp_port,
                hosts=(source.host, dest.host),
            )
        )
        print(f"  written to {shown(self.config)}:")
        print(show.indent(self.config.read_text().splitlines()[2:], "    "))

        self.submit(source.port_plain, dest.host)
        self.run_daemon()
        self.show_results()
        self.verify()

    def submit(self, source_port: int, dest_host: str) -> None:
        print(show.heading("4. A request CSV, submitted to the spool"))
        csv_path = self.workdir / "request.csv"
        data = mailbox.request_csv(self.accounts, source_port, dest_host)
        fd = os.open(csv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it has passwords
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        print("  the reference document's format (passwords masked here):")
        print(show.indent(show.masked_csv(data, mailbox.PASSWORD_FIELDS).splitlines(), "    "))
        args = self.cli("submit", str(csv_path))
        print(f"\n  $ legacyflo-daemon {' '.join(self._display(args))}")
        result = run_cli(args)
        csv_path.unlink()  # it holds the passwords; the daemon keeps a redacted copy in done/
        print(show.indent((result.stdout + result.stderr).rstrip().splitlines(), "    "))
        if result.returncode != 0:
            raise DemoError(f"legacyflo-daemon submit exited {result.returncode}")
        print(f"  ({shown(csv_path)} deleted again: it holds the passwords)")

    def run_daemon(self) -> None:
        print(show.heading("5. The daemon at work"))
        args = self.cli("run", "--once")
        print(f"  $ legacyflo-daemon {' '.join(self._display(args))}\n")
        log_path = self.workdir / "daemon.log"
        start = time.monotonic()
        with log_path.open("w", encoding="utf-8") as log:

            def on_line(line: str) -> None:
                log.write(line + "\n")
                try:
                    event = json.loads(line)
                except ValueError:
                    print(f"  | {line}")  # not a log line (a traceback): show it as it is
                    return
                if not isinstance(event, dict):
                    return
                text = show.event_line(event)
                if text is not None:
                    print(show.indent(text.splitlines()))

            result = stream_cli(
                args, on_line, stderr_file=self.workdir / "daemon.stderr", timeout=DAEMON_TIMEOUT
            )
        took = time.monotonic() - start
        print(f"\n  daemon exited with code {result.returncode} after {took:.1f} s")
        if result.stderr.strip():
            print("  its stderr:")
            print(show.indent(result.stderr.rstrip().splitlines()[-30:], "  | "))
        what = f"legacyflo-daemon run --once exited {result.returncode}"
        if result.timed_out:
            what = f"legacyflo-daemon run --once was killed after {DAEMON_TIMEOUT:.0f} s"
        self.checks.add(result.returncode == 0 and not result.timed_out, what)

    def show_results(self) -> None:
        print(show.heading("6. What the daemon left behind"))
        args = self.cli("status")
        print(f"  $ legacyflo-daemon {' '.join(self._display(args))}")
        status = run_cli(args)
        print(show.indent((status.stdout + status.stderr).rstrip().splitlines(), "    "))

        results = sorted(p for p in (self.spool / "outbox").glob("*.json")
                         if not p.name.endswith(".summary.json"))  # fmt: skip
        doc: dict[str, Any] = {}
        if not results:
            print(f"\n  (no result file in {shown(self.spool / 'outbox')}/)")
        for path in results:
            print(f"\n  {shown(path)}:")
            doc = json.loads(path.read_text(encoding="utf-8"))
            print(show.indent(json.dumps(doc, indent=2, ensure_ascii=False).splitlines(), "    "))
        if self.checks.add(len(results) == 1, f"{len(results)} result file(s) in outbox/"):
            state = doc.get("status")
            self.checks.add(state == "succeeded", f"the request {state}")

        _source, dest = self.env.running
        self.dest_after = snapshot_mailbox(dest, self.accounts.dest_user)
        print(show.heading("7. The folder tree on the destination (messages per folder)"))
        counts: dict[str, int | None] = {
            n: len(f.messages) for n, f in self.dest_after.folders.items()
        }
        counts.update({name: None for name in self.dest_after.noselect})
        print(show.indent(show.folder_tree(counts, dest.separator)))

        print(show.heading("8. The report mails, as the SMTP server received them"))
        # The account's report, and the batch report of the CSV (one row here).
        mails = self.env.catcher.wait_for(2, timeout=4.0)
        if not mails:
            print("  (no mail received)")
        for n, mail in enumerate(mails, start=1):
            saved = self.workdir / "received" / f"report-{n}.eml"
            saved.parent.mkdir(exist_ok=True)
            saved.write_bytes(mail.data)
            print(f"  envelope: from {mail.mail_from} to {', '.join(mail.rcpt_tos)}"
                  f"  (saved as {shown(saved)})\n")  # fmt: skip
            print(show.indent(show.mail_lines(mail.data)))
        batch = [m for m in mails if b"\r\nX-Legacyflo-Batch: " in m.data]
        account = [m for m in mails if m not in batch]
        if self.checks.add(
            (len(account), len(batch)) == (1, 1),
            f"{len(account)} account report(s) and {len(batch)} batch report(s) received",
        ):
            listing = [n for n in show.attachment_names(account[0].data) if "listing" in n]
            self.checks.add(bool(listing), "the account's report has the listing attached")
            table = show.attachment_names(batch[0].data)
            self.checks.add(table == ["batch.csv"], "the batch report has batch.csv attached")

    def verify(self) -> None:
        a = self.accounts
        source, _dest = self.env.running
        after = snapshot_mailbox(source, a.source_user)
        self.checks.add(after == self.source_before, "the source mailbox is unchanged")
        total, wrong = archive_problems(self.source_before, self.dest_after, a, DEST_ROOT)
        self.checks.add(
            not wrong,
            f"the archive holds exactly the {total} messages in range, byte for byte, "
            "with their flags and dates, in the right folders"
            + (f" (MISMATCH in {', '.join(wrong)})" if wrong else ""),
        )
        leaked = files_containing(self.workdir, a.passwords)
        self.checks.add(
            not leaked,
            "no password in any file under the work dir"
            + (f" (FOUND in {', '.join(shown(p) for p in leaked)})" if leaked else ""),
        )

    def _display(self, args: list[str]) -> list[str]:
        return [shown(Path(a)) if a.startswith("/") else a for a in args]


def where_things_are(workdir: Path) -> list[str]:
    spool = workdir / "spool"
    lines = [f"config             {shown(workdir / 'config.toml')}"]
    for folder in ("done", "failed", "outbox"):
        for path in sorted(p for p in (spool / folder).rglob("*") if p.is_file()):
            label = {"done": "request (redacted)", "failed": "failed request"}.get(folder, "")
            if not label:
                label = {".eml": "report mail", ".json": "result"}.get(path.suffix, "file")
                label = "CSV summary" if path.name.endswith(".summary.json") else label
            lines.append(f"{label:<18} {shown(path)}")
    lines.append(f"daemon log         {shown(workdir / 'daemon.log')}")
    lines.append(f"mail as received   {shown(workdir / 'received')}/")
    return lines


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="replace", line_buffering=True)  # type: ignore[union-attr]
    workdir = Path(os.environ.get(DIR_ENV) or "demo-run").absolute()
    started = time.monotonic()
    print(f"legacyflo-daemon demo: a migration on this machine (work dir {shown(workdir)}/)")
    demo: Demo | None = None
    try:
        with _sigterm_as_interrupt():
            prepare_workdir(workdir)
            with DemoServers(workdir) as env:
                demo = Demo(workdir, env)
                demo.run()
            print("\n  servers stopped")
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped", file=sys.stderr)
        return 130
    except DemoError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    assert demo is not None  # set before anything that can return normally
    print(show.heading("Checks"))
    for ok, text in demo.checks.items:
        print(f"  [{'ok' if ok else 'FAILED'}] {text}")
    print(show.heading("Where everything is"))
    print(show.indent(where_things_are(workdir)))
    verdict = "everything worked" if demo.checks.ok else "SOMETHING DID NOT WORK (see above)"
    print(f"\nDemo finished in {time.monotonic() - started:.1f} s: {verdict}.")
    return 0 if demo.checks.ok else 1


if __name__ == "__main__":
    sys.exit(main())
