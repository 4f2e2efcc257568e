"""The delivery port: where released records, quarantined messages and receipts go."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from broker.stages.outcome import Inbound, Outcome


@dataclass(frozen=True, slots=True)
class Delivered:
    outcome: Outcome
    inbound: Inbound
    record_bodies: dict[str, bytes]  # record id -> consumer-facing body
    at: datetime


class Delivery(Protocol):
    #: True when records and quarantine live in the store (embedded mode): they are then made
    #: durable in the audit transaction itself and nothing is left to deliver.
    stores_records: bool

    async def deliver(self, items: Sequence[Delivered]) -> None:
        """Deliver everything, returning only when all of it is confirmed; raise otherwise."""
        ...


class StoreDelivery:
    """Embedded mode: the store is the delivery (consumers read their feeds from it); receipts
    travel in the HTTP response."""

    stores_records = True

    async def deliver(self, items: Sequence[Delivered]) -> None:
        return None
