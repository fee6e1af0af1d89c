"""Benchmark: validating a 10,000-row request CSV (target: under 2 s). Not a test.

Run as ``python -m bench.bench_check`` (or ``make bench``). Builds the CSV in a temporary
directory, times ``csvfile.parse`` in-process and, when the ``legacyflo-daemon`` console script is
installed, ``legacyflo-daemon check FILE`` as a subprocess (start-up included); prints the median
of 5 runs of each. Exit status 1 if a median misses the target.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from legacyflo_daemon.request import csvfile

ROWS = 10_000
RUNS = 5
TARGET_SECONDS = 2.0


def build_csv(rows: int = ROWS) -> bytes:
    """A reference-style CSV (all values quoted, 17-for-15 rows) with ``rows`` distinct rows."""
    header = ",".join(f'"{name}"' for name in csvfile.COLUMNS)
    lines = [header, ""]
    for i in range(rows):
        values = [
            "EXCHANGEIMAP", f"Upload Data user{i}", f"user{i}", "baya-com.vaultastic.com",
            f'pa"ss,{i}', "baya-com.vaultastic.com", "Data27092018", "postmaster@baya.com",
        ]  # fmt: skip
        tail = [
            f"user{i}", "baya.com", f"secret\n{i}", "baya.com", "993", "25-Sep-2017",
            "24-Sep-2018",
        ]  # fmt: skip
        quoted = [f'"{value.replace(chr(34), chr(34) * 2)}"' for value in values + tail]
        quoted[8:8] = ["", ""]
        lines.append(",".join(quoted))
    return "\r\n".join(lines).encode()


def median_seconds(run: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    data = build_csv()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "requests.csv"
        path.write_bytes(data)
        result = csvfile.parse(data)
        assert len(result.requests) == ROWS and not result.errors, result.errors[:3]
        seconds = median_seconds(lambda: csvfile.parse(data))
        ok &= seconds < TARGET_SECONDS
        print(f"csvfile.parse, {ROWS} rows, {len(data):,} bytes: median {seconds:.3f} s")
        print(f"csvfile.redact: median {median_seconds(lambda: csvfile.redact(data)):.3f} s")
        command = shutil.which("legacyflo-daemon")
        if command is None:
            print("legacyflo-daemon check: console script not installed, skipped")
        else:
            codes: list[int] = []

            def check() -> None:
                done = subprocess.run([command, "check", str(path)], capture_output=True)
                codes.append(done.returncode)

            seconds = median_seconds(check)
            ok &= seconds < TARGET_SECONDS and set(codes) == {0}
            print(
                f"legacyflo-daemon check: median {seconds:.3f} s, exit codes {sorted(set(codes))}"
            )
    print(f"target: under {TARGET_SECONDS:.0f} s: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
