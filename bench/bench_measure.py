"""Measuring one process: wall time, CPU seconds and peak RSS of a fresh child, exactly.

Owns: the method. Each measured program (the daemon, the reference copier) is started by a tiny
launcher (``python -I -S``, ~8 MB) that forks, execs the program and reaps it with
``os.wait4(pid)``, which returns the resource usage of that one child (and of any children it
waited for itself): ``ru_utime + ru_stime`` is its CPU time, ``ru_maxrss`` its peak resident set.
Why a launcher: Linux counts the memory a child inherits at fork in its ``ru_maxrss`` even after
exec, so forking from the benchmark (hundreds of MB after loading the corpus) would report the
benchmark's size; the launcher's ~8 MB is the floor instead, below any Python program's peak.
Why wait4 and not ``RUSAGE_CHILDREN``: that is the maximum over every child ever reaped, while
wait4 reports per child. The Dovecot servers and the delaying proxy are not descendants of the
measured program, so they are never mixed in. Wall time is taken by the launcher from just
before the fork to the reaping: it includes the program's interpreter start-up (~0.1-0.5 s), as a
user running the command sees it. Must not: know what the program does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# argv: out-path err-path timeout cwd program args...; stdin passes through to the program.
_LAUNCHER = r"""
import json, os, signal, sys, time
out, err, cwd, argv = sys.argv[1], sys.argv[2], sys.argv[4], sys.argv[5:]
timeout = float(sys.argv[3])
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.chdir(cwd)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
timed_out = []
def expire(signum, frame):
    timed_out.append(True)
    os.kill(pid, signal.SIGKILL)
signal.signal(signal.SIGALRM, expire)
signal.setitimer(signal.ITIMER_REAL, timeout)
while True:
    try:
        _, status, usage = os.wait4(pid, 0)
        break
    except InterruptedError:
        continue
signal.setitimer(signal.ITIMER_REAL, 0)
wall = time.perf_counter() - start
json.dump({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
           "max_rss_mb": usage.ru_maxrss / 1024, "returncode": os.waitstatus_to_exitcode(status),
           "timed_out": bool(timed_out)}, sys.stdout)
"""


@dataclass(frozen=True, slots=True)
class Measured:
    wall: float  # seconds, start to exit
    cpu: float  # user + system seconds of the process (and children it reaped)
    max_rss_mb: float  # peak resident set size, MiB
    returncode: int  # negative: killed by that signal
    timed_out: bool = False


def run_measured(
    argv: Sequence[str],
    *,
    stdout: Path,
    stderr: Path,
    stdin: bytes = b"",
    timeout: float = 3600.0,
    cwd: Path | None = None,
) -> Measured:
    """Run ``argv`` (``argv[0]`` a path) to its end, killed after ``timeout`` s; its output
    goes into the two files, ``stdin`` is its input."""
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER]
    args = [str(stdout), str(stderr), str(timeout), str(cwd or Path.cwd()), *argv]
    proc = subprocess.run(
        [*launcher, *args], input=stdin, capture_output=True, check=False, timeout=timeout + 60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measuring launcher failed: {proc.stderr.decode(errors='replace')}")
    return Measured(**json.loads(proc.stdout))
