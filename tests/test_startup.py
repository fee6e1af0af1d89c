"""Start-up of ``legacyflo-daemon run``: what it loads, and what a missing package does.

A short ``run --once`` pays its start-up in every run (issue 14: the message rate of 10,000
messages against 200,000), so packages only some configurations need are imported only by
those: ``prometheus_client`` with ``[metrics] listen``, ``aiosmtplib`` with ``[smtp]``,
``watchfiles`` when watching (not ``--once``), ``psycopg`` with a PostgreSQL state, ``msal``
with OAuth; structlog is imported without ``rich`` (``legacyflo_daemon.cli``). Each such
import moved later must still fail clearly when its package is missing: one line naming the
package and the key, exit 2, before the daemon serves.

The daemon runs as the installed script in a child process; a ``sitecustomize`` on its
``PYTHONPATH`` records the modules it loaded, or makes one package missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.e2ehelp import daemon_env, free_port

SCRIPT = str(Path(sys.executable).parent / "legacyflo-daemon")
OPTIONAL = ("rich", "prometheus_client", "aiosmtplib", "watchfiles", "psycopg", "msal")

RECORD_MODULES = """
    import atexit, json, sys

    def _record():
        with open({out!r}, "w") as f:
            json.dump(sorted(sys.modules), f)

    atexit.register(_record)
"""

HIDE_PACKAGE = """
    import sys

    sys.modules[{name!r}] = None  # `import {name}` raises ModuleNotFoundError, as if missing
"""


def _config(root: Path, extra: str = "") -> Path:
    (root / "spool").mkdir(mode=0o700)
    path = root / "config.toml"
    path.write_text(f'[daemon]\nspool = "spool"\n\n[log]\nformat = "json"\n{extra}')
    return path


def _run(
    root: Path, config: Path, code: str, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    hook = root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(code))
    return subprocess.run(
        [SCRIPT, "run", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=daemon_env({"PYTHONPATH": str(hook)}),
        cwd=root,
    )


def _events(stdout: str) -> list[str]:
    return [json.loads(line)["event"] for line in stdout.splitlines() if line.startswith("{")]


def test_run_once_loads_no_optional_package(tmp_path: Path) -> None:
    out = tmp_path / "modules.json"
    done = _run(tmp_path, _config(tmp_path), RECORD_MODULES.format(out=str(out)), "--once")
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(out.read_text()))
    assert {"legacyflo_daemon.daemon.app", "structlog", "sqlite3"} <= loaded  # it did record
    assert sorted(loaded & set(OPTIONAL)) == []
    assert not any(m.startswith(tuple(f"{p}." for p in OPTIONAL)) for m in loaded)
    events = _events(done.stdout)
    assert events[:2] == ["recovered", "daemon_ready"] and "daemon_idle" in events
    # It ends at once (no poll to wait for), yet after the services' first turn, as before.
    assert (tmp_path / "spool" / "status.json").exists()


def test_metrics_load_prometheus_client(tmp_path: Path) -> None:
    out = tmp_path / "modules.json"
    config = _config(tmp_path, f'\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')
    done = _run(tmp_path, config, RECORD_MODULES.format(out=str(out)), "--once")
    assert done.returncode == 0, done.stderr
    assert "metrics_listening" in _events(done.stdout)
    assert "prometheus_client" in json.loads(out.read_text())


@pytest.mark.parametrize(
    ("package", "extra", "args", "key"),
    [
        ("prometheus_client", '\n[metrics]\nlisten = "127.0.0.1:9"\n', ["--once"],
         "metrics.listen"),
        ("aiosmtplib", '\n[smtp]\nhost = "127.0.0.1"\nport = 1\ntls = "none"\n', ["--once"],
         "smtp"),
        ("watchfiles", "", [], "daemon.intake"),
    ],
)  # fmt: skip
def test_a_missing_package_stops_the_start_with_one_line(
    tmp_path: Path, package: str, extra: str, args: list[str], key: str
) -> None:
    config = _config(tmp_path, extra)
    done = _run(tmp_path, config, HIDE_PACKAGE.format(name=package), *args, timeout=30)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"legacyflo-daemon: {config}: {key}: ")
    assert f"'{package}'" in lines[0] and "not installed" in lines[0]
    assert "daemon_ready" not in _events(done.stdout)  # stopped before serving
