"""Connecting to RabbitMQ: aio-pika's robust connection (it reconnects and reopens channels and
consumers), across the nodes of a cluster.

``--amqp-url`` may name several nodes, comma-separated (``amqp://…@node-a:5672/,amqp://…@node-b
:5672/``). Each connection attempt tries them in turn, starting after the node last connected to,
so when the node the broker is on stops or dies, the reconnect lands on a surviving node. The
queues are quorum queues replicated on every node (``schemas/topology.py``), so the surviving
node has every message the lost one acknowledged to a publisher.
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from broker.ports.rabbitmq.errors import BUS_ERRORS, bus_errors

Connection = AbstractRobustConnection


def split_urls(urls: str) -> list[str]:
    """``a,b , c`` -> ``[a, b, c]`` (a URL itself never holds a bare comma: it is %2C encoded)."""
    out = [part.strip() for part in urls.split(",") if part.strip()]
    if not out:
        raise ValueError("no RabbitMQ URL given")
    return out


class FailoverConnection(RobustConnection):
    """A robust connection that moves to the next node of the cluster on every attempt.

    aio-pika's robust connection retries its one URL for ever. Its connection factory calls one
    private step per attempt (``__connect_transport``, which connects to ``self.url``); this class
    overrides that step (by its mangled name) to try each node in turn. The override is pinned by
    ``tests/test_rabbitmq_failover.py`` against a real 3-node cluster, so an aio-pika upgrade that
    renames the step fails a test instead of silently losing failover.
    """

    def __init__(self, urls: list[str], **kwargs: Any) -> None:
        super().__init__(URL(urls[0]), **kwargs)
        self.urls = [URL(url) for url in urls]
        self._next = 0

    @property
    def current_node(self) -> str:
        """host:port of the node in use (no credentials)."""
        return f"{self.url.host}:{self.url.port}"

    async def _RobustConnection__connect_transport(self) -> None:
        last: BaseException | None = None
        for _ in range(len(self.urls)):
            self.url = self.urls[self._next]
            self._next = (self._next + 1) % len(self.urls)
            try:
                await super()._RobustConnection__connect_transport()  # type: ignore[misc]
                return
            except (TimeoutError, *BUS_ERRORS) as exc:
                last = exc
        assert last is not None
        raise last


async def connect(urls: str, name: str) -> Connection:
    """Connect, reconnecting quickly after a loss (aio-pika waits 5 s by default). ``name`` shows
    in RabbitMQ's management UI, so operators (and tests) can tell the broker's connections apart."""
    nodes = split_urls(urls)
    properties: dict[str, Any] = {"connection_name": name}  # an AMQP field table
    with bus_errors("connecting"):
        if len(nodes) == 1:
            return await aio_pika.connect_robust(nodes[0], reconnect_interval=1.0, client_properties=properties)
        connection = FailoverConnection(nodes, reconnect_interval=1.0, client_properties=properties)
        await connection.connect(timeout=10)
        return connection
