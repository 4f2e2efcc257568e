"""RabbitMQ's exceptions, translated where aio-pika and aiormq are imported.

A closed channel or connection, a refused publish, a socket error: each means "RabbitMQ is not
available right now" (retry, never dead-letter the message that happened to be in flight).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiormq.exceptions

from broker.errors import BusUnavailable

BUS_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError, OSError)


@contextlib.contextmanager
def bus_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except BusUnavailable:
        raise
    except BUS_ERRORS as exc:
        raise BusUnavailable(f"RabbitMQ unavailable while {doing}: {type(exc).__name__}") from exc
