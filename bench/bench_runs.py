"""One measured run of a copier over a set of mailboxes, verified: the benchmark's sample.

Owns: how each copier is started for a run (the reference as ``python -m bench.rawcopy`` with its
jobs on stdin; the daemon as ``legacyflo-daemon run --once --config <tmp config>`` after the
request CSV was submitted into its spool with ``legacyflo-daemon submit``), the daemon's config
and CSV, reading its result files, verifying every destination, and the ``Sample`` record.
Must not: decide which runs make a scenario or judge the figures (``bench_copy``/``bench_report``).

The daemon's config differs from the defaults only where the benchmark needs it: the spool in a
fresh directory, ``max_jobs = 8`` (the issue's value), ``stable_seconds = 0`` (the CSV is
complete before the daemon starts, so waiting for it to be "stable" would only add a second),
JSON logs (stdout, into a file), and the test CA / destination port for the two hosts. The
read-back scenarios' second daemon also has ``[imap] read_back = false``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_env import DEST_PASSWORD, SOURCE_PASSWORD, Address, BenchEnv, Mailbox
from bench.bench_measure import Measured, run_measured
from bench.bench_verify import verify_copy

REPO = Path(__file__).resolve().parent.parent
ROOT = "INBOX.historical_data"
DEST_FOLDER = "Bench"
MAX_JOBS = 8
COLUMNS = (
    "jobtype", "jobtitle", "destuserid", "destdomain", "destuserpasswd", "destServer",
    "destfolder", "sendreportid", "sourceuserid", "sourcedomainname", "sourceuserpassword",
    "sourceserver", "sourceserverport", "since", "before",
)  # fmt: skip


@dataclass
class Sample:
    scenario: str
    copier: str  # "reference", "daemon" or "daemon-rb-off" (the daemon with read_back = false)
    run: int
    wall: float = 0.0
    cpu: float = 0.0
    rss_mb: float = 0.0
    messages: int = 0  # in the source mailboxes (what must be in the destination)
    bytes: int = 0
    problems: list[str] = field(default_factory=list)  # empty: ran and verified exactly
    totals: dict[str, int] = field(default_factory=dict)  # daemon: summed result totals

    @property
    def ok(self) -> bool:
        return not self.problems

    def take(self, m: Measured) -> None:
        self.wall, self.cpu, self.rss_mb = m.wall, m.cpu, m.max_rss_mb


Pair = tuple[Mailbox, str]  # (source mailbox, destination user)


def _tail(path: Path, limit: int = 1500) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-limit:].strip()


def _timeout(pairs: list[Pair]) -> float:
    """Generous: 10 minutes plus 0.25 s per message and 1 s per MB (tolerates a copier doing
    4 messages/s); a hung copier must not hang the benchmark, a slow one must still finish."""
    messages = sum(m.expected.messages for m, _ in pairs)
    return 600.0 + messages / 4 + sum(m.expected.bytes for m, _ in pairs) / 1e6


def _verify(env: BenchEnv, sample: Sample, pairs: list[Pair]) -> None:
    for mailbox, user in pairs:
        try:
            problems = verify_copy(env.dest, user, mailbox.expected, ROOT, DEST_FOLDER)
        except (RuntimeError, ValueError, KeyError, OSError) as exc:  # doveadm failed
            problems = [f"cannot verify: {exc}"]
        sample.problems += [f"{user}: {problem}" for problem in problems]


def _count(sample: Sample, pairs: list[Pair]) -> None:
    sample.messages = sum(m.expected.messages for m, _ in pairs)
    sample.bytes = sum(m.expected.bytes for m, _ in pairs)


def run_reference(
    env: BenchEnv, sample: Sample, pairs: list[Pair], at: tuple[Address, Address], workdir: Path
) -> None:
    """The reference copies ``pairs`` one after another in one fresh process; then verify."""
    workdir.mkdir(parents=True)
    src, dst = at
    jobs = [
        {
            "source": {"host": src.host, "port": src.port, "user": mailbox.user,
                       "password": SOURCE_PASSWORD},
            "dest": {"host": dst.host, "port": dst.port, "user": user, "password": DEST_PASSWORD},
            "dest_root": ROOT,
            "dest_folder": DEST_FOLDER,
        }
        for mailbox, user in pairs
    ]  # fmt: skip
    spec = json.dumps({"ca_file": str(env.ca_file), "jobs": jobs}).encode()
    _count(sample, pairs)
    measured = run_measured(
        [sys.executable, "-m", "bench.rawcopy"],
        stdin=spec,
        stdout=workdir / "rawcopy.out",
        stderr=workdir / "rawcopy.err",
        timeout=_timeout(pairs),
        cwd=REPO,
    )
    sample.take(measured)
    if measured.returncode != 0:
        sample.problems.append(
            f"reference exited {measured.returncode}: {_tail(workdir / 'rawcopy.err')}"
        )
        return
    _verify(env, sample, pairs)


def daemon_command() -> list[str]:
    """The installed console script, not a shell shim in front of it (pyenv's would add its own
    processes to what is measured)."""
    beside = Path(sys.executable).parent / "legacyflo-daemon"
    found = str(beside) if beside.exists() else shutil.which("legacyflo-daemon")
    if found is None:
        raise RuntimeError("legacyflo-daemon is not installed (pip install -e .)")
    return [found]


def write_config(
    workdir: Path, env: BenchEnv, at: tuple[Address, Address], *, read_back: bool = True
) -> Path:
    """The daemon's config; ``read_back=False`` adds ``[imap] read_back = false`` (the read-back
    scenarios' second daemon), otherwise the daemon's default (on) is left alone."""
    src, dst = at
    ca = json.dumps(str(env.ca_file))  # a TOML basic string is JSON-compatible here
    text = f"""# written by bench/bench_runs.py
[daemon]
spool = "spool"
max_jobs = {MAX_JOBS}
stable_seconds = 0.0

[log]
level = "info"
format = "json"

[hosts."{src.host}"]
ca_file = {ca}

[hosts."{dst.host}"]
port = {dst.port}
ca_file = {ca}
"""
    if not read_back:
        text += "\n[imap]\nread_back = false\n"
    path = workdir / "config.toml"
    path.write_text(text)
    return path


def request_csv(pairs: list[Pair], at: tuple[Address, Address]) -> bytes:
    src, dst = at
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for mailbox, user in pairs:
        writer.writerow([
            "EXCHANGEIMAP", f"Benchmark {mailbox.user}", user, "bench.example", DEST_PASSWORD,
            dst.host, DEST_FOLDER, "", mailbox.user, "bench.example", SOURCE_PASSWORD,
            src.host, str(src.port), "", "",
        ])  # fmt: skip
    return out.getvalue().encode()


def prepare_daemon(
    workdir: Path, env: BenchEnv, at: tuple[Address, Address], *, read_back: bool = True
) -> Path:
    """A fresh daemon directory: config and an empty spool; returns the config path."""
    workdir.mkdir(parents=True)
    (workdir / "spool" / "incoming").mkdir(parents=True, mode=0o700)
    os.chmod(workdir / "spool", 0o700)
    return write_config(workdir, env, at, read_back=read_back)


def run_daemon(
    env: BenchEnv,
    sample: Sample,
    pairs: list[Pair],
    at: tuple[Address, Address],
    config: Path,
    *,
    delta: bool = False,
) -> None:
    """Submit one CSV with a row per pair into the daemon's spool, run the daemon once, verify.
    Called again with the same ``config`` and ``delta`` it is the delta pass (same spool and
    state): its results must then say that nothing was copied and everything already present."""
    workdir = config.parent
    name = f"{sample.scenario}-{sample.run}"
    csv_path = workdir / f"{name}.csv"
    csv_path.write_bytes(request_csv(pairs, at))
    cmd = daemon_command()
    submit = run_measured(
        [*cmd, "submit", "--config", str(config), str(csv_path)],
        stdout=workdir / f"{name}.submit.out",
        stderr=workdir / f"{name}.submit.err",
        timeout=120,
    )
    _count(sample, pairs)
    if submit.returncode != 0:
        sample.problems.append(
            f"submit exited {submit.returncode}: {_tail(workdir / f'{name}.submit.err')}"
        )
        return
    before = set((workdir / "spool" / "outbox").glob("*.json"))
    measured = run_measured(
        [*cmd, "run", "--once", "--config", str(config)],
        stdout=workdir / f"{name}.out",
        stderr=workdir / f"{name}.err",
        timeout=_timeout(pairs),
        cwd=workdir,
    )
    sample.take(measured)
    if measured.returncode != 0 or measured.timed_out:
        why = "timed out" if measured.timed_out else f"exited {measured.returncode}"
        sample.problems.append(f"daemon {why}: {_tail(workdir / f'{name}.err')}")
    _read_results(sample, workdir, before, len(pairs))
    copied = 0 if delta else sample.messages
    present = sample.messages - copied
    got = (sample.totals.get("copied"), sample.totals.get("already_present"))
    if got != (copied, present):
        sample.problems.append(
            f"results say copied, already present = {got}, expected {(copied, present)}"
        )
    _verify(env, sample, pairs)


def _read_results(sample: Sample, workdir: Path, before: set[Path], expected: int) -> None:
    """Every request must have a ``succeeded`` result; their totals are summed."""
    new = [
        p
        for p in (workdir / "spool" / "outbox").glob("*.json")
        if p not in before and not p.name.endswith(".summary.json")
    ]
    statuses: dict[str, int] = {}
    for path in new:
        result: dict[str, Any] = json.loads(path.read_text())
        statuses[result["status"]] = statuses.get(result["status"], 0) + 1
        for key, value in result.get("totals", {}).items():
            sample.totals[key] = sample.totals.get(key, 0) + int(value)
        if result["status"] != "succeeded":
            sample.problems.append(f"request {result.get('request_id')}: {result['status']}: "
                                   f"{result.get('error') or result.get('rejection')}")  # fmt: skip
    if len(new) != expected:
        sample.problems.append(f"{len(new)} result files for {expected} requests {statuses}")
