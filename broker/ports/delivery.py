"""The delivery port: where released records, quarantined messages and receipts go.

Two implementations, one per way of running:

- :class:`StoreDelivery` (embedded): the store *is* the delivery. Records and quarantine are
  written in the audit's own transaction; consumers read their feeds from the store; receipts
  travel in the HTTP answer. Nothing is left to do after the commit.
- ``broker.ports.rabbitmq.publisher.AmqpDelivery``: records to each consumer's queue, quarantine
  and receipts published with confirms, after the audit commit.

A :class:`Deliverable` holds only what may leave: records come only from ``Accepted`` outcomes,
quarantine only from ``Rejected`` ones (mypy refuses anything else, see ``tests/typing/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from broker.ports.store import QuarantineItem, StoredRecord
from broker.stages.outcome import Accepted, Rejected, Settled
from broker.stages.records import quarantine_item, stored_records


@dataclass(frozen=True, slots=True)
class Deliverable:
    """One batch's deliveries, handed over once its audit entries are durable."""

    at: datetime
    accepted: Sequence[Accepted] = ()  # their records go to consumers
    rejected: Sequence[Rejected] = ()  # quarantined, with the reason
    receipts: Sequence[Settled] = ()  # one receipt each, to its publisher
    # Rows built outside a message's outcome, each to its consumer: deletion notices (retention),
    # figures releases (``broker/pipeline/figures.py``).
    notices: Sequence[StoredRecord] = ()


@dataclass(frozen=True, slots=True)
class WithAudit:
    """What a delivery makes durable in the audit's own transaction."""

    records: Sequence[StoredRecord] = ()
    quarantine: Sequence[QuarantineItem] = ()
    #: True when, once committed, every release is where its consumer reads it: the message is
    #: then done at once; otherwise it is done only when :meth:`Delivery.deliver` returns.
    complete: bool = False


class Delivery(Protocol):
    def with_audit(self, batch: Deliverable) -> WithAudit:
        """What to write in the same transaction as the batch's audit entries (pure)."""
        ...

    async def deliver(self, batch: Deliverable) -> None:
        """Deliver everything, returning only when all of it is confirmed; raise otherwise."""
        ...


class StoreDelivery:
    """Embedded mode: records and quarantine live in the store, durable with their audit entries."""

    def with_audit(self, batch: Deliverable) -> WithAudit:
        return WithAudit(
            records=[*stored_records(batch.accepted, batch.at), *batch.notices],
            quarantine=[quarantine_item(outcome, batch.at) for outcome in batch.rejected],
            complete=True,
        )

    async def deliver(self, batch: Deliverable) -> None:
        return None
