"""testkit.postgres: a private PostgreSQL the tests start (initdb in /tmp, loopback, SCRAM)."""

from __future__ import annotations

import psutil  # type: ignore[import-untyped]
import psycopg
import pytest

from testkit.postgres import PostgresServer


def test_a_private_cluster_runs_unprivileged_on_loopback_with_password_auth(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url) as conn:
        (db,) = conn.execute("SELECT current_database()").fetchone() or ("",)
        conn.execute("CREATE TABLE t (x int)")  # the role owns its fresh database
    assert postgres_url.endswith(f"/{db}")
    assert postgres_server.password not in postgres_url  # escaped in the URL
    server = psutil.Process(int((postgres_server.data / "postmaster.pid").read_text().split()[0]))
    assert server.uids().real != 0  # PostgreSQL refuses root; the kit runs it as nobody
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres_url.replace("legacyflo:", "legacyflo:x"), connect_timeout=5)
    log = postgres_server.wait_for_log(lambda text: f"database={db}" in text)
    assert "connection authorized: user=legacyflo" in log
