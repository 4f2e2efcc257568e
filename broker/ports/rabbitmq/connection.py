"""Connecting to RabbitMQ (aio-pika's robust connection: it reconnects and reopens channels)."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from broker.ports.rabbitmq.errors import bus_errors

Connection = AbstractRobustConnection


async def connect(url: str, name: str) -> Connection:
    """Connect, reconnecting quickly after a loss (aio-pika waits 5 s by default). ``name`` shows
    in RabbitMQ's management UI, so operators (and tests) can tell the broker's connections apart."""
    with bus_errors("connecting"):
        return await aio_pika.connect_robust(url, reconnect_interval=1.0, client_properties={"connection_name": name})
