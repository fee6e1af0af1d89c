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

Labels name servers and states, never accounts or folders (cardinality, and privacy). A node
of a cluster (several daemons sharing ``[state] url``) adds ``node="<[state] node>"`` to every
metric, so that one Prometheus scraping every node tells them apart; ``requests`` and
``queue_depth`` are the cluster's (each node reads them from the shared state), the others
this node's.
Must not: read the state store or the pool from the HTTP thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

RETRY_KINDS = ("connection_limit", "throttled", "transient")


class Metrics:
    """The daemon's metrics; ``start`` serves them, ``stop`` ends the server. ``node``: this
    daemon's name in a cluster (the ``node`` label of every metric), None when alone."""

    def __init__(self, node: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.node = node
        r = self.registry
        n = ["node"] if node is not None else []
        self.requests = Gauge("legacyflo_requests", "Requests by state.", ["state", *n], registry=r)
        self.queue_depth = Gauge("legacyflo_queue_depth", "Queued requests.", n, registry=r)
        self.messages = Counter(
            "legacyflo_messages_copied", "Messages stored on a destination.", n, registry=r
        )
        self.bytes = Counter("legacyflo_bytes_copied", "Bytes of messages stored.", n, registry=r)
        self.retries = Counter(
            "legacyflo_retries", "Retries after transient trouble, by kind.", ["kind", *n],
            registry=r,
        )  # fmt: skip
        self.connections = Gauge(
            "legacyflo_connections", "IMAP connections in use per server.", ["host", *n],
            registry=r,
        )  # fmt: skip
        self.heartbeat = Gauge(
            "legacyflo_heartbeat_timestamp_seconds", "Last heartbeat (Unix time).", n, registry=r
        )
        self._server: Any = None
        self._hosts: set[str] = set()
        for kind in RETRY_KINDS:  # present from the start, at 0
            self._at(self.retries, kind)

    def _at(self, metric: Any, *values: str) -> Any:
        """``metric`` with its label ``values``, and this node's label in a cluster."""
        if self.node is not None:
            values = (*values, self.node)
        return metric.labels(*values) if values else metric

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
            self._at(self.messages).inc(messages)
        if nbytes > 0:
            self._at(self.bytes).inc(nbytes)

    def retried(self, kind: str) -> None:
        self._at(self.retries, kind if kind in RETRY_KINDS else "transient").inc()

    def refresh(
        self, by_state: Mapping[str, int], queued: int, connections: Mapping[str, int]
    ) -> None:
        """The gauges, from the loop: request counts, queue, connections, heartbeat."""
        for state, n in by_state.items():
            self._at(self.requests, state).set(n)
        self._at(self.queue_depth).set(queued)
        for host in self._hosts - set(connections):
            self._at(self.connections, host).set(0)
        for host, n in connections.items():
            self._at(self.connections, host).set(n)
        self._hosts |= set(connections)
        self._at(self.heartbeat).set(time.time())
