"""Prometheus metrics of the running daemon, served over HTTP when ``[metrics] listen`` is set.

Owns: the registry (its own, not the process-global one, so tests and restarts never clash),
the metric names and the HTTP server (``prometheus_client``'s, in its own thread). The daemon's
loop writes every value; the HTTP thread only reads them (the client library's metrics are
thread-safe), so a scrape never touches daemon state.

Metrics (all prefixed ``legacyflo_``):

- ``requests{state}``: requests in the state store by state (queued, running, succeeded, ...)
- ``queue_depth``: queued requests
- ``messages_copied_total`` / ``bytes_copied_total``: stored on a destination by this process
- ``retries_total{kind}``: retries after transient trouble: ``connection_limit`` (too many
  connections), ``throttled`` (the server asked for a pause), ``transient`` (network, timeouts)
- ``connections{host}``: IMAP connections in use per server (the pool's bookkeeping)
- ``heartbeat_timestamp_seconds``: when the daemon last said it was alive (also in the state)

Labels name servers and states, never accounts or folders (cardinality, and privacy).
Must not: read the state store or the pool from the HTTP thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

RETRY_KINDS = ("connection_limit", "throttled", "transient")


class Metrics:
    """The daemon's metrics; ``start`` serves them, ``stop`` ends the server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Gauge("legacyflo_requests", "Requests by state.", ["state"], registry=r)
        self.queue_depth = Gauge("legacyflo_queue_depth", "Queued requests.", registry=r)
        self.messages = Counter(
            "legacyflo_messages_copied", "Messages stored on a destination.", registry=r
        )
        self.bytes = Counter("legacyflo_bytes_copied", "Bytes of messages stored.", registry=r)
        self.retries = Counter(
            "legacyflo_retries", "Retries after transient trouble, by kind.", ["kind"], registry=r
        )
        self.connections = Gauge(
            "legacyflo_connections", "IMAP connections in use per server.", ["host"], registry=r
        )
        self.heartbeat = Gauge(
            "legacyflo_heartbeat_timestamp_seconds", "Last heartbeat (Unix time).", registry=r
        )
        for kind in RETRY_KINDS:  # present from the start, at 0
            self.retries.labels(kind)
        self._server: Any = None
        self._hosts: set[str] = set()

    def start(self, listen: str) -> None:
        """Serve ``/metrics`` on ``host:port`` (``OSError`` if the address cannot be bound)."""
        host, _, port = listen.rpartition(":")
        server = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        # prometheus_client >= 0.17 returns (server, thread); shutdown() stops its thread.
        self._server = server[0] if isinstance(server, tuple) else None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def copied(self, messages: int, nbytes: int) -> None:
        if messages > 0:
            self.messages.inc(messages)
        if nbytes > 0:
            self.bytes.inc(nbytes)

    def retried(self, kind: str) -> None:
        self.retries.labels(kind if kind in RETRY_KINDS else "transient").inc()

    def refresh(
        self, by_state: Mapping[str, int], queued: int, connections: Mapping[str, int]
    ) -> None:
        """The gauges, from the loop: request counts, queue, connections, heartbeat."""
        for state, n in by_state.items():
            self.requests.labels(state).set(n)
        self.queue_depth.set(queued)
        for host in self._hosts - set(connections):
            self.connections.labels(host).set(0)
        for host, n in connections.items():
            self.connections.labels(host).set(n)
        self._hosts |= set(connections)
        self.heartbeat.set(time.time())
