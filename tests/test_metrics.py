"""Prometheus metrics (issue 12): scraped over HTTP from a real daemon while it copies."""

from __future__ import annotations

import re
import signal
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client import generate_latest

from legacyflo_daemon.daemon.metrics import Metrics
from testkit.imap import ServerAccount
from testkit.proxy import FaultProxy
from tests.e2ehelp import Work, drop_csv, free_port, request_csv, wait_until
from tests.test_daemon_signals import big_rows, copied_so_far

NewAccount = Callable[..., ServerAccount]


def _value(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_metrics_exposition() -> None:
    m = Metrics()
    m.copied(5, 500)
    m.retried("connection_limit")
    m.retried("whatever")
    m.refresh({"running": 1, "queued": 2}, 2, {"imap.example.com": 3})
    m.refresh({"running": 0, "queued": 2}, 2, {})
    text = generate_latest(m.registry).decode()
    assert _value(text, "legacyflo_messages_copied_total") == 5
    assert _value(text, "legacyflo_bytes_copied_total") == 500
    assert _value(text, "legacyflo_retries_total", '{kind="connection_limit"}') == 1
    assert _value(text, "legacyflo_retries_total", '{kind="transient"}') == 1
    assert _value(text, "legacyflo_retries_total", '{kind="throttled"}') == 0
    assert _value(text, "legacyflo_queue_depth") == 2
    assert _value(text, "legacyflo_connections", '{host="imap.example.com"}') == 0  # went away


@pytest.mark.slow
def test_metrics_are_scraped_over_http_during_a_copy(
    work: Work,
    new_source_account: NewAccount,
    new_dest_account: NewAccount,
    slow_source: FaultProxy,
) -> None:
    dest = new_dest_account()
    rows = big_rows(2, new_source_account, dest, slow_source)
    port = free_port()
    work.configure(imap={"fetch_batch": 5}, daemon={"max_jobs": 1})
    with work.config.open("a", encoding="utf-8") as fh:
        fh.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    drop_csv(work.spool / "incoming", "m.csv", request_csv(rows))

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    with work.daemon("d") as daemon:
        wait_until(lambda: copied_so_far(rows) >= 20 or None, 30, "20 copied", daemon)

        def counted() -> str | None:
            text = scrape()
            return text if (_value(text, "legacyflo_bytes_copied_total") or 0) > 0 else None

        text = wait_until(counted, 15, "bytes counted", daemon)
        assert _value(text, "legacyflo_requests", '{state="running"}') == 1
        assert _value(text, "legacyflo_requests", '{state="queued"}') == 1
        assert _value(text, "legacyflo_queue_depth") == 1
        assert (_value(text, "legacyflo_messages_copied_total") or 0) > 0
        assert (_value(text, "legacyflo_connections", '{host="127.0.0.1"}') or 0) >= 1
        assert (_value(text, "legacyflo_connections", '{host="127.0.0.4"}') or 0) >= 1
        assert (_value(text, "legacyflo_heartbeat_timestamp_seconds") or 0) > 0
        assert "src" not in text.replace("legacyflo", "")  # no account names in labels
        daemon.send(signal.SIGTERM)
        assert daemon.wait(20) == 0


def test_a_cluster_node_labels_every_metric_with_its_name() -> None:
    m = Metrics("node-a")
    m.copied(5, 500)
    m.retried("throttled")
    m.refresh({"running": 1}, 3, {"imap.example.com": 2})
    text = generate_latest(m.registry).decode()
    node = 'node="node-a"'
    assert _value(text, "legacyflo_messages_copied_total", f"{{{node}}}") == 5
    assert _value(text, "legacyflo_bytes_copied_total", f"{{{node}}}") == 500
    assert _value(text, "legacyflo_retries_total", f'{{kind="throttled",{node}}}') == 1
    assert _value(text, "legacyflo_requests", f'{{{node},state="running"}}') == 1
    assert _value(text, "legacyflo_queue_depth", f"{{{node}}}") == 3
    assert _value(text, "legacyflo_connections", f'{{host="imap.example.com",{node}}}') == 2
    samples = [line for line in text.splitlines() if line.startswith("legacyflo_")]
    assert samples and all(node in line for line in samples), samples
