"""Where signed events go: the port the push loop talks to (RabbitMQ or the broker's HTTP ingest)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One signed event on its way, with what the state file needs once it is confirmed."""

    key: str  # the partner's source record key
    message_id: str
    content: str  # sha256 of (event type, version, payload)
    body: bytes  # the signed envelope, wire bytes
    row: int  # 0: a withdrawal (no row in this export)
    revision: int = 1  # 2, 3, ...: a correction or withdrawal under the record's first message id
    withdrawn: str = ""  # a withdrawal's reason


class Verdict(StrEnum):
    CONFIRMED = "confirmed"  # RabbitMQ confirmed it (the broker's verdict comes as a receipt)
    ACCEPTED = "accepted"  # HTTP: the broker accepted it
    DUPLICATE = "duplicate"  # HTTP: the broker had it already
    REJECTED = "rejected"  # HTTP: the broker refused it (reason)
    FAILED = "failed"  # not confirmed: nacked, returned, timed out, connection lost


@dataclass(frozen=True, slots=True)
class Result:
    item: Outgoing
    verdict: Verdict
    reason: str = ""
    message: str = ""
    records: int | None = None  # HTTP accepted: the records released
    notices: int = 0  # HTTP accepted: withdrawal notices sent to consumers that held the record


OnResult = Callable[[Result], None]


class Sink(Protocol):
    """Sends with a window of messages in flight; every sent item gets exactly one :class:`Result`."""

    description: str  # where it sends, without credentials
    transport: str  # "amqp" or "http"

    @property
    def broken(self) -> str | None:
        """Why the sink cannot send any more (connection lost, exchange missing), or None."""
        ...

    async def open(self) -> None: ...

    async def send(self, item: Outgoing) -> None:
        """Start sending ``item``; waits only while the window is full."""
        ...

    async def drain(self) -> None:
        """Wait until every item sent has its result."""
        ...

    async def close(self) -> None: ...
